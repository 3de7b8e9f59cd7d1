#!/usr/bin/env bash
# Rerun issue 5's references and benchmarks in one go on this machine, and
# print each figure next to its reference from the same run.
#
#   benches/run.sh              full run (about 3 minutes)
#   benches/run.sh --quick      CI-sized run (a few seconds per step): checks
#                               that the benchmark runs; its figures mean little
#   benches/run.sh --out F      also write every step's JSON to F
#   benches/run.sh --keep       keep the temporary directory (logs, data)
#
# Steps: (a) `dd ... conv=fdatasync` sequential-write reference in the temp
# dir; (b) `sluice serve` on free loopback ports with its data in the same
# temp dir; (c) `sluice bench produce` (1 KiB, acks=all, 8 partitions,
# unthrottled), `sluice bench produce --rate 2000 --linger-ms 0` (p99),
# `sluice bench consume` of the data just produced, librdkafka
# (benches/librdkafka_produce.py: idempotent, acks=all, 1 KiB, 8 partitions)
# for throughput and for p99 at 2,000 records/s, `sluice bench e2e`, and a
# consume after a broker restart (tail cache empty); (d) the table.
#
# Environment:
#   SLUICE_BIN        broker binary (default $CARGO_TARGET_DIR/release/sluice)
#   CARGO_TARGET_DIR  default $HOME/.cache/sluice/target
#   SLUICE_BENCH_BIN  bench binary if `sluice bench` is missing (default: the
#                     sluice-bench crate's example, built if absent)
#   TMPDIR            where the temp dir (dd file, broker data) goes
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUICK=0
KEEP=0
OUT=""
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --keep) KEEP=1 ;;
        --out) OUT="$2"; shift ;;
        -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [[ $QUICK -eq 1 ]]; then
    DD_COUNT=256       # MiB
    THROUGHPUT_S=3     # seconds per throughput step
    LATENCY_S=3        # seconds per latency step
    E2E_S=3
else
    DD_COUNT=1024
    THROUGHPUT_S=15
    LATENCY_S=20
    E2E_S=10
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
SLUICE_BIN="${SLUICE_BIN:-$CARGO_TARGET_DIR/release/sluice}"
die() { echo "run.sh: error: $*" >&2; exit 1; }
log() { printf '\n== %s\n' "$*" >&2; }
[[ -x "$SLUICE_BIN" ]] || die "no broker binary at $SLUICE_BIN (cargo build --release -p sluice, or set SLUICE_BIN)"
command -v python3 >/dev/null || die "python3 is needed"

TMP="$(mktemp -d "${TMPDIR:-/tmp}/sluice-bench.XXXXXX")"
RES="$TMP/results"
mkdir -p "$RES"
BROKER_PID=""

stop_broker() {
    if [[ -n "$BROKER_PID" ]] && kill -0 "$BROKER_PID" 2>/dev/null; then
        kill -TERM "$BROKER_PID" 2>/dev/null || true
        for _ in $(seq 100); do
            kill -0 "$BROKER_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$BROKER_PID" 2>/dev/null || true
        wait "$BROKER_PID" 2>/dev/null || true
    fi
    BROKER_PID=""
}
cleanup() {
    local rc=$?
    stop_broker
    if [[ $rc -ne 0 && -f "$TMP/broker.log" ]]; then
        echo "---- broker log (tail) ----" >&2
        tail -n 30 "$TMP/broker.log" >&2 || true
    fi
    if [[ $KEEP -eq 1 ]]; then
        echo "kept $TMP" >&2
    else
        rm -rf "$TMP"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Private copies, so a concurrent rebuild cannot swap a binary mid-run.
cp "$SLUICE_BIN" "$TMP/sluice"
if "$TMP/sluice" bench --help >/dev/null 2>&1; then
    BENCH=("$TMP/sluice" bench)
else
    BENCH_BIN="${SLUICE_BENCH_BIN:-$CARGO_TARGET_DIR/release/examples/bench}"
    if [[ ! -x "$BENCH_BIN" ]]; then
        log "building the bench example (sluice has no bench subcommand yet)"
        (cd "$ROOT" && cargo build --release -p sluice-bench --example bench >&2)
    fi
    cp "$BENCH_BIN" "$TMP/bench"
    BENCH=("$TMP/bench")
fi
HAVE_RDKAFKA=1
python3 -c 'import confluent_kafka' 2>/dev/null || HAVE_RDKAFKA=0

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
KAFKA_PORT="$(free_port)"
HTTP_PORT="$(free_port)"
while [[ "$HTTP_PORT" == "$KAFKA_PORT" ]]; do HTTP_PORT="$(free_port)"; done
BOOT="127.0.0.1:$KAFKA_PORT"

start_broker() {
    "$TMP/sluice" serve --data-dir "$TMP/data" --kafka-listen "$BOOT" --advertise "$BOOT" \
        --http-listen "127.0.0.1:$HTTP_PORT" --node-id 0 >>"$TMP/broker.log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 300); do
        kill -0 "$BROKER_PID" 2>/dev/null || die "broker exited at start"
        if python3 - "$KAFKA_PORT" "$HTTP_PORT" <<'EOF' 2>/dev/null; then return 0; fi
import socket, sys, urllib.request
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1):
    pass
assert urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[2]}/health", timeout=1).status == 200
EOF
        sleep 0.1
    done
    die "broker did not come up"
}

