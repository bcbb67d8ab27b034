#!/usr/bin/env bash
# Creates .venv and installs wiretrail with its test extras, in one resolver pass.
# Idempotent and quiet: it installs only when .venv is missing or pyproject.toml changed since
# the last install (a stamp in .venv), and shows pip's output only when the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
"$PY" - <<'PYEOF' || { echo "wiretrail needs Python 3.11 (mitmproxy 11.0.2); set PYTHON=/path/to/python3.11" >&2; exit 1; }
import sys
sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)
PYEOF
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
    .venv/bin/pip install --quiet --upgrade pip
fi
STAMP=.venv/.wiretrail-install
want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c "import recorder, mitmproxy" 2>/dev/null; then
    echo "wiretrail: installing into .venv (once; again only when pyproject.toml changes)" >&2
    log="$(mktemp)"
    if ! .venv/bin/pip install --quiet --disable-pip-version-check -e ".[test]" >"$log" 2>&1; then
        cat "$log" >&2
        rm -f "$log"
        echo "wiretrail: the install failed (pip's output above)" >&2
        exit 1
    fi
    rm -f "$log"
    echo "$want" > "$STAMP"
fi
