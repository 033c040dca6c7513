#!/usr/bin/env bash
# Create (idempotently) a SoftHSM2 token by label in a directory of the caller's choice.
#
#   softhsm/create-token.sh DIR [LABEL]
#
# Writes DIR/softhsm2.conf and DIR/tokens/. The user PIN comes from SIGNER_PIN and the SO
# PIN from SIGNER_SO_PIN (both required: no PIN is ever built in). Prints the line to
# export SOFTHSM2_CONF. Running it again with an existing token changes nothing. PINs are
# never put on a command line (softhsm/init-token.py reads them from the environment).
set -euo pipefail

dir=${1:?usage: create-token.sh DIR [LABEL]}
label=${2:-tuf-signer}
: "${SIGNER_PIN:?set SIGNER_PIN (the token user PIN)}"
: "${SIGNER_SO_PIN:?set SIGNER_SO_PIN (the token security officer PIN)}"
here=$(cd "$(dirname "$0")" && pwd)

mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
sed "s|@TOKEN_DIR@|$dir/tokens|" "$here/softhsm2.conf.in" > "$dir/softhsm2.conf"
export SOFTHSM2_CONF="$dir/softhsm2.conf"

# The PINs reach the module through the environment of init-token.py, never a command
# line (softhsm2-util --pin/--so-pin would show them in /proc/PID/cmdline to every user).
module=${SOFTHSM2_MODULE:-}
if [ -z "$module" ]; then
  for m in /usr/lib/softhsm/libsofthsm2.so /usr/lib/*-linux-gnu/softhsm/libsofthsm2.so \
           /usr/local/lib/softhsm/libsofthsm2.so /opt/homebrew/lib/softhsm/libsofthsm2.so; do
    if [ -f "$m" ]; then module=$m; break; fi
  done
fi
[ -n "$module" ] || { echo "libsofthsm2.so not found: set SOFTHSM2_MODULE" >&2; exit 1; }

case $("${PYTHON:-python3}" "$here/init-token.py" "$module" "$label") in
  exists) echo "token '$label' already exists in $dir/tokens" >&2 ;;
  created) echo "created token '$label' in $dir/tokens" >&2 ;;
  *) echo "could not create token '$label' in $dir/tokens" >&2; exit 1 ;;
esac
echo "export SOFTHSM2_CONF=$dir/softhsm2.conf"
