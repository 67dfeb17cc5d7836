#!/bin/sh
# Makes sure `redis-server` is installed: the Redis serving-store tests start their own server
# with it (on a free loopback port, stopped after the run). `make test` runs this first.
# Installs Debian's package when missing (as root); otherwise prints the command to run and,
# outside CI, lets the Redis tests skip (they name the same command). Under CI=true a missing
# Redis fails, so CI never goes green by skipping.
set -eu

missing() {
    if [ "${CI:-}" = "true" ]; then exit 1; fi
    exit 0
}

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "redis-server is missing: install Redis 7 or later with your system's package manager" >&2
    echo "(e.g. 'brew install redis'); the Redis tests skip without it" >&2
    missing
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "redis-server is missing; install it with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y redis-server" >&2
    missing
fi
echo "installing redis-server from Debian's packages"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends redis-server
