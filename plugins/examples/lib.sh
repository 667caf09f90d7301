# Sourced by every plugins/examples/<lang>/build.sh: where toolchains and
# build outputs live (never inside the repository), and the timing helper.
#
#   SLUICE_TOOLCHAINS     toolchains installed from the package registries
#                         (default /var/tmp/sluice-toolchains)
#   SLUICE_EXAMPLES_OUT   where <lang>-example.wasm is written
#                         (default $CARGO_TARGET_DIR/examples)
set -euo pipefail

examples_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(cd "$examples_dir/../.." && pwd)"
wit_dir="$repo_dir/wit"
toolchains="${SLUICE_TOOLCHAINS:-/var/tmp/sluice-toolchains}"
out_dir="${SLUICE_EXAMPLES_OUT:-${CARGO_TARGET_DIR:-/var/tmp/sluice-target}/examples}"
mkdir -p "$toolchains" "$out_dir"

# Pinned tools shared by the C and Zig builds. The adapter's version follows
# the wasmtime sluice embeds.
WASM_TOOLS_VERSION=1.263.0
ADAPTER_VERSION=48.0.1

log() { echo "[$(basename "$(dirname "$0")")] $*" >&2; }

# Debian packages, installed only when missing (apt-get needs root).
need_deb() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    log "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >&2
  fi
}

# A crates.io binary at a pinned version, installed into the toolchain cache.
need_crate_bin() {
  local crate="$1" version="$2" bin="$3"
  local root="$toolchains/cargo"
  if ! "$root/bin/$bin" --version 2>/dev/null | grep -qF "$version"; then
    log "installing $crate $version from crates.io"
    CARGO_TARGET_DIR="$toolchains/cargo-build" \
      cargo install --quiet --locked --root "$root" "$crate@$version" >&2
  fi
  echo "$root/bin/$bin"
}

now_ms() { echo $(($(date +%s%N) / 1000000)); }

# Prints the size and build time of the component and records them in
# $out_dir/sizes.tsv (language, bytes, build milliseconds) for build-all.sh.
report() {
  local lang="$1" wasm="$2" start_ms="$3"
  local size ms
  size=$(stat -c %s "$wasm")
  ms=$(($(now_ms) - start_ms))
  log "built $wasm: $size bytes in $ms ms"
  printf '%s\t%s\t%s\n' "$lang" "$size" "$ms" >>"$out_dir/sizes.tsv"
}

# The WASI preview1 adapter (reactor flavour) that `wasm-tools component new`
# needs to turn a wasm32-wasi core module into a component: the crates.io
# crate wasi-preview1-component-adapter-provider ships it, so a throwaway
# crate that depends on it lets cargo fetch it. Prints the adapter's path.
need_adapter() {
  local version="$1"
  local dir="$toolchains/adapter-$version"
  if [ ! -f "$dir/Cargo.toml" ]; then
    mkdir -p "$dir/src"
    : >"$dir/src/lib.rs"
    cat >"$dir/Cargo.toml" <<TOML
[package]
name = "fetch-adapter"
version = "0.0.0"
edition = "2021"
[dependencies]
wasi-preview1-component-adapter-provider = "=$version"
[workspace]
TOML
  fi
  local manifest
  manifest=$(cd "$dir" && cargo metadata --format-version 1 --quiet |
    python3 -c 'import json, sys
for p in json.load(sys.stdin)["packages"]:
    if p["name"] == "wasi-preview1-component-adapter-provider":
        print(p["manifest_path"])')
  echo "$(dirname "$manifest")/artefacts/wasi_snapshot_preview1.reactor.wasm"
}

# wit-bindgen's C bindings of the filter world, into $1.
c_bindings() {
  local wit_bindgen
  wit_bindgen=$(need_crate_bin wit-bindgen-cli 0.63.0 wit-bindgen)
  rm -rf "$1"
  "$wit_bindgen" c "$wit_dir" --world filter --out-dir "$1" 2>&1 | { grep -v "^Generating" || true; } >&2
}

# Exits early (recording the existing component) when $1 is newer than
# every other argument, files or directories, and than the WIT and this
# file: tests/run.sh calls build-all.sh on every run.
skip_if_fresh() {
  local lang="$1" wasm="$2"
  shift 2
  [ -f "$wasm" ] || return 0
  [ -z "$(find "$@" "$wit_dir" "$examples_dir/lib.sh" -newer "$wasm" -print -quit)" ] || return 0
  log "$wasm is up to date"
  printf '%s\t%s\t%s\n' "$lang" "$(stat -c %s "$wasm")" "up-to-date" >>"$out_dir/sizes.tsv"
  exit 0
}
