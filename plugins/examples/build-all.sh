#!/usr/bin/env bash
# Builds every example plugin (installing the toolchains that are missing)
# and prints a table of component sizes and build times. Languages can be
# named to build only those: build-all.sh rust c
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/lib.sh"
langs=("$@")
[ "${#langs[@]}" -gt 0 ] || langs=(rust python javascript c zig)
: >"$out_dir/sizes.tsv"
for lang in "${langs[@]}"; do
  bash "$here/$lang/build.sh"
done
printf "%-12s %12s %12s\n" language bytes build_ms
while IFS=$'\t' read -r lang size ms; do
  printf "%-12s %12s %12s\n" "$lang" "$size" "$ms"
done <"$out_dir/sizes.tsv"
