#!/usr/bin/env bash
# Builds librdkafka's own benchmark tool, examples/rdkafka_performance (C, no Python
# in the way), and prints its path. librdkafka's source comes from the npm registry:
# node-rdkafka's package vendors it whole (deps/librdkafka). Built once into a cache
# outside the clone; nothing of it enters this repository.
#
#   benches/rdkafka_performance_build.sh     # -> path of the binary (stdout)
#
# Needs npm, a C compiler and make. Environment: SLUICE_TOOLS_DIR (default
# $HOME/.cache/sluice/tools).
set -euo pipefail
VERSION=3.6.1 # node-rdkafka 3.6.1 vendors librdkafka 2.12.0
DIR="${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice/tools}/node-rdkafka-$VERSION"
BIN="$DIR/package/deps/librdkafka/examples/rdkafka_performance"
if [[ ! -x "$BIN" ]]; then
    for tool in npm cc make; do
        command -v "$tool" >/dev/null || { echo "rdkafka_performance: $tool is missing" >&2; exit 1; }
    done
    rm -rf "$DIR"
    mkdir -p "$DIR"
    (
        cd "$DIR"
        npm pack --silent "node-rdkafka@$VERSION" >/dev/null
        tar xzf "node-rdkafka-$VERSION.tgz"
        cd package/deps/librdkafka
        # Only what a plaintext producer needs; the build takes a minute or two.
        ./configure --disable-ssl --disable-sasl --disable-zstd --disable-curl --disable-gssapi >build.log 2>&1
        make -j"$(nproc)" -C src >>build.log 2>&1
        make -C examples rdkafka_performance >>build.log 2>&1
    ) || { echo "rdkafka_performance: build failed (see $DIR)" >&2; exit 1; }
fi
echo "$BIN"