peak_rss_kb() {
    awk '/^VmHWM:/ {print $2}' "/proc/$BROKER_PID/status" 2>/dev/null || echo 0
}

# step NAME CMD...: run a step whose stdout is one JSON object.
step() {
    local name="$1"
    shift
    log "$name: $*"
    if ! "$@" >"$RES/$name.json"; then
        cat "$RES/$name.json" >&2 || true
        die "step $name failed"
    fi
    cat "$RES/$name.json" >&2
}

echo "sluice benchmarks ($([[ $QUICK -eq 1 ]] && echo quick || echo full)) in $TMP" >&2
echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)" >&2

# (a) the machine's durable sequential write rate.
log "dd: dd if=/dev/zero of=\$TMP/ddtest bs=1M count=$DD_COUNT conv=fdatasync"
DD_OUT="$(LC_ALL=C dd if=/dev/zero of="$TMP/ddtest" bs=1M count="$DD_COUNT" conv=fdatasync 2>&1 | tail -n 1)"
rm -f "$TMP/ddtest"
echo "$DD_OUT" >&2
python3 - "$DD_OUT" >"$RES/dd.json" <<'EOF'
import json, re, sys
line = sys.argv[1]
m = re.match(r"(\d+) bytes .* copied, ([\d.]+) s", line)
if not m:
    sys.exit(f"cannot parse dd output: {line!r}")
b, s = int(m.group(1)), float(m.group(2))
print(json.dumps({"bytes": b, "elapsed_s": s, "mb_per_sec": round(b / 1e6 / s, 1), "dd": line}))
EOF

# (b) the broker.
log "broker: sluice serve --data-dir \$TMP/data --kafka-listen $BOOT"
start_broker

# (c) the benchmarks.
B=("${BENCH[@]}" --bootstrap "$BOOT" --json)
step produce "${B[@]}" produce --topic bench-produce --partitions 8 --record-size 1024 --acks all \
    --duration "${THROUGHPUT_S}s"
step consume "${B[@]}" consume --topic bench-produce --from-beginning
step produce_2000 "${B[@]}" produce --topic bench-latency --partitions 8 --record-size 1024 --acks all \
    --rate 2000 --linger-ms 0 --duration "${LATENCY_S}s"
step e2e_2000 "${B[@]}" e2e --topic bench-e2e --partitions 8 --record-size 1024 --acks all \
    --rate 2000 --linger-ms 0 --duration "${E2E_S}s"
if [[ $HAVE_RDKAFKA -eq 1 ]]; then
    RK=(python3 "$ROOT/benches/librdkafka_produce.py" --bootstrap "$BOOT" --json --partitions 8 --record-size 1024)
    step rdkafka "${RK[@]}" --topic bench-rdkafka --duration "$THROUGHPUT_S"
    step rdkafka_consume "${B[@]}" consume --topic bench-rdkafka --from-beginning
    step rdkafka_2000 "${RK[@]}" --topic bench-rdkafka-latency --rate 2000 --linger-ms 0 --duration "$LATENCY_S"
else
    log "confluent-kafka is not installed: skipping the librdkafka steps"
