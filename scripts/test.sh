#!/usr/bin/env bash
# Run Sluice's whole test suite, on a fresh machine or a warm one.
#
#   scripts/test.sh                 setup + fmt + build + unit tests + clippy + e2e
#   scripts/test.sh --no-setup      skip apt/pip/npm installs
#   scripts/test.sh --e2e-only      setup + release build + e2e tests only
#   scripts/test.sh -- -k crash     anything after `--` goes to pytest
#
# Expects Debian 12 (bookworm) with rustup's cargo, python3 + pip and
# node + npm; installs the rest (kcat, mosquitto, mold, Python and npm test packages)
# from the package registries only when it is missing.
#
# Environment:
#   CARGO_TARGET_DIR  default $HOME/.cache/sluice/target (shared build cache)
# The end-to-end tests run $CARGO_TARGET_DIR/release/sluice (as SLUICE_BIN).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

DO_SETUP=1
E2E_ONLY=0
PYTEST_EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-setup) DO_SETUP=0 ;;
        --e2e-only) E2E_ONLY=1 ;;
        --) shift; PYTEST_EXTRA=("$@"); break ;;
        -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done

START_TIME=$SECONDS
STAGES=()
banner() {
    local elapsed=$((SECONDS - START_TIME))
    STAGES+=("$elapsed $*")
    printf '\n==== [%3dm%02ds] %s ====\n' $((elapsed / 60)) $((elapsed % 60)) "$*"
}
# Time per stage, from one banner to the next.
stage_summary() {
    local i start name end
    echo "time per stage:"
    for ((i = 0; i < ${#STAGES[@]} - 1; i++)); do
        start=${STAGES[i]%% *}; name=${STAGES[i]#* }; end=${STAGES[i + 1]%% *}
        printf '  %3dm%02ds  %s\n' $(((end - start) / 60)) $(((end - start) % 60)) "$name"
    done
}
die() { echo "test.sh: error: $*" >&2; exit 1; }

SUDO=()
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 && SUDO=(sudo) || true
fi

# ---------------------------------------------------------------------------
setup_system_packages() {
    banner "system packages (apt)"
    local missing=()
    command -v kcat >/dev/null 2>&1 || missing+=(kcat)
    command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
    # The broker, for the MQTT side-by-side benchmark steps.
    command -v mosquitto >/dev/null 2>&1 || missing+=(mosquitto)
    command -v mold >/dev/null 2>&1 || missing+=(mold)
    command -v cc >/dev/null 2>&1 || missing+=(build-essential)
    command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
    command -v curl >/dev/null 2>&1 || missing+=(curl)
    # The security tests make their certificates with openssl.
    command -v openssl >/dev/null 2>&1 || missing+=(openssl)
    command -v node >/dev/null 2>&1 || missing+=(nodejs)
    command -v npm >/dev/null 2>&1 || missing+=(npm)
    python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
    # Cluster tests start their own PostgreSQL server from these binaries.
    compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || missing+=(postgresql)
    command -v psql >/dev/null 2>&1 || missing+=(postgresql-client)
    if [[ ${#missing[@]} -eq 0 ]]; then
        echo "all present: kcat mosquitto mold cc pkg-config curl openssl node npm pip postgresql"
        return
    fi
    echo "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -q
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends "${missing[@]}"
}

setup_python_packages() {
    banner "python packages (pip)"
    local req="tests/e2e/requirements.txt"
    local pip=(python3 -m pip install --disable-pip-version-check -q -r "$req")
    if ! "${pip[@]}"; then
        # Debian's system python refuses global installs (PEP 668).
        echo "retrying pip with --break-system-packages"
        "${pip[@]}" --break-system-packages
    fi
    python3 -c 'import confluent_kafka, kafka, pytest, pytest_timeout, moto.server, boto3, fastavro, google.protobuf, jsonschema, authlib; print("confluent-kafka", confluent_kafka.__version__, "librdkafka", confluent_kafka.libversion()[0], "kafka-python", kafka.__version__)'
}

setup_node_packages() {
    banner "node packages (npm, tests/e2e/js)"
    (
        cd tests/e2e/js
        if [[ -f package-lock.json ]]; then
            npm ci --no-audit --no-fund --loglevel=error
        else
            npm install --no-audit --no-fund --loglevel=error
        fi
        node -e 'console.log("kafkajs", require("kafkajs/package.json").version)'
    )
}

setup_rust_components() {
    banner "rust toolchain"
    cargo --version
    rustc --version
    if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
        echo "rustfmt/clippy missing; trying rustup component add"
        rustup component add rustfmt clippy
    fi
    cargo fmt --version
    cargo clippy --version
}

# ---------------------------------------------------------------------------
if [[ $DO_SETUP -eq 1 ]]; then
    setup_system_packages
    setup_python_packages
    setup_node_packages
fi
setup_rust_components

export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/sluice/target}"
if command -v mold >/dev/null 2>&1; then
    MOLD_FLAG="-C link-arg=-fuse-ld=mold"
    if [[ -z "${RUSTFLAGS:-}" ]]; then
        export RUSTFLAGS="$MOLD_FLAG"
    elif [[ "$RUSTFLAGS" != *fuse-ld=mold* ]]; then
        export RUSTFLAGS="$RUSTFLAGS $MOLD_FLAG"
    fi
fi
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
export RUST_BACKTRACE="${RUST_BACKTRACE:-1}"
echo "CARGO_TARGET_DIR=$CARGO_TARGET_DIR"
echo "RUSTFLAGS=${RUSTFLAGS:-}"

if [[ $E2E_ONLY -eq 0 ]]; then
    banner "cargo fmt --check"
    cargo fmt --all -- --check
    banner "no import cycles between modules (scripts/module_cycles.py)"
    python3 scripts/module_cycles.py
fi

banner "cargo build --release"
cargo build --release --locked

if [[ $E2E_ONLY -eq 0 ]]; then
    banner "cargo test --release (unit, property and integration tests)"
    cargo test --release --locked --workspace

    banner "cargo clippy -D warnings"
    cargo clippy --release --locked --all-targets -- -D warnings
fi

banner "end-to-end tests (pytest tests/e2e)"
# Always the binary just built, never a stale one from the environment.
export SLUICE_BIN="$CARGO_TARGET_DIR/release/sluice"
[[ -x "$SLUICE_BIN" ]] || die "broker binary not found at $SLUICE_BIN"
echo "SLUICE_BIN=$SLUICE_BIN"
rc=0
python3 -m pytest tests/e2e -v "${PYTEST_EXTRA[@]}" || rc=$?
if [[ $rc -eq 5 ]]; then
    die "pytest collected no end-to-end tests (exit 5)"
elif [[ $rc -ne 0 ]]; then
    die "end-to-end tests failed (pytest exit $rc)"
fi

banner "benchmark smoke run (benches/run.sh --quick; figures are not asserted)"
SLUICE_BIN="$SLUICE_BIN" bash benches/run.sh --quick || die "benchmark smoke run failed"

banner "all tests passed"
stage_summary
