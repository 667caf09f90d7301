#!/usr/bin/env bash
# sluice in the side-by-side benchmark's `project` slot (../shared/bench):
# writes a config from the BENCH_* variables and execs the release binary,
# so the harness measures exactly one process.
#
#   PROJECT_CMD="exec bash $PWD/tests/bench/project.sh" ../shared/bench/run.sh project postfix haraka
# (`exec`, so the harness's SIGTERM reaches the server itself)
#   SLUICE_BENCH_PIPELINE=minimal ...   # relay control only (the default)
#   SLUICE_BENCH_PIPELINE=inbound ...   # five bundled plugins: ratelimit,
#                                       # helo, antispoof, relay, content
#
# The 250 after DATA means the message is fsynced to the spool (group
# commit), as with Postfix; delivery to the sink happens afterwards.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/sluice-target}"
bin="$CARGO_TARGET_DIR/release/sluice"
# Rebuilt when a source of the binary changed (the example plugins in
# plugins/examples are not part of it).
if [ ! -x "$bin" ] || [ -n "$(find "$root/core" "$root/spool" "$root/plugins" "$root/wit" \
  -path "$root/plugins/examples" -prune -o -path "$root/plugins/target" -prune -o \
  -newer "$bin" -type f -print -quit)" ]; then
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
    stages='rcpt = ["relay"]'
    extra_plugins='' ;;
  inbound)
    # The default inbound pipeline (config/inbound.toml) without what needs
    # internet DNS (dnsbl, SPF/DKIM/DMARC) or would refuse the load itself
    # (greylisting); recipients has no local domain to check here. Every
    # plugin does its real work: ratelimit counts in the kv store, content
    # runs its regex and attachment rules on every message.
    stages='connect = ["ratelimit"]
helo = ["helo"]
mail = ["antispoof"]
rcpt = ["ratelimit", "relay"]
data = ["antispoof", "content"]'
    extra_plugins='
[plugins.ratelimit]
path = "builtin:ratelimit"

[plugins.ratelimit.config]
exempt_networks = []

[[plugins.ratelimit.config.limit]]
key = "network"
what = "connections"
max = 100000000
window = "1m"

[[plugins.ratelimit.config.limit]]
key = "sender"
what = "recipients"
max = 100000000
window = "1h"

[plugins.helo]
path = "builtin:helo"

[plugins.helo.config]
trusted_networks = []

[plugins.antispoof]
path = "builtin:antispoof"

[plugins.content]
path = "builtin:content"

[[plugins.content.config.rule]]
name = "pills"
header = "Subject"
pattern = "(?i)v[i1]agra"
action = "reject"

[[plugins.content.config.rule]]
name = "executables"
attachment_extension = ["exe", "scr", "js", "bat"]
action = "reject"

[[plugins.content.config.rule]]
name = "oversized"
max_size = "50MiB"
action = "reject"
' ;;
  *) echo "SLUICE_BENCH_PIPELINE must be minimal or inbound" >&2; exit 2 ;;
esac

cat > "$config" <<EOF
[server]
hostname = "bench.sluice.test"
data_dir = "$spool"
allow_root = true  # the bench runs as root; only matters then
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
$extra_plugins

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
