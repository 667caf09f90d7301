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
