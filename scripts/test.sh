#!/usr/bin/env bash
# Installs wiretrail with its test extras (if needed) and runs the whole test suite:
# unit tests, addon tests and end-to-end tests against a real mitmdump process.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
command -v curl >/dev/null 2>&1 || echo "note: curl is not installed; the curl end-to-end test will be skipped" >&2
exec .venv/bin/pytest -q "$@"
