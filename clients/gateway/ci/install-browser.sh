#!/usr/bin/env bash
# Install the headless browser the gateway's tests drive (tests/gateway): Debian's `chromium` and `chromium-driver`
# (selenium talks to /usr/bin/chromedriver). Idempotent and quiet: nothing happens when both are there.
set -euo pipefail

if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    exit 0
fi

SCRIPT=clients/gateway/ci/install-browser.sh
HINT="install Chromium and chromedriver (apt-get install chromium chromium-driver)"
# shellcheck source=../../../deploy/ci/apt.sh
source "$(dirname "$0")/../../../deploy/ci/apt.sh"
apt_install chromium chromium-driver
