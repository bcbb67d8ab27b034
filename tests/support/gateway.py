"""A real mitmdump process running the wiretrail gateway, for end-to-end tests.

It listens on 127.0.0.1 in two modes at once: regular (HTTPS_PROXY style) and reverse
to the fake upstream. mitmdump trusts the test CA for upstream TLS, keeps its own CA in
a temporary confdir, and writes its log to a file that failing tests show.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from recorder.store.live import process_running
from tests.support.artifacts import Artifacts

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY_SCRIPT = REPO_ROOT / "addons" / "gateway.py"
BIN_DIR = Path(sys.executable).parent  # the venv running the tests
MITMDUMP = BIN_DIR / "mitmdump"
WIRETRAIL = BIN_DIR / "wiretrail"


def child_pids(pid: int) -> list[int]:
    """The processes `pid` started that still run (from /proc; empty if it has none)."""
    out: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


class GatewayStartError(RuntimeError):
    pass


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(n: int) -> list[int]:
    """n distinct free ports: the sockets stay bound until all are picked, so the kernel
    cannot hand the same port out twice."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (str, Path)):
        s = str(v).replace("\\", "\\\\").replace('"', '\\"')
        return f'"{s}"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} as TOML")


def gateway_toml(store_dir: Path, sections: dict | None = None, extra: str = "") -> str:
    """The gateway config: storage in `store_dir`, no identity, unregistered hosts recorded.

    `sections` overrides or adds keys, e.g. {"capture": {"chunk_interval": 0.05}};
    `extra` is raw TOML appended (for [[connections]] tables).
    """
    merged: dict[str, dict] = {
        "storage": {"dir": store_dir},
        "identity": {"mode": "none"},
        "policy": {"unregistered": "record"},
    }
    for name, keys in (sections or {}).items():
        merged.setdefault(name, {}).update(keys)
    out = []
    for name, keys in merged.items():
        out.append(f"[{name}]")
        out += [f"{k} = {_toml_value(v)}" for k, v in keys.items()]
        out.append("")
    return "\n".join(out) + extra


class Gateway:
    """One mitmdump process. Use `start()`, then `proxy_url` / `reverse_url`, then `stop()`."""

    def __init__(
        self,
        workdir: Path,
        upstream_url: str,
        upstream_ca: Path,
        *,
        config: dict | None = None,
        extra_toml: str = "",
        script: Path | None = GATEWAY_SCRIPT,
        extra_args: tuple[str, ...] = (),
    ):
        self.workdir = workdir
        self.upstream_url = upstream_url
        self.upstream_ca = upstream_ca
        self.confdir = workdir / "mitmproxy"
        self.store_dir = workdir / "store"
        self.config_path = workdir / "gateway.toml"
        self.log_path = workdir / "mitmdump.log"
        self.script = script
        self.extra_args = tuple(extra_args)
        self.config_text = gateway_toml(self.store_dir, config, extra_toml)
        self.proxy_port = 0
        self.reverse_port = 0
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        self.upstream = None  # the FakeUpstream behind it, when a test wants finish() to check it

    # -- addresses -----------------------------------------------------------------------

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"

    @property
    def reverse_url(self) -> str:
        return f"http://127.0.0.1:{self.reverse_port}"

    @property
    def ca_path(self) -> Path:
        """The gateway's CA certificate, which proxied clients trust."""
        return self.confdir / "mitmproxy-ca-cert.pem"

    # -- lifecycle ------------------------------------------------------------------------

    def command(self) -> list[str]:
        cmd = [str(MITMDUMP)]
        if self.script is not None:
            cmd += ["-s", str(self.script)]
        cmd += [
            "--listen-host", "127.0.0.1",
            "--mode", f"regular@{self.proxy_port}",
            "--mode", f"reverse:{self.upstream_url}@{self.reverse_port}",
            "--set", f"confdir={self.confdir}",
            "--set", f"ssl_verify_upstream_trusted_ca={self.upstream_ca}",
        ]
        if self.script is not None:
            cmd += ["--set", f"wiretrail_config={self.config_path}"]
        return cmd + list(self.extra_args)

    def start(self, timeout: float = 30.0) -> "Gateway":
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.config_text)
        for attempt in range(3):  # a free port can be taken before mitmdump binds it
            self.proxy_port, self.reverse_port = free_ports(2)
            try:
                self._start_once(timeout)
                return self
            except GatewayStartError:
                log = self.log_text().lower()
                if attempt == 2 or ("already in use" not in log and "same address" not in log):
                    raise
        return self

    def _start_once(self, timeout: float) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
            env.pop(var, None)
        log = open(self.log_path, "ab")
        log.write(f"$ {' '.join(self.command())}\n".encode())
        log.flush()
        self.returncode = None
        self.proc = subprocess.Popen(
            self.command(),
            cwd=self.workdir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # a Ctrl-C on pytest does not hit it; signals go to it alone
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.returncode = self.proc.returncode
                raise GatewayStartError(
                    f"mitmdump exited with {self.proc.returncode} during start-up:\n{self.log_text()}"
                )
            if self.ca_path.exists() and _accepts(self.proxy_port) and _accepts(self.reverse_port):
                return
            time.sleep(0.05)
        self._kill()
        raise GatewayStartError(f"mitmdump did not listen within {timeout} s:\n{self.log_text()}")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send `sig` and wait for the exit. Returns the exit code (negative: killed by a signal)."""
        if self.proc is None:
            raise RuntimeError("the gateway was not started")
        if self.proc.poll() is None:
            helpers = child_pids(self.proc.pid)  # the writer process (storage.writer = "process")
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self._kill()
                raise AssertionError(
                    f"mitmdump did not exit within {timeout} s of {signal.Signals(sig).name}:\n{self.log_text()}"
                ) from None
            # Stopped means every process of the gateway is gone (the writer holds the ledger's lock).
            deadline = time.monotonic() + 10
            while any(process_running(p) for p in helpers):
                assert time.monotonic() < deadline, f"the gateway's writer process outlived it: {helpers}"
                time.sleep(0.01)
        self.returncode = self.proc.returncode
        return self.returncode

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"

    # -- what it recorded ----------------------------------------------------------------

    def artifacts(self) -> Artifacts:
        """Every session file in the store, read with recorder.forensics.reader (now, as it is)."""
        return Artifacts(self.store_dir)

    def verify_cli(self, *paths: Path) -> subprocess.CompletedProcess:
        """`wiretrail verify` on the store (or the given paths)."""
        return subprocess.run(
            [str(WIRETRAIL), "verify", *(str(p) for p in (paths or (self.store_dir,)))],
            capture_output=True,
            text=True,
            timeout=60,
        )