fi
echo "{\"peak_rss_kb\": $(peak_rss_kb)}" >"$RES/broker.json"
# Cold read: a restarted broker has an empty tail cache (the OS page cache
# may still hold the files).
log "restarting the broker (empty tail cache)"
stop_broker
start_broker
step consume_restart "${B[@]}" consume --topic bench-produce --from-beginning
stop_broker

# (d) the table.
python3 - "$RES" "$QUICK" "$OUT" <<'EOF'
import json, os, sys
res, quick, out = sys.argv[1], sys.argv[2] == "1", sys.argv[3]
def load(name):
    p = os.path.join(res, name + ".json")
    return json.load(open(p)) if os.path.exists(p) else None
r = {n: load(n) for n in ["dd", "produce", "consume", "produce_2000", "e2e_2000", "rdkafka",
                          "rdkafka_consume", "rdkafka_2000", "consume_restart", "broker"]}
dd = r["dd"]["mb_per_sec"]
mbs = lambda k: r[k]["mb_per_sec"] if r[k] else None
# (figure, value, unit, x dd, reference, ratio to reference, target, verdict)
rows = [("dd conv=fdatasync sequential write", dd, "MB/s", 1.0, "", None, "(reference)", "")]
def thr(label, key, ref_label=None, ref=None, target=None):
    x = r[key]
    if x is None:
        rows.append((label, None, "MB/s", None, ref_label or "", None, "", "skipped"))
        return
    v = x["mb_per_sec"]
    if ref_label == "dd":
        ref = dd
    ratio = v / ref if ref else None
    verdict = "" if target is None else ("met" if ratio is not None and ratio >= target else "NOT met")
    tgt = "" if target is None else f">= {target:g} x {ref_label}"
    rows.append((label, v, f"MB/s, {x['records_per_sec']:.0f} rec/s", v / dd, ref_label or "", ratio, tgt, verdict))
def lat(label, key, field, target_ms=None):
    x = r[key]
    if x is None or field not in x:
        rows.append((label, None, "ms", None, "", None, "", "skipped"))
        return
    l = x[field]
    v = l["p99"]
    verdict = "" if target_ms is None else ("met" if v < target_ms else "NOT met")
    tgt = "" if target_ms is None else f"< {target_ms:g} ms"
    unit = f"ms p99 (p50 {l['p50']:.2f}, p99.9 {l['p999']:.2f}, max {l['max']:.2f})"
    rows.append((label, v, unit, None, "", None, tgt, verdict))
thr("librdkafka produce, idempotent, acks=all", "rdkafka", "dd", target=0.6)
thr("sluice bench produce, acks=all", "produce", "dd", target=0.6)
thr("consume just produced (librdkafka's data)", "rdkafka_consume", "librdkafka produce", mbs("rdkafka"), 1.0)
thr("consume just produced (sluice bench's data)", "consume", "sluice bench produce", mbs("produce"), 1.0)
thr("consume after broker restart (tail cache empty)", "consume_restart")
lat("librdkafka produce @ 2000 rec/s, linger 0", "rdkafka_2000", "latency_ms", 5.0)
lat("sluice bench produce @ 2000 rec/s, linger 0", "produce_2000", "latency_ms", 5.0)
lat("sluice bench e2e @ 2000 rec/s (produce to consume)", "e2e_2000", "e2e_latency_ms")
def num(v):
    return "-" if v is None else (f"{v:.1f}" if abs(v) >= 10 else f"{v:.2f}")
hdr = ("figure", "value", "unit", "x dd", "reference", "ratio", "target", "")
table = [hdr] + [(a, num(b), c, num(d), e, num(f) if f is not None else "", g, h) for a, b, c, d, e, f, g, h in rows]
w = [max(len(str(row[i])) for row in table) for i in range(len(hdr))]
print()
print("QUICK run: the figures only show that the benchmark runs" if quick else "full run")
for i, row in enumerate(table):
    print("  ".join(str(c).rjust(w[k]) if k in (1, 3, 5) and i else str(c).ljust(w[k]) for k, c in enumerate(row)).rstrip())
    if i == 0:
        print("  ".join("-" * x for x in w))
if r["broker"]:
    print(f"broker peak RSS during the produce/consume steps: {r['broker']['peak_rss_kb'] / 1024:.0f} MiB")
if out:
    with open(out, "w") as f:
        json.dump(r, f, indent=2)
    print(f"results written to {out}")
EOF
