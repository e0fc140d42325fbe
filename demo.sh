#!/usr/bin/env bash
# Brings up the Switchyard lab (a cluster of network-namespace nodes on one
# machine, each with its own Open vSwitch) and runs the main demo. Needs root.
set -euo pipefail
cd "$(dirname "$0")"
scripts/install-deps.sh
cargo build --release --locked --workspace --bins
exec target/release/switchyard-lab demo "$@"
