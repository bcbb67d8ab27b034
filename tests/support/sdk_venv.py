"""The newest openai and anthropic Python SDKs, in a venv of their own.

The gateway's venv pins httpx and h11 for mitmproxy 11.0.2; the newest SDKs may want newer ones,
so they get a venv of their own: `.cache/sdk-venv/` in the checkout (gitignored), or under
$WIRETRAIL_AGENT_CACHE. It is made by the first test that needs it, and made again (with whatever
is newest then) when it is older than a week or its install failed half-way. A test runs
tests/support/sdk_agent.py with its python.
"""
from __future__ import annotations

import fcntl
import subprocess
import sys
import time
from pathlib import Path

from tests.support.npm_tools import cache_dir

PACKAGES = ("openai", "anthropic")
MAX_AGE = 7 * 24 * 3600
AGENT_SCRIPT = Path(__file__).with_name("sdk_agent.py")


def sdk_python() -> Path:
    """The venv's python, made (or renewed) if needed."""
    venv = cache_dir().parent / "sdk-venv"
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / ".sdk-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and time.time() - stamp.stat().st_mtime < MAX_AGE and python.exists():
            return python
        stamp.unlink(missing_ok=True)
        if not python.exists():
            subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True, timeout=300)
        proc = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                               "--upgrade", *PACKAGES], capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, f"pip could not install {PACKAGES} into {venv}:\n{proc.stdout}\n{proc.stderr}"
        stamp.write_text(versions(python))
    return python


def versions(python: Path) -> str:
    out = subprocess.run([str(python), "-c", "import openai, anthropic; print(f'openai {openai.__version__}, "
                          "anthropic {anthropic.__version__}')"], capture_output=True, text=True, timeout=60)
    return out.stdout.strip()
