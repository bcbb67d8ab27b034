"""The review page end to end: a real `wiretrail serve` process and Debian's Chromium driven by
Playwright (never `playwright install`: the system browser at /usr/bin/chromium, headless, in a
fresh profile, with nothing that reaches outside this machine)."""
from __future__ import annotations

import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.support.gateway import free_port

WIRETRAIL = Path(sys.executable).parent / "wiretrail"
CHROMIUM = os.environ.get("WIRETRAIL_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
LOGIN_LINK = re.compile(r"(http://\S+/login/once/[A-Za-z0-9_-]+)")


def need_chromium() -> None:
    if not (Path(CHROMIUM).exists() and shutil.which(CHROMIUM)):
        msg = f"no Chromium at {CHROMIUM}: apt-get install chromium (.ci/run does)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)


class Serve:
    """`wiretrail serve` as a user starts it; stdout is collected line by line."""

    def __init__(self, config: Path, workdir: Path, *extra: str):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.cmd = [str(WIRETRAIL), "serve", "--config", str(config), "--listen", f"127.0.0.1:{self.port}", *extra]
        self.workdir = workdir
        self.lines: list[str] = []
        self._q: queue.Queue[str] = queue.Queue()
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60.0) -> "Serve":
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        self.proc = subprocess.Popen(self.cmd, cwd=self.workdir, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, env=env, start_new_session=True)
        threading.Thread(target=self._read, daemon=True).start()
        self.wait_for("wiretrail review page (read-only) on", timeout)
        return self

    def _read(self):
        for line in self.proc.stdout:
            self._q.put(line.rstrip("\n"))

    def wait_for(self, needle: str, timeout: float = 30.0) -> str:
        deadline = time.monotonic() + timeout
        for line in self.lines:
            if needle in line:
                return line
        while time.monotonic() < deadline:
            try:
                line = self._q.get(timeout=0.1)
            except queue.Empty:
                if self.proc.poll() is not None and self._q.empty():
                    break
                continue
            self.lines.append(line)
            if needle in line:
                return line
        raise AssertionError(f"wiretrail serve did not print {needle!r}:\n" + "\n".join(self.lines))

    @property
    def login_link(self) -> str:
        m = LOGIN_LINK.search(self.wait_for("/login/once/"))
        assert m, self.lines
        return m.group(1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


@contextmanager
def chromium(profile: Path):
    """A browser context in a fresh profile (`--user-data-dir`), downloads accepted."""
    need_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            str(profile), executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS, accept_downloads=True,
            viewport={"width": 1300, "height": 900}, env={k: v for k, v in os.environ.items()
                                                          if not k.lower().endswith("_proxy")})
        try:
            yield ctx
        finally:
            ctx.close()


# In the page: did any recorded script, event handler or javascript: URL run or become live markup?
NO_SCRIPT_RAN = """() => ({
  pwned: window.__pwned === undefined ? null : window.__pwned,
  scripts: Array.from(document.scripts).map(s => s.getAttribute('src')),
  handlers: Array.from(document.querySelectorAll('*')).filter(el =>
      Array.from(el.attributes).some(a => a.name.toLowerCase().startsWith('on'))).length,
  jsLinks: Array.from(document.querySelectorAll('[href],[src],[action]')).filter(el =>
      /^\\s*javascript:/i.test(el.getAttribute('href') || el.getAttribute('src') || el.getAttribute('action') || '')).length,
  foreign: Array.from(document.querySelectorAll('img,svg,iframe,object,embed')).filter(el => !el.closest('svg.icon')).length,
})"""
