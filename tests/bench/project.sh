#!/usr/bin/env bash
# sluice in the side-by-side benchmark's `project` slot (../shared/bench):
# writes a config from the BENCH_* variables and execs the release binary,
# so the harness measures exactly one process.
#
#   PROJECT_CMD="bash $PWD/tests/bench/project.sh" ../shared/bench/run.sh project postfix haraka
#   SLUICE_BENCH_PIPELINE=minimal ...   # relay control only (the default)
#
# The 250 after DATA means the message is fsynced to the spool (group
# commit), as with Postfix; delivery to the sink happens afterwards.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sluice-target}"
bin="$CARGO_TARGET_DIR/release/sluice"
if [ ! -x "$bin" ] || [ -n "$(find "$root/core" "$root/spool" "$root/plugins" "$root/wit" -newer "$bin" -type f -print -quit)" ]; then
  (cd "$root" && cargo build --release -p sluice >&2)
fi

listen="${BENCH_LISTEN:-127.0.0.1:2527}"
relay="${BENCH_RELAY:-127.0.0.1:2599}"
domain="${BENCH_RELAY_DOMAIN:-example.test}"
networks="${BENCH_MYNETWORKS:-127.0.0.0/8}"
spool="${BENCH_SPOOL_DIR:-/var/spool/bench-project}"
pipeline="${SLUICE_BENCH_PIPELINE:-minimal}"
mkdir -p "$spool"
config="$spool/sluice.toml"

case "$pipeline" in
  minimal)
    # The rcpt stage is closed (no allow, no relaying), so the smallest
    # pipeline that relays is relay control alone.
    stages='rcpt = ["relay"]' ;;
  *) echo "SLUICE_BENCH_PIPELINE must be minimal" >&2; exit 2 ;;
esac

cat > "$config" <<EOF
[server]
hostname = "bench.sluice.test"
data_dir = "$spool"
max_connections = 2000
max_connections_per_ip = 2000

[domains]
local = []

[[listener]]
name = "bench"
address = "$listen"
pipeline = "bench"

[pipeline.bench]
$stages

[plugins.relay]
path = "builtin:relay"

[plugins.relay.config]
trusted_networks = ["$networks"]

[delivery]
max_connections_per_domain = 20

[[delivery.route]]
domain = "$domain"
next_hop = "$relay"
tls = "none"

[log]
level = "warn"
EOF
exec "$bin" serve --config "$config"
