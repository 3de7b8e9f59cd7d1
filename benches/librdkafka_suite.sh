#!/usr/bin/env bash
# librdkafka's own integration suite against one Sluice node, as a measure of Kafka
# compatibility. Builds librdkafka's test runner (with SSL, SASL and zstd), starts
# Sluice on free ports with its embedded defaults, runs every broker test entry one at
# a time with a per-test timeout, and writes a table of test, result and seconds.
#
#   benches/librdkafka_suite.sh                  every broker test, default scenario
#   benches/librdkafka_suite.sh 0082 0092        only these
#   SCENARIO=noautocreate benches/librdkafka_suite.sh
#                                                the broker as tests/scenarios/noautocreate.json says
#                                                (4 partitions, no auto-creation)
#
# Environment:
#   LIBRDKAFKA_VERSION  pinned release (default 2.15.1)
#   SUITE_DIR           where the source is built (default $HOME/.cache/sluice/librdkafka-VERSION)
#   SLUICE_BIN          the broker (default $CARGO_TARGET_DIR/release/sluice)
#   PER_TEST_TIMEOUT    seconds per test entry (default 300)
#   OUT                 the table (default target/librdkafka-suite-SCENARIO.md)
#
# The source comes from librdkafka's public repository at tag vVERSION. Where GitHub
# cannot be reached, the same release is taken from the npm registry, where Confluent's
# JavaScript client (@confluentinc/kafka-javascript 1.10.1) ships it whole under
# deps/librdkafka. Kafka's CLI tools are never installed: tests that need them
# (KAFKA_PATH) are reported as "needs Kafka CLI", not as failures. Takes about 30 minutes.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION=${LIBRDKAFKA_VERSION:-2.15.1}
NPM_PACKAGE="@confluentinc/kafka-javascript@1.10.1"
SUITE_DIR=${SUITE_DIR:-$HOME/.cache/sluice/librdkafka-$VERSION}
SLUICE_BIN=${SLUICE_BIN:-${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}/release/sluice}
PER_TEST_TIMEOUT=${PER_TEST_TIMEOUT:-300}
SCENARIO=${SCENARIO:-default}
OUT=${OUT:-$ROOT/target/librdkafka-suite-$SCENARIO.md}
SRC="$SUITE_DIR/librdkafka"

[[ -x "$SLUICE_BIN" ]] || { echo "no broker at $SLUICE_BIN: cargo build --release" >&2; exit 1; }

