#!/usr/bin/env bash
# Installs s3s-fs, an S3 API server over a local directory (Rust, from crates.io), and
# prints its path. It answers each GET slowly (50-66 ms for 1 MiB on one connection) and
# scales with the requests in flight, as S3 does, so it shows what a reader keeps in
# flight. Built once into a cache outside the clone; nothing of it enters this repository.
#
#   benches/s3s_fs_build.sh     # -> path of the binary (stdout)
#
# Environment: SLUICE_TOOLS_DIR (default $HOME/.cache/sluice/tools).
set -euo pipefail
VERSION=0.14.1 # the newest that builds with Rust 1.95 (0.17 needs 1.96)
DIR="${SLUICE_TOOLS_DIR:-$HOME/.cache/sluice/tools}/s3s-fs-$VERSION"
BIN="$DIR/bin/s3s-fs"
if [[ ! -x "$BIN" ]]; then
    # Its own target directory, so the build neither reuses nor disturbs the project's.
    CARGO_TARGET_DIR="$DIR/target" cargo install --quiet --locked "s3s-fs@$VERSION" --features binary \
        --root "$DIR" >"$DIR.log" 2>&1 || { echo "s3s-fs: build failed (see $DIR.log)" >&2; exit 1; }
    rm -rf "$DIR/target"
fi
echo "$BIN"
