#!/usr/bin/env bash
# The whole test suite: unit tests, wire-format golden tests, and the tests on
# real Open vSwitch (userspace datapath) in network namespaces. Needs root.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
cargo test --workspace --locked "$@"
