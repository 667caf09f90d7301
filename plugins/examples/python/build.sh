#!/usr/bin/env bash
# Builds python-example.wasm with componentize-py (PyPI), installed into a
# venv of its own under $SLUICE_TOOLCHAINS when missing.
source "$(dirname "$0")/../lib.sh"
wasm="$out_dir/python-example.wasm"
skip_if_fresh python "$wasm" "$examples_dir/python"
version=0.25.1
venv="$toolchains/python"
if ! "$venv/bin/componentize-py" --version 2>/dev/null | grep -qF "$version"; then
  log "installing componentize-py $version from PyPI"
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q "componentize-py==$version" >&2
fi
start=$(now_ms)
"$venv/bin/componentize-py" -d "$wit_dir" -w filter \
  componentize --stub-wasi -p "$examples_dir/python" app -o "$wasm" >&2
report python "$wasm" "$start"
