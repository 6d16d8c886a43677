#!/usr/bin/env bash
# Runs the whole test suite: doc tests, unit tests, golden files and the end-to-end tests, which
# build network namespaces and therefore need root. Installs nftables and iproute2 first when
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cargo test --locked --doc
cargo test --locked --all-targets
