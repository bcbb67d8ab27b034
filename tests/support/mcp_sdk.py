"""The official MCP Python SDK for end-to-end tests, in a venv of its own.

The SDK needs newer httpx, starlette and anyio than mitmproxy 11.0.2 allows in wiretrail's
venv, so it lives in `.cache/venvs/mcp-<version>` in the checkout (or $WIRETRAIL_VENV_CACHE),
made once (under a lock, so parallel tests make it once) with one pip resolver pass.

- `McpServer`: tests/support/mcp_server_app.py over Streamable HTTP (/mcp) or the HTTP+SSE
  transport (/sse), real TLS on 127.0.0.1; its log is the ground truth of what it received and
  sent (`log()`, `received()`, `sent()`).
- `run_client(...)`: tests/support/mcp_client_app.py, one scenario, its JSON document back;
  `client_running(...)` runs it in the background, `finish(proc)` reads its document.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

MCP_VERSION = "1.30.0"  # the newest 1.x: FastMCP, Streamable HTTP with the GET stream, HTTP+SSE, elicitation
REPO_ROOT = Path(__file__).resolve().parents[2]
SUPPORT = Path(__file__).resolve().parent
SERVER_APP = SUPPORT / "mcp_server_app.py"
CLIENT_APP = SUPPORT / "mcp_client_app.py"


def venv_dir() -> Path:
    base = Path(os.environ.get("WIRETRAIL_VENV_CACHE") or REPO_ROOT / ".cache" / "venvs")
    return base / f"mcp-{MCP_VERSION}"


def python() -> Path:
    """The SDK venv's python, made if it is not yet. Fails if pip cannot install the SDK."""
    venv = venv_dir()
    py = venv / "bin" / "python"
    ready = venv / ".installed"
    if ready.exists():
        return py
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".mcp-{MCP_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not ready.exists():
            base = getattr(sys, "_base_executable", None) or sys.executable
            subprocess.run([base, "-m", "venv", "--clear", str(venv)], check=True, capture_output=True, timeout=300)
            proc = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                                   f"mcp=={MCP_VERSION}"], capture_output=True, text=True, timeout=900)
            assert proc.returncode == 0, f"pip could not install mcp=={MCP_VERSION}:\n{proc.stdout}\n{proc.stderr}"
            ready.write_text(MCP_VERSION + "\n")
    return py


def clean_env(**extra: str) -> dict:
    """The environment without proxies (the tests choose) and with `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def read_log(path) -> list[dict]:
    """A test server's JSON-lines log, whole lines only: a long line reaches the file in more than one
    write, so the text after the last newline may still be being written."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().split("\n")[:-1] if line.strip()]


