#!/bin/sh
# Makes sure a headless Chromium and its ChromeDriver are installed: the browser suites
# (tests/browser/) drive Debian's `chromium` with Playwright, pointed at the system binary
# (Playwright's own browser download is not used). `make test` runs this first.
# Installs Debian's packages when missing (as root); otherwise prints the command to run and,
# outside CI, lets the browser tests skip (they name the same command). Under CI=true a
# missing browser fails, so CI never goes green by skipping.
set -eu

missing() {
    if [ "${CI:-}" = "true" ]; then exit 1; fi
    exit 0
}

if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "chromium is missing: install Chromium with your system's package manager" >&2
    echo "and set CLEW_CHROMIUM to its executable; the browser tests skip without it" >&2
    missing
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "chromium is missing; install it with:" >&2
    echo "    sudo apt-get update && sudo apt-get install -y chromium chromium-driver" >&2
    missing
fi
echo "installing chromium and chromium-driver from Debian's packages"
apt-get update -q
DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium chromium-driver
