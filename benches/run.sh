#!/usr/bin/env bash
# Run the references and benchmarks in one go on this machine, and
# print each figure next to its reference from the same run.
#
#   benches/run.sh              one full run (about 3 minutes)
#   benches/run.sh --runs 3     three full runs; the table shows medians (and
#                               each run's figure) of values and of ratios
#   benches/run.sh --quick      CI-sized run (a few seconds per step): checks
#                               that the benchmark runs; its figures mean little
#   benches/run.sh --out F      also write every step's JSON to F
#   benches/run.sh --keep       keep the temporary directory (logs, results)
#
# Each run: (a) references in the temp dir: `dd ... bs=1M count=1024
# conv=fdatasync` (sequential durable write rate, the reference), the
# same with count=4096 (sustained rate; not in --quick), and `dd ... bs=4k
# oflag=dsync` (latency of one small synchronous write), and
# benches/fsync_latency.py (p50/p99 of the write a flush does: new file, fsync,
# directory fsync), benches/group_commit_model.c (p99 of the journal's write
# pattern at 2,000 appends/s, without a broker), benches/cpu_stalls.py (how often
# the CPU runs slow), and
# librdkafka at 2,000/s against its in-process mock broker (the client's p99 floor),
# and unthrottled against it from Python and from C (the clients' ceilings);
# (b) a fresh `sluice serve` on free loopback ports with its data in the same
# temp dir; (c) `sluice bench produce`
# (1 KiB, acks=all, 8 partitions, unthrottled), `sluice bench consume` of the
# data just produced, `sluice bench produce --rate 2000 --linger-ms 0` (p99),
# `sluice bench e2e` at the same rate, librdkafka
# (benches/librdkafka_produce.py: idempotent, acks=all, 1 KiB, 8 partitions)
# for throughput (then consumed) and for p99 at 2,000 records/s, librdkafka's own
# C tool (benches/rdkafka_performance.py: the same producer settings, no Python; built
# by benches/rdkafka_performance_build.sh, skipped if it cannot be), unthrottled and at
# 2,000 records/s (its floor there measured against its mock broker in (a)), and a consume
# after a broker restart (tail cache empty); then, on a fresh broker,
# benches/partitions_scale.py (RSS with 1,000 idle partitions; a 10,000-partition
# topic and Metadata for all partitions); then, where mosquitto is installed, the MQTT
# gateway side by side (`sluice bench mqtt`, QoS 1, 100-byte payloads, against mosquitto
# in memory and against a fresh broker writing durably into Kafka). Then (d) the table
# (benches/summarize.py). The broker is stopped and the temp dir removed on
# exit, also on failure or Ctrl-C.
#
# Environment:
#   SLUICE_BIN        broker binary (default $CARGO_TARGET_DIR/release/sluice)
#   CARGO_TARGET_DIR  default $HOME/.cache/sluice/target
#   TMPDIR            where the temp dir (dd files, broker data) goes
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
QUICK=0
KEEP=0
OUT=""
RUNS=1
while [[ $# -gt 0 ]]; do
    case "$1" in
        --quick) QUICK=1 ;;
        --keep) KEEP=1 ;;
        --out) OUT="$2"; shift ;;
        --runs) RUNS="$2"; shift ;;
        -h|--help) sed -n '2,41p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

if [[ $QUICK -eq 1 ]]; then
    DD_COUNT=256       # MiB
    DD_LONG_COUNT=0    # MiB; 0 = skip the sustained-write reference
    DSYNC_COUNT=200    # 4 KiB synchronous writes
    FSYNC_COUNT=200    # flush-like file writes (benches/fsync_latency.py)
    JOURNAL_N=2000     # appends in the journal's write model (benches/group_commit_model.c)
    CPU_S=3            # seconds of CPU steadiness probe (benches/cpu_stalls.py)
    THROUGHPUT_S=2     # seconds per throughput step (unthrottled: up to 1.5 GB/s kept on disk)
    LATENCY_S=3        # seconds per latency step
    E2E_S=3
    RDPERF_N=50000     # records per rdkafka_performance step
    MQTT_CLIENTS=(200) # client counts of the MQTT side-by-side steps
    MQTT_S=3
    PARTITIONS_ARGS=(--topics 10 --partitions 10 --big 1000 --repeats 3)
