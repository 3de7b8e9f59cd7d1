#!/usr/bin/env bash
# Sluice beside a peer Kafka-compatible broker, driven by the same client
# (`sluice bench`) with the same record size, in one run.
#
#   benches/side_by_side.sh PEER_BIN [PEER_KIND]
#
# PEER_KIND is how to start the peer; only `tansu` is known: Tansu (renamed
# nisshi upstream) built from source beside this repository, never vendored:
#
#   fetch github:tansu-io/tansu; git clone <mirror> /tmp/tansu
#   cd /tmp/tansu && RUSTUP_TOOLCHAIN=stable CARGO_TARGET_DIR=/tmp/tansu-target \
#       cargo build --release -p nisshi --bin nisshi --features libsql   # sqlite storage
#   benches/side_by_side.sh /tmp/tansu-target/release/nisshi tansu
#
# Both keep everything on the local disk: Sluice on its embedded defaults
# (file object store + SQLite), Tansu in one SQLite database (`sqlite://`).
# Steps per broker: unthrottled produce (1 KiB, acks=all, 8 partitions, 15 s),
# consume of that data from the beginning, produce at 2,000 records/s with
# linger 0 (p50/p99); then, where confluent-kafka is installed, the same two
# produce steps with librdkafka (benches/librdkafka_produce.py: idempotent,
# acks=all). Prints a table of figures and Sluice/peer ratios.
#
# Environment: SLUICE_BIN (default $CARGO_TARGET_DIR/release/sluice),
# DURATION (seconds per produce step, default 15), OUT (write all results as JSON there).
set -euo pipefail

PEER_BIN="${1:?usage: benches/side_by_side.sh PEER_BIN [tansu]}"
PEER_KIND="${2:-tansu}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
SLUICE_BIN="${SLUICE_BIN:-$CARGO_TARGET_DIR/release/sluice}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
HAVE_RDKAFKA=0
python3 -c "import confluent_kafka" 2>/dev/null && HAVE_RDKAFKA=1
DURATION="${DURATION:-15}"
die() { echo "side_by_side.sh: error: $*" >&2; exit 1; }
[[ -x "$SLUICE_BIN" ]] || die "no sluice binary at $SLUICE_BIN"
[[ -x "$PEER_BIN" ]] || die "no peer binary at $PEER_BIN"
[[ "$PEER_KIND" == tansu ]] || die "unknown peer kind $PEER_KIND"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/sluice-side.XXXXXX")"
PID=""
stop() {
    if [[ -n "$PID" ]]; then kill -TERM "$PID" 2>/dev/null || true; wait "$PID" 2>/dev/null || true; fi
    PID=""
}
trap 'stop; rm -rf "$TMP"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 300); do
        kill -0 "$PID" 2>/dev/null || { tail -n 20 "$TMP/$2.log" >&2; die "$2 exited at start"; }
        python3 -c "import socket,sys; socket.create_connection(('127.0.0.1', $1), timeout=1)" 2>/dev/null && return 0
        sleep 0.1
    done
    die "$2 did not come up"
}
cp "$SLUICE_BIN" "$TMP/sluice"
B=("$TMP/sluice" bench --json)

# run_steps NAME BOOTSTRAP: the three steps against one broker, into $TMP/NAME.*.json.
run_steps() {
    local name="$1" boot="$2"
    "${B[@]}" --bootstrap "$boot" produce --topic side-produce --partitions 8 --record-size 1024 --acks all \
        --duration "${DURATION}s" >"$TMP/$name.produce.json"
    "${B[@]}" --bootstrap "$boot" consume --topic side-produce --from-beginning >"$TMP/$name.consume.json"
    "${B[@]}" --bootstrap "$boot" produce --topic side-latency --partitions 8 --record-size 1024 --acks all \
        --rate 2000 --linger-ms 0 --duration "${DURATION}s" >"$TMP/$name.latency.json"
    if [[ $HAVE_RDKAFKA -eq 1 ]]; then
        local RK=(python3 "$ROOT/benches/librdkafka_produce.py" --bootstrap "$boot" --json --partitions 8
            --record-size 1024)
        # A run with undelivered records still writes its figures (and its errors, shown below).
        "${RK[@]}" --topic side-rdkafka --duration "$DURATION" >"$TMP/$name.rdkafka.json" ||
            echo "librdkafka produce against $name: some records not delivered" >&2
        "${RK[@]}" --topic side-rdkafka-latency --rate 2000 --linger-ms 0 --duration "$DURATION" \
            >"$TMP/$name.rdkafka_latency.json" ||
            echo "librdkafka at 2,000/s against $name: some records not delivered" >&2
    fi
}

