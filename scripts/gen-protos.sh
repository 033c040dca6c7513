#!/usr/bin/env bash
# Regenerate the Python gRPC code from protos/ (the only way it is made).
#   scripts/gen-protos.sh          write into the tree
#   scripts/gen-protos.sh --check  fail if the committed code is not current
set -euo pipefail
cd "$(dirname "$0")/.."
protos=$(cd protos && find . -name '*.proto' | sed 's|^\./||' | sort)
gen() {  # gen OUTDIR
  python -m grpc_tools.protoc -I protos --python_out="$1" --grpc_python_out="$1" --pyi_out="$1" $protos
}
if [ "${1:-}" = "--check" ]; then
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
  gen "$tmp"
  status=0
  for f in $(cd "$tmp" && find . -name '*.py' -o -name '*.pyi' | sed 's|^\./||' | sort); do
    if ! cmp -s "$tmp/$f" "$f"; then echo "out of date: $f (run make proto)"; status=1; fi
  done
  [ $status -eq 0 ] && echo "generated gRPC code is current"
  exit $status
fi
gen .
for d in $(printf '%s\n' $protos | xargs -n1 dirname | sort -u); do touch "$d/__init__.py"; done
echo "generated: $protos"
