#!/usr/bin/env bash
# Regenerates sidecar/link-order.txt, the order in which the linker lays out the sidecar's
# functions (lld's --symbol-ordering-file, passed by sidecar/build.rs).
#
# Why: the kernel maps a binary's code into a process 64 KiB around each page it touches
# (fault-around), so what is resident is not the code a sidecar runs but every 64 KiB block
# that holds some of it. Unordered, the ~2 MB of functions a sidecar runs are spread over most
# of its 8 MB of code; placed first, together, they are all it maps. bench/README.md ("RSS idle")
# has the figures.
#
# How: runs the dist sidecar under callgrind (which records every function executed) through
# startup and a broad use of its routes (sends, batches, appends with and without a condition,
# loads, a live stream, KV, push to an app, pull and ack, traces, dead letters, metrics, probes,
# bad input), then writes the functions it ran, hottest first.
#
# When: after a change of Cargo.lock or of the Rust toolchain (symbol names carry a hash of
# each crate's version and of the compiler), or of the sidecar's hot paths. A stale file
# breaks nothing: names that no longer exist are ignored, and only the layout (and so the
# resident memory) is worse. `bench/link-order.sh --check` says how much of the file still
# names functions of the current dist binary.
#
# Needs valgrind, python3, curl and the dist build:
#   cargo build --profile dist -p causeway-sidecar && cargo build --profile dist -p causeway-cli
#   bench/link-order.sh          # then rebuild the sidecar to link with the new order
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
B=$ROOT/target/dist
OUT=$ROOT/sidecar/link-order.txt
for bin in causeway causeway-sidecar; do
  [[ -x $B/$bin ]] || { echo "error: $B/$bin missing; build it first (see the top of this script)" >&2; exit 2; }
done

defined_text_symbols() { nm --defined-only "$1" | awk '$2 ~ /^[tTwW]$/ {print $3}' | sort -u; }

if [[ ${1:-} == --check ]]; then
  listed=$(grep -v '^#' "$OUT" | sort -u)
  total=$(wc -l <<< "$listed")
  found=$(comm -12 <(echo "$listed") <(defined_text_symbols "$B/causeway-sidecar") | wc -l)
  echo "$found of $total functions in $OUT name functions of $B/causeway-sidecar"
  [[ $found -ge $((total * 9 / 10)) ]] || { echo "stale: regenerate it with bench/link-order.sh" >&2; exit 1; }
  exit 0
fi

command -v valgrind > /dev/null || { echo "error: valgrind missing (apt-get install valgrind)" >&2; exit 2; }
NATS=${NATS_SERVER_BIN:-$ROOT/.tools/bin/nats-server}
D=$(mktemp -d)
NP=$((20000 + RANDOM % 10000)); SP=$((NP + 1)); AP=$((NP + 2))
"$NATS" -js -sd "$D/js" -p $NP -a 127.0.0.1 > "$D/nats.log" 2>&1 & NPID=$!
APID=; SPID=
trap 'kill $NPID $APID $SPID 2>/dev/null || true' EXIT

# The app: answers 200 to every push, except events of type `fails`, which it refuses with 422
# (so that the dead-letter path runs too).
python3 - $AP > "$D/app.log" 2>&1 <<'PY' &
import http.server, sys
class App(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        code = 422 if b'"fails"' in body else 200
        self.send_response(code); self.send_header("content-length", "0"); self.end_headers()
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "0"); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), App).serve_forever()
PY
APID=$!
sleep 1
cat > "$D/manifests.yaml" <<'Y'
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: web, namespace: order}
---
apiVersion: causeway.dev/v1alpha1
kind: Node
metadata: {name: sink, namespace: order}
---
apiVersion: causeway.dev/v1alpha1
kind: EventStore
metadata: {name: ledger, namespace: order}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: pushed, namespace: order}
spec: {node: web, source: {inbox: web}, startAt: all, delivery: {maxDeliver: 2, backoff: [100ms]}, deadLetter: {store: ledger, subject: dead}}
---
apiVersion: causeway.dev/v1alpha1
kind: Listener
metadata: {name: pulled, namespace: order}
spec: {node: web, source: {store: ledger}, startAt: all, delivery: {mode: pull}}
Y
"$B/causeway" apply --nats nats://127.0.0.1:$NP -f "$D/manifests.yaml" > /dev/null

CAUSEWAY_NODE=web CAUSEWAY_NAMESPACE=order CAUSEWAY_NATS_URL=nats://127.0.0.1:$NP CAUSEWAY_PORT=$SP \
  CAUSEWAY_APP_PORT=$AP CAUSEWAY_LOG=warn \
  valgrind --tool=callgrind --demangle=no --callgrind-out-file="$D/callgrind.out" "$B/causeway-sidecar" \
  > "$D/sidecar.log" 2>&1 & SPID=$!