fetch_source() {
    [[ -f "$SRC/configure" ]] && return
    mkdir -p "$SUITE_DIR"
    if timeout 20 git ls-remote https://github.com/confluentinc/librdkafka "refs/tags/v$VERSION" >/dev/null 2>&1; then
        git clone -q --depth 1 --branch "v$VERSION" https://github.com/confluentinc/librdkafka "$SRC"
    else
        echo "GitHub unreachable: taking librdkafka $VERSION from $NPM_PACKAGE"
        (cd "$SUITE_DIR" && npm pack -q "$NPM_PACKAGE" >/dev/null && tar xzf confluentinc-kafka-javascript-*.tgz \
            package/deps/librdkafka && mv package/deps/librdkafka "$SRC" && rm -rf package ./*.tgz)
    fi
    grep -q "librdkafka v$VERSION" "$SRC/CHANGELOG.md" || { echo "$SRC is not librdkafka $VERSION" >&2; exit 1; }
}

build() {
    [[ -x "$SRC/tests/test-runner" ]] && return
    local missing=()
    for pkg in libssl-dev libsasl2-dev libzstd-dev liblz4-dev zlib1g-dev libcurl4-openssl-dev g++ make; do
        dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
    done
    if ((${#missing[@]})); then
        local sudo=(); [[ $(id -u) -ne 0 ]] && sudo=(sudo)
        "${sudo[@]}" apt-get install -y -q "${missing[@]}"
    fi
    (cd "$SRC" && ./configure --enable-ssl --enable-sasl --enable-zstd --enable-curl >/dev/null \
        && make -j"$(nproc)" libs >/dev/null && make -C tests -j"$(nproc)" build >/dev/null)
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

BROKER_PID=""
start_broker() {
    local data; data=$(mktemp -d)
    local kafka http registry mqtt
    kafka=$(free_port); http=$(free_port); registry=$(free_port); mqtt=$(free_port)
    # The broker as the scenario describes it (tests/scenarios/SCENARIO.json).
    local conf="$SRC/tests/scenarios/$SCENARIO.json"
    local partitions autocreate
    partitions=$(grep -o '"num_partitions": *[0-9]*' "$conf" | grep -o '[0-9]*$')
    autocreate=$(grep -o '"auto_create_topics": *"[a-z]*"' "$conf" | grep -o 'true\|false')
    local extra=(--default-partitions "${partitions:-4}" --auto-create-topics "${autocreate:-true}")
    "$SLUICE_BIN" serve --data-dir "$data" --kafka-listen "127.0.0.1:$kafka" --advertise "127.0.0.1:$kafka" \
        --http-listen "127.0.0.1:$http" --registry-listen "127.0.0.1:$registry" \
        --mqtt-listen "127.0.0.1:$mqtt" "${extra[@]}" >"$SUITE_DIR/broker.log" 2>&1 &
    BROKER_PID=$!
    for _ in $(seq 100); do
        curl -fs "http://127.0.0.1:$http/health" >/dev/null 2>&1 && break
        sleep 0.1
    done
    printf 'bootstrap.servers=127.0.0.1:%s\n' "$kafka" >"$SRC/tests/test.conf"
}
stop_broker() { [[ -n $BROKER_PID ]] && kill "$BROKER_PID" 2>/dev/null && wait "$BROKER_PID" 2>/dev/null || true; }
trap stop_broker EXIT

# Every test entry with a source file (NNNN-name.c or .cpp).
entries() {
    if (($#)); then printf '%s\n' "$@"; return; fi
    (cd "$SRC/tests" && ls 0[0-9][0-9][0-9]-*.c 0[0-9][0-9][0-9]-*.cpp 2>/dev/null | cut -c1-4 | sort -u)
}

fetch_source
build
start_broker
mkdir -p "$(dirname "$OUT")"
results=()
pass=0 applicable=0
for t in $(entries "$@"); do
    log="$SUITE_DIR/test-$t.log"
    started=$SECONDS
    set +e
    (cd "$SRC/tests" && LD_LIBRARY_PATH="$SRC/src:$SRC/src-cpp" TESTS=$t TEST_KAFKA_VERSION=3.7.0 TEST_SCENARIO=$SCENARIO \
        timeout "$PER_TEST_TIMEOUT" ./test-runner -L >"$log" 2>&1)
    rc=$?
    set -e
    secs=$((SECONDS - started))
    if grep -q "KAFKA_PATH.*must be set" "$log"; then result="needs Kafka CLI"
    elif ((rc == 124)); then result="timeout"
    elif grep -qE "Test .* SKIPPED" "$log" && ! grep -q "PASSED" "$log"; then result="skipped"
    elif ((rc == 0)) && grep -q "PASSED" "$log"; then result="pass"
    elif ((rc == 0)); then result="not run"
    else result="FAIL"
    fi
    case $result in pass) pass=$((pass + 1)); applicable=$((applicable + 1)) ;; FAIL|timeout) applicable=$((applicable + 1)) ;; esac
    results+=("| $t | $result | $secs |")
    printf '%s %-16s %4ss\n' "$t" "$result" "$secs"
    # A broker that died or wedged would fail every later test: start a fresh one.
    if ! kill -0 "$BROKER_PID" 2>/dev/null; then echo "broker exited during $t; restarting"; start_broker; fi
done
{
    echo "librdkafka $VERSION suite against Sluice ($SCENARIO scenario), $(date -u +%Y-%m-%d)"
    echo
    echo "Passed $pass of $applicable applicable tests."
    echo
    echo "| test | result | seconds |"
    echo "|---|---|---|"
    printf '%s\n' "${results[@]}"
} >"$OUT"
echo "table: $OUT"