else
    DD_COUNT=1024
    DD_LONG_COUNT=4096
    DSYNC_COUNT=1000
    FSYNC_COUNT=4000
    JOURNAL_N=30000
    CPU_S=10
    THROUGHPUT_S=15
    LATENCY_S=20
    E2E_S=10
    RDPERF_N=3000000
    MQTT_CLIENTS=(1000 10000)
    MQTT_S=12
    PARTITIONS_ARGS=(--topics 10 --partitions 100 --big 10000 --repeats 10)
fi

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
SLUICE_BIN="${SLUICE_BIN:-$CARGO_TARGET_DIR/release/sluice}"
die() { echo "run.sh: error: $*" >&2; exit 1; }
free_gb() { df -Pk "${TMP:-/tmp}" | awk 'NR == 2 { printf "%.1f", $4 / 1e6 }'; }
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
        echo "---- $(free_gb) GB free in $TMP; broker log (tail) ----" >&2
        grep -a "ERROR\|WARN\|panicked" "$TMP/broker.log" | head -n 20 >&2 || true
        echo "----" >&2
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
BENCH=("$TMP/sluice" bench)
HAVE_RDKAFKA=1
python3 -c 'import confluent_kafka' 2>/dev/null || HAVE_RDKAFKA=0
# librdkafka's own C benchmark tool, built once into a cache (needs npm, cc, make).
RDPERF=""
if [[ $HAVE_RDKAFKA -eq 1 ]] && ! RDPERF="$("$ROOT/benches/rdkafka_performance_build.sh")"; then
    RDPERF=""
fi
# The journal's write model; skipped without a C compiler.
cc -O2 -o "$TMP/gcm" "$ROOT/benches/group_commit_model.c" -lpthread 2>/dev/null || rm -f "$TMP/gcm"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}
KAFKA_PORT="$(free_port)"
HTTP_PORT="$(free_port)"
while [[ "$HTTP_PORT" == "$KAFKA_PORT" ]]; do HTTP_PORT="$(free_port)"; done
MQTT_PORT="$(free_port)"
while [[ "$MQTT_PORT" == "$KAFKA_PORT" || "$MQTT_PORT" == "$HTTP_PORT" ]]; do MQTT_PORT="$(free_port)"; done
BOOT="127.0.0.1:$KAFKA_PORT"
HAVE_MOSQUITTO=0
command -v mosquitto >/dev/null 2>&1 && HAVE_MOSQUITTO=1

