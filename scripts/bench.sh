#!/usr/bin/env bash
# Prints how long the main operations take, inside a throwaway network namespace:
# a setup that writes (after an uninstall), a setup that writes nothing, a probe, a status.
# Usage: scripts/bench.sh [ROUNDS]   (default 20; needs root; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-20}"
cargo build --release --quiet
bin="$PWD/target/release/userwall"
ns="uwbench$$"
state="$(mktemp -d)"
cleanup() { ip netns del "$ns" 2>/dev/null || true; rm -rf "$state"; }
trap cleanup EXIT
ip netns add "$ns"
ip -n "$ns" link set lo up
uw() { ip netns exec "$ns" "$bin" --state-dir "$state" --unit-dir "$state/units" "$@" >"$state/out" 2>&1; }
# A failed command is not a figure: stop and show what it said.
ms() {
    local start end
    start=$(date +%s%N)
    if ! "$@"; then
        echo "bench: '$*' failed:" >&2
        cat "$state/out" >&2
        exit 1
    fi
    end=$(date +%s%N)
    echo $(( (end - start) / 1000 ))
}
median() { sort -n | awk '{a[NR]=$1} END {m=a[int((NR+1)/2)]; printf "%.1f ms (min %.1f, max %.1f, n=%d)\n", m/1000, a[1]/1000, a[NR]/1000, NR}'; }
account=47999
write=(); nowrite=(); probe=(); status=()
for _ in $(seq "$rounds"); do
    uw uninstall || { cat "$state/out" >&2; exit 1; }
    write+=("$(ms uw setup --no-probe --account "$account")")
    nowrite+=("$(ms uw setup --no-probe --account "$account")")
    probe+=("$(ms uw probe --account "$account")")
    status+=("$(ms uw status)")
done
echo "kernel $(uname -r), $(nft --version), $rounds rounds, wall time of the whole command"
printf 'setup that writes:     '; printf '%s\n' "${write[@]}" | median
printf 'setup writing nothing: '; printf '%s\n' "${nowrite[@]}" | median
printf 'probe (27 rows):       '; printf '%s\n' "${probe[@]}" | median
printf 'status:                '; printf '%s\n' "${status[@]}" | median
