#!/usr/bin/env bash
# The whole test suite, as CI runs it (`make test`).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-test-deps.sh

echo "== go vet"
CGO_ENABLED=0 go vet ./...

echo "== generated code is up to date"
./scripts/check-generated.sh

echo "== go test -race"
CGO_ENABLED=1 go test -race -count=1 -timeout 25m ./...

echo "== fuzz (bounded)"
./scripts/fuzz.sh
