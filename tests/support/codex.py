"""OpenAI's Codex CLI for agent tests: a pinned version from npm, installed once into a cache
directory the tests own (`.cache/agents/` in the checkout, or $WIRETRAIL_AGENT_CACHE).

Codex in proxy mode reaches the gateway through HTTPS_PROXY (the identity token in the proxy URL)
and trusts its CA through SSL_CERT_FILE; `openai_base_url` points the built-in `openai` provider,
which speaks the Responses API over WebSocket (`wss://<base>/responses`), at the fake upstream.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CODEX_VERSION = "0.171.0"
REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("WIRETRAIL_AGENT_CACHE") or REPO_ROOT / ".cache" / "agents")


def codex_bin() -> Path:
    """The pinned Codex CLI, installed if it is not yet. Skips where npm is missing (.ci/run
    installs Node.js); fails if the install itself fails."""
    prefix = cache_dir() / f"codex-{CODEX_VERSION}"
    binary = prefix / "node_modules" / ".bin" / "codex"
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip("npm is not installed, so the Codex CLI cannot be (bash .ci/run installs Node.js)")
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install, even with tests in parallel
        if not binary.exists():
            proc = subprocess.run(
                [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--no-save",
                 "--loglevel=error", f"@openai/codex@{CODEX_VERSION}"],
                capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0 and binary.exists(), (
                f"npm could not install @openai/codex@{CODEX_VERSION}:\n{proc.stdout}\n{proc.stderr}")
    return binary


def codex_env(home: Path, *, proxy_url: str, ca_file: Path, api_key: str) -> dict:
    """A clean environment: its own HOME and CODEX_HOME, the gateway as proxy, nothing of ours."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY") and not k.startswith(
        ("OPENAI_", "CODEX_"))}
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), CODEX_HOME=str(home / ".codex"), CODEX_API_KEY=api_key,
               SSL_CERT_FILE=str(ca_file), HTTPS_PROXY=proxy_url, HTTP_PROXY=proxy_url, NO_PROXY="", no_proxy="",
               RUST_LOG="warn")
    return env
