#!/usr/bin/env bash
# Runs meshgate's whole test suite, installing the real peers it needs first
# (Envoy 1.40 and friends, see scripts/install-peers.sh). Extra arguments go to cargo test.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-peers.sh
cargo test --all-targets "$@"
