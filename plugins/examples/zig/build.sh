#!/usr/bin/env bash
# Builds zig-example.wasm: Zig (PyPI ziglang, in a venv of its own) over
# wit-bindgen's C bindings (crates.io wit-bindgen-cli), compiled for
# wasm32-wasi with Zig's bundled wasi-libc in the reactor model, then
# `wasm-tools component new` with the WASI preview1 adapter, as for C, whose
# helper layer (../c/sdk) it links too.
source "$(dirname "$0")/../lib.sh"
wasm="$out_dir/zig-example.wasm"
skip_if_fresh zig "$wasm" "$examples_dir/zig" "$examples_dir/c/sdk"
version=0.17.1
venv="$toolchains/zig"
export ZIG_GLOBAL_CACHE_DIR="$toolchains/zig-cache" ZIG_LOCAL_CACHE_DIR="$toolchains/zig-cache"
zig() { "$venv/bin/python" -m ziglang "$@"; }
if ! zig version 2>/dev/null | grep -qxF "$version"; then
  log "installing ziglang $version from PyPI"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q "ziglang==$version" >&2
fi
wasm_tools=$(need_crate_bin wasm-tools "$WASM_TOOLS_VERSION" wasm-tools)
adapter=$(need_adapter "$ADAPTER_VERSION")
work="$out_dir/zig-build"
start=$(now_ms)
c_bindings "$work"
cp "$examples_dir/zig/filter.zig" "$examples_dir/c/sdk/sluice.h" "$examples_dir/c/sdk/sluice.c" "$work/"
(
  cd "$work"
  zig translate-c sluice.h -target wasm32-wasi -lc -I. >sluice_h.zig
  zig build-exe filter.zig sluice.c filter.c filter_component_type.o -target wasm32-wasi \
    -fno-entry -mexec-model=reactor -lc -I. -O ReleaseSmall --name core
)
"$wasm_tools" component new "$work/core.wasm" \
  --adapt "wasi_snapshot_preview1=$adapter" -o "$wasm"
report zig "$wasm" "$start"
