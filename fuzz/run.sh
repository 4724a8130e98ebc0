#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60), starting from the committed
# seeds in fuzz/seeds/<target>; what the fuzzer finds goes to a temporary corpus, a
# crash stops the run (its input in fuzz/artifacts/<target>/) and fails it. On the
# stable toolchain: RUSTC_BOOTSTRAP=1 lets cargo-fuzz use the sanitizer flags.
#   bash fuzz/run.sh 20     # what tests/run.sh runs
#   bash fuzz/run.sh 600    # a longer run, for the README's figures
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked --version 0.13.2
fi
cargo fuzz build
for target in $(cargo fuzz list); do
  corpus="$(mktemp -d)"
  log="$(mktemp)"
  if ! cargo fuzz run "$target" "$corpus" "seeds/$target" -- \
    -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1; then
    tail -n 60 "$log"
    echo "fuzz: $target crashed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: [0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1 | grep -o '[0-9]*$' || echo "?")
  echo "fuzz: $target: $runs runs in ${secs} s, coverage $cov edges, no crash"
  rm -rf "$corpus" "$log"
done
