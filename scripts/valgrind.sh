#!/usr/bin/env bash
# Runs the WFP fake-engine tests under valgrind memcheck: the fake reads every structure the
# backend builds through raw pointers, so a dangling or wrong pointer is a valgrind error here.
# Fails on any memcheck error or definite/indirect leak.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "valgrind: not installed (apt-get install valgrind)" >&2; exit 1; }
binaries=$(cargo test --locked --no-run --message-format=json --test wfp_fake --lib 2>/dev/null |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"]:
        print(m["executable"])')
for bin in $binaries; do
    filter=""
    case "$bin" in */userwall-*) filter="wfp::" ;; esac
    echo "valgrind: $(basename "$bin") $filter"
    valgrind --error-exitcode=99 --leak-check=full --errors-for-leak-kinds=definite,indirect \
        --quiet "$bin" --test-threads=1 $filter
done