for _ in $(seq 240); do curl -sf -o /dev/null http://127.0.0.1:$SP/readyz && break; sleep 0.5; done
curl -sf -o /dev/null http://127.0.0.1:$SP/readyz || { echo "error: the sidecar did not become ready:" >&2; cat "$D/sidecar.log" >&2; exit 1; }

U=http://127.0.0.1:$SP
J='content-type: application/json'
req() { curl -s -o /dev/null "$@" || true; }
for i in $(seq 40); do
  req -XPOST -H "$J" -d '{"type":"order-placed","payload":{"orderId":"'$i'","items":[{"sku":"a-1","qty":2}]}}' $U/v1/nodes/sink/events
  req -XPOST -H "$J" -H "cw-correlation-id: c-$i" -d '{"type":"ping","payload":{"n":'$i'}}' $U/v1/nodes/web/events
  req -XPOST -H "$J" -d '[{"type":"a","payload":1},{"type":"b","payload":{"x":[1,2]}}]' $U/v1/nodes/sink/events
  req -XPOST -H "$J" -d '{"type":"deposited","payload":{"amount":'$i'}}' $U/v1/stores/ledger/subjects/acct-1/events
  req -XPOST -H "$J" -d '{"type":"deposited","payload":{"amount":1}}' "$U/v1/stores/ledger/subjects/acct-1/events?expectedSequence=1"
  req "$U/v1/stores/ledger/subjects/acct-1/events?limit=100"
  req "$U/v1/stores/ledger"
  req -XPUT -H "$J" -d '{"v":'$i'}' $U/v1/global/k$((i % 3))
  req $U/v1/global/k$((i % 3))
  req -XPUT -H "$J" -d '{"v":'$i'}' $U/v1/state/s$((i % 3))
  req $U/v1/state/s$((i % 3))
  req -XDELETE $U/v1/state/s2
  req $U/healthz
  req $U/readyz
done
for i in $(seq 5); do
  req -XPOST -H "$J" -d '{"type":"fails","payload":{"n":'$i'}}' $U/v1/nodes/web/events
  req -XPOST -H "$J" -d '{bad' $U/v1/nodes/sink/events
  req -XPOST -H "$J" -d '{"type":"x","payload":1}' $U/v1/nodes/no-such-node/events
  req -H 'accept: application/x-ndjson' --max-time 1 "$U/v1/stores/ledger/events?subject=acct-1&follow=true"
  req -H 'accept: text/event-stream' --max-time 1 "$U/v1/stores/ledger/events"
  tokens=$(curl -s -XPOST "$U/v1/listeners/pulled/fetch?max=20&waitMs=200" | python3 -c \
    'import json,sys; print(json.dumps([{"token": e["ackToken"], "result": "ack"} for e in json.load(sys.stdin).get("events", [])]))')
  req -XPOST -H "$J" -d "$tokens" $U/v1/acks
  req $U/v1/traces/c-$i
  req $U/v1/listeners
  req "$U/v1/listeners/pushed/deadletters?limit=10"
  req $U/metrics
  sleep 1
done
kill -INT $SPID; wait $SPID || true; SPID=

# Functions by their own instruction count, hottest first; then those too cheap to be listed.
callgrind_annotate --auto=no --inclusive=no --threshold=100 "$D/callgrind.out" 2>/dev/null \
  | awk '/file:function/ { table = 1; next } table && /^$/ { exit } table' \
  | sed -nE 's/^ *[0-9,]+ \([ 0-9.]+%\)  [^:]*:([^ ]+).*/\1/p' > "$D/hot"
grep -oE '^c?fn=\([0-9]+\) .*' "$D/callgrind.out" | sed -E 's/^c?fn=\([0-9]+\) //' | sort -u > "$D/ran"
defined_text_symbols "$B/causeway-sidecar" > "$D/defined"
{
  echo "# The sidecar's functions in the order the linker lays them out: those a sidecar runs"
  echo "# (startup and its routes under use), hottest first. Generated by bench/link-order.sh;"
  echo "# read by sidecar/build.rs. Regenerate it after a change of Cargo.lock or of the toolchain."
  awk 'NR == FNR { ok[$0] = 1; next } ok[$0] && !seen[$0]++' "$D/defined" "$D/hot" "$D/ran"
} > "$OUT"
n=$(grep -vc '^#' "$OUT")
echo "wrote $OUT: $n functions run by the sidecar (callgrind data in $D)"
