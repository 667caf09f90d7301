#!/usr/bin/env bash
# Installs the Debian packages the end-to-end suite's real peers come from
# (Postfix with smtp-source/smtp-sink, Dovecot LMTP, Prometheus with promtool,
# swaks with Net::SSLeay for its TLS modes, openssl, systemd-analyze, nmap
# with its smtp-open-relay script, redis-server, strace, FUSE, HAProxy), each
# only when missing. The tests run their own instances; no system MTA or
# mailbox server is left running on the standard ports.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
packages=(postfix dovecot-core dovecot-lmtpd dovecot-imapd swaks libnet-ssleay-perl openssl prometheus systemd)
# nmap: smtp-open-relay against the shipped configs.
packages+=(nmap)
# [state] backend = "redis" tests start their own redis-server.
packages+=(redis-server)
# The durability tests: strace for the syscall trace, FUSE (libfuse2 for
# fusepy, fusermount) for the filesystem that loses unsynced writes.
packages+=(strace fuse libfuse2)
# PROXY protocol: HAProxy in front of a listener (send-proxy, send-proxy-v2).
packages+=(haproxy)
# Subaddressing: Dovecot's Sieve (Pigeonhole) files LMTP mail by its +detail.
packages+=(dovecot-sieve)
# DANE: BIND's named serves a zone signed at test time with dnssec-keygen
# and dnssec-signzone (bind9-utils); dig (bind9-dnsutils) waits for it.
packages+=(bind9 bind9-utils bind9-dnsutils)
# Milters: OpenDKIM (signing, opendkim-tools for its key), clamav-milter with
# clamd on a test-only signature database, rspamd's proxy worker.
packages+=(opendkim opendkim-tools clamav-daemon clamav-milter rspamd)
missing=()
for pkg in "${packages[@]}"; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ "${#missing[@]}" -eq 0 ] && exit 0

if [ "$(id -u)" != 0 ]; then
  echo "missing Debian packages: ${missing[*]} (run as root to install them)" >&2
  exit 1
fi
# "No configuration": the postfix package then never configures or starts a
# port-25 MTA of its own.
echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections
# Keep maintainer scripts from starting services while installing (the
# usual Debian way); an existing policy is left as it is.
policy=/usr/sbin/policy-rc.d
own_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"
  chmod 755 "$policy"
  own_policy=1
fi
trap '[ "$own_policy" = 1 ] && rm -f "$policy"' EXIT
echo "== apt-get install ${missing[*]}"
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null

# Should a service have started anyway (an init that ignores policy-rc.d),
# stop and disable it: the tests start their own instances.
for svc in postfix dovecot prometheus haproxy named opendkim clamav-daemon clamav-freshclam clamav-milter rspamd; do
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl disable --now "$svc" >/dev/null 2>&1 || true
  elif [ -x "/etc/init.d/$svc" ]; then
    "/etc/init.d/$svc" stop >/dev/null 2>&1 || true
    update-rc.d "$svc" disable >/dev/null 2>&1 || true
  fi
done
