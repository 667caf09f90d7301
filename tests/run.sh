#!/usr/bin/env bash
# The test command: unit tests of every crate (the plugins' too), then the
# end-to-end suite driving the real binary with real SMTP peers. Installs
# what is missing (a Python venv with tests/requirements.txt; the Debian
# packages of the peers: Postfix, Dovecot, swaks, openssl) and nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sluice-target}"
venv="${SLUICE_VENV:-/var/tmp/sluice-venv}"

bash tests/install-peers.sh

# The venv is rebuilt whenever tests/requirements.txt changes.
if ! cmp -s tests/requirements.txt "$venv/requirements.txt"; then
  [ -x "$venv/bin/python" ] || python3 -m venv "$venv"
  "$venv/bin/pip" install -q -r tests/requirements.txt
  cp tests/requirements.txt "$venv/requirements.txt"
fi

echo "== cargo test (workspace)"
cargo test --workspace
echo "== cargo test (plugins, native)"
(cd plugins && cargo test --workspace --target-dir "$CARGO_TARGET_DIR/plugins-native")
echo "== example plugins (every guest language)"
# Installs the guest toolchains from the package registries when missing;
# rebuilds only what changed.
bash plugins/examples/build-all.sh
export SLUICE_EXAMPLES_DIR="$CARGO_TARGET_DIR/examples"
echo "== end-to-end"
cargo build -p sluice
export SLUICE_BIN="$CARGO_TARGET_DIR/debug/sluice"
export SLUICE_PLUGIN_DIR="$CARGO_TARGET_DIR/plugins/wasm32-wasip2/release"
"$venv/bin/python" -m pytest -q tests/e2e "$@"
