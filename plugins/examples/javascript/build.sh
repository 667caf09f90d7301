#!/usr/bin/env bash
# Builds javascript-example.wasm with ComponentizeJS (npm
# @bytecodealliance/componentize-js, the engine behind `jco componentize`),
# installed under $SLUICE_TOOLCHAINS when missing; node and npm come from
# Debian when missing. Every optional WASI feature is disabled, so the
# component imports only what the StarlingMonkey runtime itself needs.
source "$(dirname "$0")/../lib.sh"
wasm="$out_dir/javascript-example.wasm"
skip_if_fresh javascript "$wasm" "$examples_dir/javascript"
jco_version=1.35.0
componentize_version=0.23.0
command -v npm >/dev/null || need_deb nodejs npm
prefix="$toolchains/js"
bin="$prefix/node_modules/.bin/componentize-js"
if ! "$bin" --version 2>/dev/null | grep -qF "$componentize_version"; then
  log "installing componentize-js $componentize_version and jco $jco_version from npm"
  mkdir -p "$prefix"
  npm install --prefix "$prefix" --silent --no-audit --no-fund \
    "@bytecodealliance/componentize-js@$componentize_version" \
    "@bytecodealliance/jco@$jco_version" >&2
fi
start=$(now_ms)
"$bin" "$examples_dir/javascript/filter.js" -w "$wit_dir" -n filter \
  -d stdio random clocks http fetch-event -o "$wasm" >&2
report javascript "$wasm" "$start"
