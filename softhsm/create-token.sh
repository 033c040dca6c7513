#!/usr/bin/env bash
# Create (idempotently) a SoftHSM2 token by label in a directory of the caller's choice.
#
#   softhsm/create-token.sh DIR [LABEL]
#
# Writes DIR/softhsm2.conf and DIR/tokens/. The user PIN comes from SIGNER_PIN and the SO
# PIN from SIGNER_SO_PIN (both required: no PIN is ever built in). Prints the line to
# export SOFTHSM2_CONF. Running it again with an existing token changes nothing.
set -euo pipefail

dir=${1:?usage: create-token.sh DIR [LABEL]}
label=${2:-tuf-signer}
: "${SIGNER_PIN:?set SIGNER_PIN (the token user PIN)}"
: "${SIGNER_SO_PIN:?set SIGNER_SO_PIN (the token security officer PIN)}"
here=$(cd "$(dirname "$0")" && pwd)

command -v softhsm2-util >/dev/null || {
  echo "softhsm2-util not found: apt-get install softhsm2" >&2; exit 1; }

mkdir -p "$dir/tokens"
dir=$(cd "$dir" && pwd)
sed "s|@TOKEN_DIR@|$dir/tokens|" "$here/softhsm2.conf.in" > "$dir/softhsm2.conf"
export SOFTHSM2_CONF="$dir/softhsm2.conf"

if softhsm2-util --show-slots 2>/dev/null | grep -Eq "^[[:space:]]*Label:[[:space:]]+$label[[:space:]]*$"; then
  echo "token '$label' already exists in $dir/tokens" >&2
else
  softhsm2-util --init-token --free --label "$label" --pin "$SIGNER_PIN" --so-pin "$SIGNER_SO_PIN" >/dev/null
  echo "created token '$label' in $dir/tokens" >&2
fi
echo "export SOFTHSM2_CONF=$dir/softhsm2.conf"
