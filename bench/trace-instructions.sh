#!/usr/bin/env bash
# What causal tracing adds to a send, in instructions: two sidecars (node `traced` with the
# default trace.enabled, node `quiet` with it off) run under callgrind, which counts every
# user-space instruction, so the figure repeats run to run whatever else the machine does.
# Each takes the same POSTs from wrk (16 connections, SECS seconds) after a warm-up; prints
# instructions per send for each. Needs valgrind and wrk (Debian packages) and the dist build:
#   cargo build --profile dist -p causeway-sidecar && cargo build --profile dist -p causeway-cli
#   bench/trace-instructions.sh
# See bench/README.md ("What causal tracing adds to a send") for what the counts leave out.
set -euo pipefail
cd "$(dirname "$0")/.."
B=$PWD/target/dist
NATS=${NATS_SERVER_BIN:-$PWD/.tools/bin/nats-server}
D=$(mktemp -d); NP=$((20000 + RANDOM % 10000)); P1=$((NP+1)); P2=$((NP+2))
$NATS -js -sd $D/js -p $NP -a 127.0.0.1 > $D/nats.log 2>&1 & NPID=$!
trap 'kill $NPID 2>/dev/null; kill $S1 $S2 2>/dev/null || true' EXIT
sleep 1
cat > $D/nodes.yaml <<Y
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: traced, namespace: bench}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: quiet, namespace: bench}
spec: {trace: {enabled: false}}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: sink, namespace: bench}
Y
$B/causeway apply --nats nats://127.0.0.1:$NP -f $D/nodes.yaml > /dev/null
start() { CAUSEWAY_NODE=$1 CAUSEWAY_NAMESPACE=bench CAUSEWAY_NATS_URL=nats://127.0.0.1:$NP CAUSEWAY_PORT=$2 CAUSEWAY_LOG=warn \
  valgrind --tool=callgrind --callgrind-out-file=$D/cg.$1 $B/causeway-sidecar > $D/$1.log 2>&1 & }
start traced $P1; S1=$!; start quiet $P2; S2=$!
for p in $P1 $P2; do until curl -sf http://127.0.0.1:$p/readyz > /dev/null; do sleep 0.5; done; done
BODY='{"type":"order-placed","payload":{"orderId":"123","items":[{"sku":"a-1","qty":2}],"note":"'$(printf 'x%.0s' $(seq 200))'"}}'
cat > $D/post.lua <<L
wrk.method = "POST"
wrk.body = '$BODY'
wrk.headers["Content-Type"] = "application/json"
L
# warm up both, then zero the counters, then the measured load
for p in $P1 $P2; do wrk -t1 -c8 -d3s -s $D/post.lua http://127.0.0.1:$p/v1/nodes/sink/events > /dev/null; done
callgrind_control -z $S1 > /dev/null 2>&1; callgrind_control -z $S2 > /dev/null 2>&1
declare -A sent
for n in traced quiet; do
  p=$([[ $n == traced ]] && echo $P1 || echo $P2)
  out=$(wrk -t1 -c${CONC:-16} -d${SECS:-20}s -s $D/post.lua http://127.0.0.1:$p/v1/nodes/sink/events)
  if grep -q "Non-2xx" <<< "$out"; then echo "$n: some sends failed:"; echo "$out"; exit 1; fi
  sent[$n]=$(awk '/requests in/{print $1}' <<< "$out")
done
callgrind_control -d $S1 > /dev/null 2>&1; callgrind_control -d $S2 > /dev/null 2>&1
sleep 2
declare -A per
for n in traced quiet; do
  f=$(ls $D/cg.$n.* | sort | tail -1)
  ir=$(callgrind_annotate $f 2>/dev/null | awk '/PROGRAM TOTALS/{gsub(",","",$1); print $1}')
  sha=$(callgrind_annotate --auto=no --threshold=100 $f 2>/dev/null | awk '/compress256/{gsub(",","",$1); s+=$1} END{print s+0}')
  per[$n]=$((ir / sent[$n]))
  echo "$n: ${sent[$n]} sends, $((ir / sent[$n])) instructions per send ($((sha / sent[$n])) of them SHA-256 in software)"
done
awk -v t=${per[traced]} -v q=${per[quiet]} 'BEGIN{printf "ratio traced/quiet: %.3f\n", t/q}'
echo "callgrind files in $D"
