#!/usr/bin/env bash
# Builds rust-example.wasm with cargo for wasm32-wasip2 (rustup adds the
# target when missing); the linker, wasm-component-ld, makes the component.
source "$(dirname "$0")/../lib.sh"
wasm="$out_dir/rust-example.wasm"
skip_if_fresh rust "$wasm" "$examples_dir/rust" "$examples_dir/../sdk"
rustup target list --installed | grep -q wasm32-wasip2 || rustup target add wasm32-wasip2 >&2
target="$out_dir/rust-target"
start=$(now_ms)
cargo build --quiet --release --target wasm32-wasip2 \
  --manifest-path "$examples_dir/rust/Cargo.toml" --target-dir "$target" >&2
cp "$target/wasm32-wasip2/release/rust_example.wasm" "$wasm"
report rust "$wasm" "$start"
