#!/usr/bin/env bash
# Runs the `decode` fuzz target for a bounded time: ./run.sh [SECONDS] (default 60).
# Needs a nightly toolchain and cargo-fuzz (`rustup toolchain install nightly`,
# `cargo install cargo-fuzz`). The grown corpus stays in corpus/decode and crashes land in
# artifacts/decode; `cargo test -p ssmx-protocol --test fuzz_corpus` replays both on stable.
set -euo pipefail
seconds="${1:-60}"
case "$seconds" in
  '' | *[!0-9]*) echo "usage: $0 [SECONDS]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")"

if ! cargo +nightly --version >/dev/null 2>&1; then
  echo "no nightly toolchain: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is not installed: cargo install cargo-fuzz" >&2
  exit 1
fi

mkdir -p corpus/decode
# The first directory receives new inputs; seeds/decode (golden frames) is only read.
exec cargo +nightly fuzz run decode corpus/decode seeds/decode -- \
  -max_total_time="$seconds" -print_final_stats=1
