"""Pinned command-line agents from npm (Claude Code, Codex CLI), installed once into a cache
directory the tests own: `.cache/agents/<name>-<version>/` in the checkout (gitignored), or
$WIRETRAIL_AGENT_CACHE. Each lives in a prefix of its own, so versions never mix.

Both packages ship a native binary inside a platform package of the registry; npm (and node, for
their install script) is all that is needed. Where npm is missing the test is skipped with what
to do (bash .ci/run installs Node.js); a failed install fails the test with npm's output.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    return Path(os.environ.get("WIRETRAIL_AGENT_CACHE") or REPO_ROOT / ".cache" / "agents")


def npm_tool(package: str, version: str, bin_name: str) -> Path:
    """The path of `bin_name` from `package@version`, installed if it is not yet."""
    prefix = cache_dir() / f"{package.rsplit('/', 1)[-1]}-{version}"
    binary = prefix / "node_modules" / ".bin" / bin_name
    if binary.exists():
        return binary
    npm = shutil.which("npm")
    if npm is None:
        pytest.skip(f"npm is not installed, so {package} cannot be (bash .ci/run installs Node.js)")
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install, even with tests in parallel
        if not binary.exists():
            proc = subprocess.run(
                [npm, "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--no-save",
                 "--loglevel=error", f"{package}@{version}"],
                capture_output=True, text=True, timeout=600)
            assert proc.returncode == 0 and binary.exists(), (
                f"npm could not install {package}@{version}:\n{proc.stdout}\n{proc.stderr}")
    return binary


def clean_env(home: Path, drop_prefixes: tuple[str, ...]) -> dict:
    """The test process's environment without any proxy setting and without the variables a
    client reads (`drop_prefixes`), with HOME of its own: nothing of the developer's leaks in."""
    env = {k: v for k, v in os.environ.items()
           if not k.upper().endswith("_PROXY") and not k.upper().startswith(drop_prefixes)}
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), NO_PROXY="", no_proxy="")
    return env
