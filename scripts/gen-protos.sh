#!/usr/bin/env bash
# Regenerate the Python gRPC code from protos/ (the only way it is made).
#   scripts/gen-protos.sh          write into the tree
#   scripts/gen-protos.sh --check  fail if the committed code is not current
# The Python package of generated code is the proto's path under protos/. signer_api/...
# (the public API) goes to the signer-api distribution in api/, shared by the daemon and the
# client; everything else (notary's proto, used by the daemon only) beside the daemon's code.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python)}
protos=$(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)
dest() {  # dest GENERATED_PATH: where it lives in the tree
  case "$1" in
    signer_api/*) echo "api/$1" ;;
    *) echo "$1" ;;
  esac
}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# shellcheck disable=SC2086
"$PYTHON" -m grpc_tools.protoc -I protos --python_out="$tmp" --grpc_python_out="$tmp" \
  --pyi_out="$tmp" $protos
generated=$(cd "$tmp" && find . \( -name '*.py' -o -name '*.pyi' \) | sed 's|^\./||' | sort)
if [ "${1:-}" = "--check" ]; then
  status=0
  for f in $generated; do
    if ! cmp -s "$tmp/$f" "$(dest "$f")"; then echo "out of date: $(dest "$f") (run make proto)"; status=1; fi
  done
  [ $status -eq 0 ] && echo "generated gRPC code is current"
  exit $status
fi
for f in $generated; do
  out=$(dest "$f")
  mkdir -p "$(dirname "$out")"
  cp "$tmp/$f" "$out"
  touch "$(dirname "$out")/__init__.py"
done
echo "generated: $protos"
