#!/usr/bin/env bash
# `make watch`: the server on the embedded tiny model and the gateway in front of it, on localhost; prints the
# viewer page's URL and runs until Ctrl-C, which stops both. SERVER_PORT, GATEWAY_PORT and WATCH_ARGS (more
# tokentrim-server flags, e.g. --model drift_lab/weights/smoke-seed0) change the defaults.
set -euo pipefail

venv=${VENV:-.venv}
server_port=${SERVER_PORT:-50051}
gateway_port=${GATEWAY_PORT:-8080}

# shellcheck disable=SC2086 # WATCH_ARGS is a list of flags
"$venv/bin/tokentrim-server" --model tiny --listen "127.0.0.1:$server_port" --metrics-port -1 ${WATCH_ARGS:-} &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null' EXIT

for _ in $(seq 1 600); do
    "$venv/bin/tokentrim-client" health --target "127.0.0.1:$server_port" >/dev/null 2>&1 && break
    kill -0 "$server" 2>/dev/null || { echo "watch: the server exited" >&2; exit 1; }
    sleep 0.2
done

# The gateway prints "tokentrim-gateway: open http://127.0.0.1:PORT/" once it serves; Ctrl-C stops it, then the trap
# stops the server.
"$venv/bin/tokentrim-gateway" --server "127.0.0.1:$server_port" --listen "127.0.0.1:$gateway_port" --metrics-port -1
