#!/usr/bin/env bash
# The main job, locally: installs nats-server if missing, builds, and runs `causeway dev`
# with the shop example (nats-server + sidecars + demo apps). Extra arguments go to `causeway dev`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
cargo build --workspace --bins
exec target/debug/causeway dev "$@"