PORT="$(free_port)"
echo "== sluice serve (embedded defaults) on 127.0.0.1:$PORT" >&2
"$TMP/sluice" serve --data-dir "$TMP/sluice-data" --kafka-listen "127.0.0.1:$PORT" --advertise "127.0.0.1:$PORT" \
    --http-listen "127.0.0.1:$(free_port)" --registry-listen "127.0.0.1:$(free_port)" \
    --mqtt-listen "127.0.0.1:$(free_port)" >"$TMP/sluice.log" 2>&1 &
PID=$!
wait_port "$PORT" sluice
run_steps sluice "127.0.0.1:$PORT"
stop

PORT="$(free_port)"
echo "== $PEER_KIND broker (sqlite storage) on 127.0.0.1:$PORT" >&2
mkdir -p "$TMP/peer-data"
(cd "$TMP/peer-data" && exec "$PEER_BIN" broker --listener-url "tcp://127.0.0.1:$PORT" \
    --advertised-listener-url "tcp://127.0.0.1:$PORT" --storage-engine "sqlite://peer.db") \
    >"$TMP/peer.log" 2>&1 &
PID=$!
wait_port "$PORT" peer
run_steps peer "127.0.0.1:$PORT"
stop

python3 - "$TMP" "$PEER_KIND" "${OUT:-}" <<'EOF'
import json, os, sys
d, peer = sys.argv[1], sys.argv[2]
steps = ("produce", "consume", "latency", "rdkafka", "rdkafka_latency")
r = {n: {s: json.load(open(f"{d}/{n}.{s}.json")) for s in steps if os.path.exists(f"{d}/{n}.{s}.json")}
     for n in ("sluice", "peer")}
rows = [
    ("produce, 1 KiB, acks=all, 8 partitions (MB/s)", "produce", lambda x: x["mb_per_sec"]),
    ("consume from the beginning (MB/s)", "consume", lambda x: x["mb_per_sec"]),
    ("produce @ 2,000/s, linger 0: p50 (ms)", "latency", lambda x: x["latency_ms"]["p50"]),
    ("produce @ 2,000/s, linger 0: p99 (ms)", "latency", lambda x: x["latency_ms"]["p99"]),
    ("librdkafka produce, idempotent (MB/s)", "rdkafka", lambda x: x["mb_per_sec"]),
    ("librdkafka @ 2,000/s, linger 0: p50 (ms)", "rdkafka_latency", lambda x: x["latency_ms"]["p50"]),
    ("librdkafka @ 2,000/s, linger 0: p99 (ms)", "rdkafka_latency", lambda x: x["latency_ms"]["p99"]),
]
print(f"{'figure':48}  {'sluice':>9}  {peer:>9}  sluice/{peer}")
for label, step, f in rows:
    if step not in r["sluice"] or step not in r["peer"]:
        continue
    a, b = f(r["sluice"][step]), f(r["peer"][step])
    print(f"{label:48}  {a:9.1f}  {b:9.1f}  {a / b if b else float('nan'):.2f}")
for n in ("sluice", "peer"):
    for step in ("rdkafka", "rdkafka_latency"):
        if r[n].get(step, {}).get("errors"):
            print(f"{n} {step}: {r[n][step]['errors']} records not delivered ({r[n][step].get('first_error')})")
if len(sys.argv) > 3 and sys.argv[3]:
    json.dump(r, open(sys.argv[3], "w"))
EOF
