#!/usr/bin/env bash
# Installs Debian's redis-server when it is not on PATH (or at
# /usr/bin/redis-server), for the cluster tests (tests/cluster_*.rs), which
# start their own redis-server on free ports and stop it. The system service
# is not started: a policy-rc.d that refuses service starts is in place while
# apt-get runs (unless one already is), so no Redis listens on 6379 because
# of this script. Safe to run again: it does nothing once redis-server is
# there.
set -euo pipefail

found="$(command -v redis-server || true)"
if [ -z "$found" ] && [ -x /usr/bin/redis-server ]; then
    found=/usr/bin/redis-server
fi
if [ -n "$found" ]; then
    echo "setup-redis: $found is there ($("$found" --version | cut -d' ' -f3))" >&2
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "setup-redis: redis-server not found and no apt-get; install Redis 7 yourself" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    sudo="sudo"
fi

policy=/usr/sbin/policy-rc.d
placed=""
if ! [ -e "$policy" ]; then
    # invoke-rc.d and deb-systemd-invoke ask this first: 101 = do not start.
    printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
    $sudo chmod 755 "$policy"
    placed=1
fi
cleanup() {
    if [ -n "$placed" ]; then
        $sudo rm -f "$policy"
    fi
}
trap cleanup EXIT

echo "setup-redis: installing redis-server" >&2
$sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null
/usr/bin/redis-server --version >&2
