#!/usr/bin/env bash
# Installs wiretrail (if needed) and starts the gateway on the embedded demo default:
# a regular proxy on 127.0.0.1:8080, sessions under ./sessions.
# Extra arguments go to mitmdump, e.g. --set wiretrail_config=gateway.toml
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/mitmdump -s addons/gateway.py --listen-host "${WIRETRAIL_HOST:-127.0.0.1}" \
    --mode "regular@${WIRETRAIL_PORT:-8080}" "$@"
