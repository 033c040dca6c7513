#!/usr/bin/env bash
# `make run`: a SoftHSM token, a dev PKI, SQLite state and a running signerd under $RUN_DIR,
# then the demo. Idempotent: what exists is reused; a running daemon is left running.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN_DIR=${RUN_DIR:-.run}
PYTHON=${PYTHON:-python3}
PORT=${SIGNER_PORT:-7443}
mkdir -p "$RUN_DIR"
RUN_DIR=$(cd "$RUN_DIR" && pwd)

if [ "${1:-}" != "--demo-only" ]; then
  # Token PINs: random, generated once, readable only by us. Never in the config file.
  umask 077
  [ -s "$RUN_DIR/pin" ] || $PYTHON -c 'import secrets; print(secrets.token_hex(8))' > "$RUN_DIR/pin"
  [ -s "$RUN_DIR/so-pin" ] || $PYTHON -c 'import secrets; print(secrets.token_hex(8))' > "$RUN_DIR/so-pin"
  umask 022
  SIGNER_PIN=$(cat "$RUN_DIR/pin") SIGNER_SO_PIN=$(cat "$RUN_DIR/so-pin") \
    softhsm/create-token.sh "$RUN_DIR/hsm" tuf-signer >/dev/null
  export SOFTHSM2_CONF="$RUN_DIR/hsm/softhsm2.conf"

  $PYTHON -m signer.cli dev-pki --out "$RUN_DIR/pki" --client admin --client demo >/dev/null

  if [ ! -f "$RUN_DIR/signer.toml" ]; then
    cat > "$RUN_DIR/signer.toml" <<TOML
# Written by make run (scripts/dev-up.sh). Paths are relative to this file.
[server]
listen = "127.0.0.1:$PORT"
workers = 2

[tls]
ca = "pki/ca.pem"
cert = "pki/server.pem"
key = "pki/server-key.pem"

[token]
uri = "pkcs11:token=tuf-signer"
module = "/usr/lib/softhsm/libsofthsm2.so"
pin_file = "pin"

[state]
dir = "state"
TOML
  fi
  for who in admin demo; do
    cat > "$RUN_DIR/client-$who.toml" <<TOML
address = "localhost:$PORT"
ca = "pki/ca.pem"
cert = "pki/client-$who.pem"
key = "pki/client-$who-key.pem"
TOML
  done

  if [ -f "$RUN_DIR/signerd.pid" ] && kill -0 "$(cat "$RUN_DIR/signerd.pid")" 2>/dev/null; then
    echo "signerd already running (pid $(cat "$RUN_DIR/signerd.pid"))"
  else
    nohup $PYTHON -m signer.cli serve --config "$RUN_DIR/signer.toml" >>"$RUN_DIR/signerd.log" 2>&1 &
    echo $! > "$RUN_DIR/signerd.pid"
    echo "started signerd (pid $!), log: $RUN_DIR/signerd.log"
  fi
fi

$PYTHON scripts/demo.py --client-config "$RUN_DIR/client-demo.toml" --run-dir "$RUN_DIR"
