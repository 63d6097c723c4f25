# Sourced by the scripts that install the system tools the tests use: `apt_install PACKAGE...` installs Debian
# packages without recommends, quietly unless it fails (then the whole output, for the CI log), as root or
# through sudo (`as_root`). The sourcing script sets SCRIPT (its name) and HINT (how to install by hand) for the messages.

fail() {
    echo "$SCRIPT: $*; $HINT" >&2
    exit 1
}

quietly() {
    local output
    if ! output=$("$@" 2>&1); then
        echo "$output" >&2
        fail "'$*' failed"
    fi
}

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    else
        command -v sudo >/dev/null || fail "needs root or sudo"
        sudo -n "$@"
    fi
}

apt_install() {
    command -v apt-get >/dev/null || fail "no apt-get on this system"
    export DEBIAN_FRONTEND=noninteractive
    quietly as_root apt-get update
    quietly as_root apt-get install -y --no-install-recommends "$@"
}
