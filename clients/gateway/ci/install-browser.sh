#!/usr/bin/env bash
# Install the headless browser the gateway's tests drive (tests/gateway): Debian's `chromium` and `chromium-driver`
# (selenium talks to /usr/bin/chromedriver). Idempotent and quiet: nothing happens when /usr/bin/chromium is there.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi

fail() {
    echo "clients/gateway/ci/install-browser.sh: $*; install Chromium and chromedriver (apt-get install chromium chromium-driver)" >&2
    exit 1
}

command -v apt-get >/dev/null || fail "no apt-get on this system"
sudo=()
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || fail "needs root or sudo"
    sudo=(sudo -n)
fi

# Quiet unless it fails: then the command's whole output, for the CI log.
quietly() {
    local output
    if ! output=$("$@" 2>&1); then
        echo "$output" >&2
        fail "'$*' failed"
    fi
}

export DEBIAN_FRONTEND=noninteractive
quietly "${sudo[@]}" apt-get update
quietly "${sudo[@]}" apt-get install -y --no-install-recommends chromium chromium-driver
