#!/usr/bin/env bash
# Fails when the committed generated gRPC code differs from what `make proto`
# produces from the .proto files.
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
gobin=$(go env GOPATH)/bin
PATH="$gobin:$PATH" protoc -I proto \
  --go_out="$tmp" --go_opt=paths=source_relative \
  --go-grpc_out="$tmp" --go-grpc_opt=paths=source_relative \
  proto/npumesh/v1/*.proto
if ! diff -ru "$tmp/npumesh/v1" proto/npumesh/v1 -x '*.proto' >/dev/null; then
  diff -ru "$tmp/npumesh/v1" proto/npumesh/v1 -x '*.proto' | head -40 >&2
  echo "generated code is stale: run 'make proto' and commit the result" >&2
  exit 1
fi
echo "generated code matches proto/"
