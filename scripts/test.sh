#!/usr/bin/env bash
# The whole test suite, as CI runs it: installs the test dependencies, builds once (one
# profile, one target dir), checks formatting and lints, then runs every test against real
# nats-server processes.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
export NATS_SERVER_BIN=${NATS_SERVER_BIN:-$(
  if [[ -x .tools/bin/nats-server ]]; then echo "$PWD/.tools/bin/nats-server"; else command -v nats-server; fi
)}

echo "== format"
cargo fmt --all -- --check
echo "== build (binaries and tests)"
cargo build --workspace --bins --tests --benches
echo "== clippy"
cargo clippy --workspace --all-targets -- -D warnings
echo "== tests"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast
  if [[ -n ${CAUSEWAY_E2E_KUBECONFIG:-} ]]; then
    echo "== real-cluster suite (CAUSEWAY_E2E_KUBECONFIG=$CAUSEWAY_E2E_KUBECONFIG)"
    cargo nextest run -p causeway-tests --test cluster_injection --run-ignored all --no-fail-fast
  else
    echo "== real-cluster suite: skipped (set CAUSEWAY_E2E_KUBECONFIG to a cluster with Causeway installed to run tests/tests/cluster_injection.rs)"
  fi
  cargo test --workspace --doc
else
  cargo test --workspace --no-fail-fast
fi
