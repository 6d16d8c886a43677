#!/usr/bin/env bash
# Runs the whole test suite: doc tests, the Windows call layer's type check, the WFP fake-engine
# tests under valgrind, then unit tests, golden files and the end-to-end tests, which build
# network namespaces and therefore need root. Installs what is missing first.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
cargo test --locked --doc 2>&1 | tee -a "$log"
# The Windows call layer, account lookups, command line and live test cannot link here, but they
# must type-check: windows-sys declares its functions on every target. A separate target dir
# keeps the flag from rebuilding everything.
RUSTFLAGS="--cfg userwall_wfp_check" CARGO_TARGET_DIR=target/wfp-check \
    cargo clippy --locked --all-targets -- -D warnings
scripts/valgrind.sh
cargo test --locked --all-targets 2>&1 | tee -a "$log"
# One closing line for the whole run: some test binaries (the Windows live test on Linux) hold
# no test, and the last binary's "0 passed" must not stand for the suite.
awk '/^test result:/ { passed += $4; failed += $6 } END { printf "tests: %d passed, %d failed\n", passed, failed }' "$log"