class McpServer:
    """tests/support/mcp_server_app.py in its own process. `transport`: "streamable-http" or "sse"."""

    def __init__(self, workdir: Path, test_ca, transport: str, *, secret: str = "", name: str = "server",
                 resumable: bool = False):
        self.resumable = resumable
        self.workdir = workdir
        self.test_ca = test_ca
        self.transport = transport
        self.secret = secret
        self.log_path = workdir / f"{name}.log.jsonl"
        self.err_path = workdir / f"{name}.stderr"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def path(self) -> str:
        return "/mcp" if self.transport == "streamable-http" else "/sse"

    @property
    def url(self) -> str:
        return self.base_url + self.path

    def start(self, timeout: float = 60.0) -> "McpServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        py = python()
        for _ in range(3):
            self.port = _free_port()
            cmd = [str(py), str(SERVER_APP), "--transport", self.transport, "--port", str(self.port),
                   "--cert", str(self.test_ca.server_cert_path), "--key", str(self.test_ca.server_key_path),
                   "--log", str(self.log_path)] + (["--resumable"] if self.resumable else [])
            with open(self.err_path, "ab") as err:
                self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT,
                                             env=clean_env(MCP_TEST_SECRET=self.secret), start_new_session=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and self.proc.poll() is None:
                if _accepts(self.port):
                    return self
                time.sleep(0.05)
            self.stop()
            if "address already in use" not in self.stderr().lower():
                break
        raise RuntimeError(f"the MCP server did not start:\n{self.stderr()}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def stderr(self) -> str:
        try:
            return self.err_path.read_text(errors="replace")
        except OSError:
            return ""

    def log(self) -> list[dict]:
        return read_log(self.log_path)

    def received(self) -> list[dict]:
        """Every JSON-RPC message that reached the server, in order."""
        return messages_received(self.log())

    def sent(self) -> list[dict]:
        """Every JSON-RPC message the server sent (in SSE events or JSON bodies), in order."""
        return messages_sent(self.log())


def _rpc(data):
    items = data if isinstance(data, list) else [data]
    return [m for m in items if isinstance(m, dict) and m.get("jsonrpc") == "2.0"]


def messages_received(log: list[dict]) -> list[dict]:
    out = []
    for ev in log:
        text = ev.get("body") if ev.get("ev") == "request" else ev.get("line") if ev.get("ev") == "stdin" else None
        if text:
            try:
                out.extend(_rpc(json.loads(text)))
            except ValueError:
                pass
    return out


def messages_sent(log: list[dict]) -> list[dict]:
    out = []
    buffers: dict = {}
    for ev in log:
        if ev.get("ev") == "stdout":
            out.extend(_rpc(json.loads(ev["line"])))
        elif ev.get("ev") == "chunk":
            buffers[ev["n"]] = buffers.get(ev["n"], "") + ev["data"]
            text = buffers[ev["n"]]
            if text.lstrip().startswith(("{", "[")):
                try:
                    out.extend(_rpc(json.loads(text)))
                    buffers[ev["n"]] = ""
                except ValueError:
                    pass
                continue
            # SSE: complete events only (the rest waits for the next chunk)
            text = text.replace("\r\n", "\n")
            *events, rest = text.split("\n\n")
            buffers[ev["n"]] = rest
            for event in events:
                data = "\n".join(line[5:].lstrip(" ") if line.startswith("data:") else ""
                                 for line in event.split("\n") if line.startswith("data:"))
                if data:
                    try:
                        out.extend(_rpc(json.loads(data)))
                    except ValueError:
                        pass
    return out


def client_command(transport: str, url: str | None = None, *, proxy: str | None = None, ca: Path | None = None,
                   headers: dict | None = None, steps: str | None = None, command: list[str] | None = None) -> list[str]:
    cmd = [str(python()), str(CLIENT_APP), "--transport", transport]
    if url:
        cmd += ["--url", url]
    if proxy:
        cmd += ["--proxy", proxy]
    if ca:
        cmd += ["--ca", str(ca)]
    for k, v in (headers or {}).items():
        cmd += ["--header", f"{k}: {v}"]
    if steps is not None:
        cmd += ["--steps", steps]
    if command:
        cmd += ["--", *command]
    return cmd


def client_document(returncode: int, stdout: str, stderr: str) -> dict:
    try:
        doc = json.loads(stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        doc = {"fatal": f"no JSON from the client (exit {returncode})"}
    doc["returncode"] = returncode
    doc["stderr"] = stderr[-5000:]
    return doc


def run_client(transport: str, url: str | None = None, *, env: dict | None = None, timeout: float = 120.0,
               **kw) -> dict:
    """Run one scenario; the client's JSON document (with "returncode" and "stderr")."""
    proc = subprocess.run(client_command(transport, url, **kw), capture_output=True, text=True, timeout=timeout,
                          env=env or clean_env())
    return client_document(proc.returncode, proc.stdout, proc.stderr)


@contextlib.contextmanager
def client_running(transport: str, url: str | None = None, *, env: dict | None = None, **kw):
    """The client running in the background (killed on the way out); `finish(proc)` gives its document."""
    proc = subprocess.Popen(client_command(transport, url, **kw), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env or clean_env())
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def finish(proc: subprocess.Popen, timeout: float = 90.0) -> dict:
    out, err = proc.communicate(timeout=timeout)
    return client_document(proc.returncode, out, err)


def wait_for(condition, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def step(doc: dict, name: str) -> dict:
    found = [s for s in doc.get("steps", []) if s["step"] == name]
    assert found, f"the client did not run {name}: {json.dumps(doc)[:3000]}"
    return found[0]


def tool_text(doc: dict, name: str) -> str:
    result = step(doc, name).get("result") or {}
    return "\n".join(c.get("text", "") for c in result.get("content", []))
