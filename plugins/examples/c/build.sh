#!/usr/bin/env bash
# Builds c-example.wasm: wit-bindgen's C bindings (crates.io wit-bindgen-cli),
# Debian's clang for wasm32-wasi with wasi-libc (a core module in the
# reactor model), then `wasm-tools component new` (crates.io) with the WASI
# preview1 adapter (crates.io wasi-preview1-component-adapter-provider).
# sdk/sluice.c gives the default hooks and helpers filter.c builds on.
source "$(dirname "$0")/../lib.sh"
wasm="$out_dir/c-example.wasm"
skip_if_fresh c "$wasm" "$examples_dir/c"
need_deb clang lld wasi-libc libclang-rt-14-dev-wasm32
wasm_tools=$(need_crate_bin wasm-tools "$WASM_TOOLS_VERSION" wasm-tools)
adapter=$(need_adapter "$ADAPTER_VERSION")
work="$out_dir/c-build"
start=$(now_ms)
c_bindings "$work"
clang --target=wasm32-wasi --sysroot=/usr -mexec-model=reactor -O2 -Wall -Wextra -Werror \
  -I "$work" -I "$examples_dir/c/sdk" "$examples_dir/c/filter.c" "$examples_dir/c/sdk/sluice.c" \
  "$work/filter.c" "$work/filter_component_type.o" \
  -o "$work/core.wasm"
"$wasm_tools" component new "$work/core.wasm" \
  --adapt "wasi_snapshot_preview1=$adapter" -o "$wasm"
report c "$wasm" "$start"
