#!/usr/bin/env bash
# Fuzzes sluice's parsers with cargo-fuzz (libFuzzer): the SMTP command
# parser, the DATA terminator/dot-unstuffing state machine, the address
# parser and the config loader (targets in fuzz/fuzz_targets, properties in
# fuzz/src/lib.rs).
#
# For each target: first every input in fuzz/regressions/<target> (crashes
# found before) is replayed, then the target is fuzzed for
# SLUICE_FUZZ_SECONDS (default 60) from its seed corpus. A crash fails the
# run; the crashing input is copied into fuzz/regressions/<target> so it can
# be committed and replayed from then on.
#
# Runs on the stable toolchain: the sanitizer is off (`-s none`, which needs
# no nightly flag); libFuzzer's coverage instrumentation and debug
# assertions still catch panics, overflows and broken properties.
#   bash tests/fuzz.sh                 every target
#   bash tests/fuzz.sh data command    only these
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sluice-target}"
toolchains="${SLUICE_TOOLCHAINS:-/var/tmp/sluice-toolchains}"
seconds="${SLUICE_FUZZ_SECONDS:-60}"
fuzz_target_dir="$CARGO_TARGET_DIR/fuzz"

cargo_fuzz_version=0.13.2
if ! "$toolchains/cargo/bin/cargo-fuzz" --version 2>/dev/null | grep -qF "$cargo_fuzz_version"; then
  echo "installing cargo-fuzz $cargo_fuzz_version from crates.io" >&2
  CARGO_TARGET_DIR="$toolchains/cargo-build" \
    cargo install --quiet --locked --root "$toolchains/cargo" "cargo-fuzz@$cargo_fuzz_version"
fi
export PATH="$toolchains/cargo/bin:$PATH"

targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(command data address config)
fuzz=(cargo fuzz run -s none --debug-assertions --target-dir "$fuzz_target_dir")

cd fuzz
for target in "${targets[@]}"; do
  regressions="regressions/$target"
  corpus="$fuzz_target_dir/corpus/$target"
  artifacts="$fuzz_target_dir/artifacts/$target"
  mkdir -p "$regressions" "$corpus" "$artifacts"
  # The seed corpus is committed; the grown corpus stays in the target dir.
  cp -n seeds/"$target"/* "$corpus"/ 2>/dev/null || true

  echo "== fuzz $target: replay $(find "$regressions" -type f | wc -l) regression inputs"
  if ! "${fuzz[@]}" "$target" "$regressions" -- -runs=0 >"$fuzz_target_dir/$target.replay.log" 2>&1; then
    tail -40 "$fuzz_target_dir/$target.replay.log" >&2
    echo "fuzz $target: a regression input crashes again" >&2
    exit 1
  fi

  echo "== fuzz $target: ${seconds}s"
  log="$fuzz_target_dir/$target.log"
  if ! "${fuzz[@]}" "$target" "$corpus" -- -max_total_time="$seconds" \
    -artifact_prefix="$artifacts/" -max_len=4096 -print_final_stats=1 >"$log" 2>&1; then
    tail -40 "$log" >&2
    for crash in "$artifacts"/*; do
      [ -f "$crash" ] && cp "$crash" "$regressions/"
    done
    echo "fuzz $target: crash; input kept in fuzz/$regressions" >&2
    exit 1
  fi
  grep -E '^stat::(number_of_executed_units|average_exec_per_sec|peak_rss_mb)' "$log" |
    sed "s/^/fuzz $target: /"
done
