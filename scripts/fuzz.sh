#!/usr/bin/env bash
# Runs every native fuzz target (func FuzzX) for a bounded time each:
# FUZZTIME per target (default 10s). Each target also ran its seed corpus
# as a plain test in `go test`.
set -euo pipefail
cd "$(dirname "$0")/.."
fuzztime=${FUZZTIME:-10s}
status=0
for pkg in $(go list ./...); do
  targets=$(go test -list '^Fuzz' "$pkg" 2>/dev/null | grep '^Fuzz' || true)
  for t in $targets; do
    echo "== fuzz $pkg $t ($fuzztime)"
    if ! CGO_ENABLED=0 go test -run '^$' -fuzz "^${t}\$" -fuzztime "$fuzztime" "$pkg" >/tmp/npumesh-fuzz.log 2>&1; then
      tail -30 /tmp/npumesh-fuzz.log
      echo "fuzz target $t in $pkg failed; the failing input is under $(go list -f '{{.Dir}}' "$pkg")/testdata/fuzz/$t" >&2
      status=1
    fi
  done
done
exit $status