start_broker() {
    "$TMP/sluice" serve --data-dir "$TMP/data" --kafka-listen "$BOOT" --advertise "$BOOT" \
        --http-listen "127.0.0.1:$HTTP_PORT" --mqtt-listen "127.0.0.1:$MQTT_PORT" --node-id 0 \
        >>"$TMP/broker.log" 2>&1 &
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

# step NAME CMD...: run a step whose stdout is one JSON object, into $RES.
step() {
    local name="$1"
    shift
    log "$name: $*"
    # The broker's histograms around the step (benches/broker_tail.py): how many of its
    # answers, and of its journal syncs alone, took over 5 ms.
    local metrics="http://127.0.0.1:$HTTP_PORT/metrics"
    if [[ -n "$BROKER_PID" ]]; then
        python3 "$ROOT/benches/broker_tail.py" snapshot "$metrics" >"$RES/$name.metrics" || true
    fi
    if ! "$@" >"$RES/$name.json"; then
        cat "$RES/$name.json" >&2 || true
        die "step $name failed"
    fi
    cat "$RES/$name.json" >&2
    if [[ -s "$RES/$name.metrics" ]]; then
        python3 "$ROOT/benches/broker_tail.py" diff "$metrics" "$RES/$name.metrics" >"$RES/$name.broker.json" &&
            cat "$RES/$name.broker.json" >&2
        rm -f "$RES/$name.metrics"
    fi
    # The broker's memory after each step, to see which step set its peak.
    if [[ -n "$BROKER_PID" ]]; then
        awk -v step="$name" '/^VmHWM:/ {h=$2} /^VmRSS:/ {r=$2} END {print step, h, r}' \
            "/proc/$BROKER_PID/status" >>"$RES/rss.txt" 2>/dev/null || true
    fi
}

echo "sluice benchmarks ($([[ $QUICK -eq 1 ]] && echo quick || echo full), $RUNS run(s)) in $TMP" >&2

# dd_json OUTFILE DD-ARGS...: run dd in $TMP and record its last line as JSON.
dd_json() {
    local out="$1"
    shift
    local line
    line="$(LC_ALL=C dd if=/dev/zero "$@" 2>&1 | tail -n 1)"
    echo "$line" >&2
    python3 - "$line" >"$out" <<'EOF'
import json, re, sys
line = sys.argv[1]
m = re.match(r"(\d+) bytes .* copied, ([\d.]+) s", line)
if not m:
    sys.exit(f"cannot parse dd output: {line!r}")
b, s = int(m.group(1)), float(m.group(2))
print(json.dumps({"bytes": b, "elapsed_s": s, "mb_per_sec": round(b / 1e6 / s, 1), "dd": line}))
EOF
}

one_run() {
    RES="$TMP/results/run$1"
    mkdir -p "$RES"
    echo "machine: $(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg), $(free_gb) GB free in $TMP" >&2
    echo "{\"loadavg_before\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" >"$RES/machine.json"

    # (a) the machine's durable sequential write rate, and the latency of one
    # small synchronous write (what each fsync on the produce path costs).
    log "run $1: dd if=/dev/zero of=\$TMP/ddtest bs=1M count=$DD_COUNT conv=fdatasync"
    dd_json "$RES/dd.json" of="$TMP/ddtest" bs=1M count="$DD_COUNT" conv=fdatasync
    rm -f "$TMP/ddtest"
    if [[ $DD_LONG_COUNT -gt 0 ]]; then
        # The 1 GiB figure swings (0.4 to 2.4 GB/s here) with the host's write
        # cache; 4 GiB, about what a produce step writes, is steadier.
        log "run $1: dd if=/dev/zero of=\$TMP/ddtest bs=1M count=$DD_LONG_COUNT conv=fdatasync"
        dd_json "$RES/dd_long.json" of="$TMP/ddtest" bs=1M count="$DD_LONG_COUNT" conv=fdatasync
        rm -f "$TMP/ddtest"
    fi
    log "run $1: dd if=/dev/zero of=\$TMP/ddsync bs=4k count=$DSYNC_COUNT oflag=dsync"
    dd_json "$RES/dsync.json" of="$TMP/ddsync" bs=4k count="$DSYNC_COUNT" oflag=dsync
    rm -f "$TMP/ddsync"
    # The tail of the write each flush does (new file, fsync, directory fsync): the
    # floor under the produce path's p99.
    log "run $1: python3 benches/fsync_latency.py \$TMP/fsync --count $FSYNC_COUNT"
    python3 "$ROOT/benches/fsync_latency.py" "$TMP/fsync" --count "$FSYNC_COUNT" >"$RES/fsync.json"
    rm -rf "$TMP/fsync"
    # The journal's write alone (appends at 2,000/s, group commit, overwriting a zero-filled
    # file, fdatasync; C, no broker): the floor under the produce p99 with the journal.
    if [[ -x "$TMP/gcm" ]]; then
        log "run $1: GCM_RECORDS=$JOURNAL_N benches/group_commit_model 1 \$TMP/journal"
        dd if=/dev/zero of="$TMP/journal" bs=1M count=64 conv=fdatasync 2>/dev/null
        GCM_RECORDS="$JOURNAL_N" "$TMP/gcm" 1 "$TMP/journal" | python3 -c '
import json, sys
w = sys.stdin.read().split()
v = {w[i]: float(w[i + 1]) for i in range(2, 10, 2)}
print(json.dumps({"latency_ms": v}))' >"$RES/journal_floor.json"
        cat "$RES/journal_floor.json" >&2
        rm -f "$TMP/journal"
    fi
    # How much of the time the CPU runs slow: the other floor under the p99.
    log "run $1: python3 benches/cpu_stalls.py --seconds $CPU_S"
    python3 "$ROOT/benches/cpu_stalls.py" --seconds "$CPU_S" >"$RES/cpu.json"
    # The client and machine with a broker that costs next to nothing (no disk): the p99
    # a broker could reach here.
    if [[ $HAVE_RDKAFKA -eq 1 ]]; then
        step rdkafka_mock_2000 python3 "$ROOT/benches/librdkafka_produce.py" --mock --json --topic floor \
            --record-size 1024 --rate 2000 --linger-ms 0 --duration "$LATENCY_S"
        # And unthrottled: how fast this client produces here at all (it shares the cores
        # with the broker in the real step).
        step rdkafka_mock python3 "$ROOT/benches/librdkafka_produce.py" --mock --json --topic ceiling \
            --record-size 1024 --duration "$THROUGHPUT_S"
    fi
    if [[ -n "$RDPERF" ]]; then
        # The same for librdkafka from C: no Python per record.
        step rdkafka_c_mock python3 "$ROOT/benches/rdkafka_performance.py" --bin "$RDPERF" --mock \
            --topic ceiling --count "$RDPERF_N"
        step rdkafka_c_mock_2000 python3 "$ROOT/benches/rdkafka_performance.py" --bin "$RDPERF" --mock \
            --topic floor --rate 2000 --duration "$LATENCY_S"
    fi

    # (b) a fresh broker.
    rm -rf "$TMP/data"
    log "run $1: sluice serve --data-dir \$TMP/data --kafka-listen $BOOT"
    start_broker

    # (c) the benchmarks.
    local B=("${BENCH[@]}" --bootstrap "$BOOT" --json)
    step produce "${B[@]}" produce --topic bench-produce --partitions 8 --record-size 1024 --acks all \
        --duration "${THROUGHPUT_S}s"
    step consume "${B[@]}" consume --topic bench-produce --from-beginning
    step produce_2000 "${B[@]}" produce --topic bench-latency --partitions 8 --record-size 1024 --acks all \
        --rate 2000 --linger-ms 0 --duration "${LATENCY_S}s"
    step e2e_2000 "${B[@]}" e2e --topic bench-e2e --partitions 8 --record-size 1024 --acks all \
        --rate 2000 --linger-ms 0 --duration "${E2E_S}s"
    # An idempotent phase, then a transactional one committing every 100 ms.
    step produce_txn "${B[@]}" produce --topic bench-txn --partitions 8 --record-size 1024 --acks all \
        --transactional --transaction-ms 100 --duration "${THROUGHPUT_S}s"
    if [[ $HAVE_RDKAFKA -eq 1 ]]; then
        local RK=(python3 "$ROOT/benches/librdkafka_produce.py" --bootstrap "$BOOT" --json --partitions 8
            --record-size 1024)
        step rdkafka "${RK[@]}" --topic bench-rdkafka --duration "$THROUGHPUT_S"
        step rdkafka_consume "${B[@]}" consume --topic bench-rdkafka --from-beginning
        step rdkafka_2000 "${RK[@]}" --topic bench-rdkafka-latency --rate 2000 --linger-ms 0 \
            --duration "$LATENCY_S"
        step rdkafka_txn "${RK[@]}" --topic bench-rdkafka-txn --transactional --transaction-ms 100 \
            --duration "$THROUGHPUT_S"
    else
        log "confluent-kafka is not installed: skipping the librdkafka steps"
    fi
    if [[ -n "$RDPERF" ]]; then
        step rdkafka_c python3 "$ROOT/benches/rdkafka_performance.py" --bin "$RDPERF" --bootstrap "$BOOT" \
            --topic bench-rdkafka-c --count "$RDPERF_N"
        step rdkafka_c_2000 python3 "$ROOT/benches/rdkafka_performance.py" --bin "$RDPERF" --bootstrap "$BOOT" \
            --topic bench-rdkafka-c-latency --rate 2000 --duration "$LATENCY_S"
    else
        log "rdkafka_performance is not available: skipping its steps"
    fi
    # The peak, and the first step after which it was reached.
    echo "{\"peak_rss_kb\": $(peak_rss_kb), \"peak_step\": \"$(awk -v p="$(peak_rss_kb)" \
        '$2 == p {print $1; exit}' "$RES/rss.txt")\"}" >"$RES/broker.json"
    # Cold read: a restarted broker has an empty tail cache (the OS page
    # cache may still hold the files).
    log "run $1: restarting the broker (empty tail cache)"
    stop_broker
    start_broker
    step consume_restart "${B[@]}" consume --topic bench-produce --from-beginning
    stop_broker
    rm -rf "$TMP/data"
    if [[ $HAVE_RDKAFKA -eq 1 ]]; then
        # Partition counts, on a fresh broker: memory with idle partitions, then a very
        # wide topic and Metadata for all of it.
        log "run $1: a fresh broker for the partition-count step"
        start_broker
        step partitions python3 "$ROOT/benches/partitions_scale.py" --bootstrap "$BOOT" --pid "$BROKER_PID" \
            "${PARTITIONS_ARGS[@]}"
        stop_broker
        rm -rf "$TMP/data"
    fi
    if [[ $HAVE_MOSQUITTO -eq 1 ]]; then
        mqtt_side_by_side "$1"
    else
        log "mosquitto is not installed: skipping the MQTT side-by-side steps"
    fi
}

# The same `sluice bench mqtt` load against mosquitto (in memory, no persistence) and
# against a fresh Sluice broker (durable, into Kafka), one after the other.
mqtt_side_by_side() {
    local MQ=("${BENCH[@]}" --json mqtt --seconds "$MQTT_S")
    printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n' \
        "$MQTT_PORT" >"$TMP/mosquitto.conf"
    log "run $1: mosquitto -c \$TMP/mosquitto.conf (port $MQTT_PORT, in memory)"
    mosquitto -c "$TMP/mosquitto.conf" >"$TMP/mosquitto.log" 2>&1 &
    local MOSQ_PID=$!
    python3 -c 'import socket, sys, time
for _ in range(100):
    try:
        socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=1).close()
        sys.exit(0)
    except OSError:
        time.sleep(0.1)
sys.exit("mosquitto did not come up")' "$MQTT_PORT"
    for n in "${MQTT_CLIENTS[@]}"; do
        step "mqtt_mosquitto_$n" "${MQ[@]}" --mqtt "127.0.0.1:$MQTT_PORT" --clients "$n" --server-pid "$MOSQ_PID"
    done
    kill -TERM "$MOSQ_PID" 2>/dev/null || true
    wait "$MOSQ_PID" 2>/dev/null || true
    log "run $1: a fresh broker for the MQTT steps"
    start_broker
    for n in "${MQTT_CLIENTS[@]}"; do
        step "mqtt_sluice_$n" "${MQ[@]}" --mqtt "127.0.0.1:$MQTT_PORT" --clients "$n" --server-pid "$BROKER_PID"
    done
    stop_broker
    rm -rf "$TMP/data"
}

DIRS=()
for k in $(seq "$RUNS"); do
    one_run "$k"
    DIRS+=("$TMP/results/run$k")
done

# (d) the table: medians over the runs of each figure and of its ratio to
# the reference measured in the same run.
ARGS=()
[[ $QUICK -eq 1 ]] && ARGS+=(--quick)
[[ -n "$OUT" ]] && ARGS+=(--out "$OUT")
python3 "$ROOT/benches/summarize.py" "${ARGS[@]}" "${DIRS[@]}"
