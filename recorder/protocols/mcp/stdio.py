"""MCP over stdio, recorded: the relay `wiretrail mcp-stdio -- CMD ARGS...` runs.

An MCP client launches the server as a child process and speaks JSON-RPC over its stdin and
stdout, one message per line. mcp-stdio stands in between: it runs CMD and copies the client's
bytes to the server's stdin and the server's stdout to the client, untouched, and records
each line in the caller's session:

- a client line is recorded before it is forwarded (the recorder's ack); one that cannot be
  recorded is not forwarded: a request among them is answered with a JSON-RPC error that says
  why, and the session ends (fail closed, as the gateway's 503);
- a server line is forwarded as soon as it is complete and recorded beside it; once storage
  fails, nothing more is forwarded (the rest would be unrecorded);
- bytes are forwarded line by line (a message is a line); a line longer than MAX_LINE is
  recorded and forwarded in parts;
- the server's stderr is the wrapper's stderr, not recorded (it is the server's log, not MCP).

Records: `mcp.open` (the command, pid), `mcp.message` (`from` client or server, `n` per
direction, `body` the line without its newline, masked), `mcp.close` (who ended it, exit
status, sizes). docs/format.md describes them; recorder/protocols/mcp/session.py reads them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

from recorder.store.bodies import BodyBytes
from recorder.protocols.mcp.jsonrpc import REQUEST, kind, rpc_messages

MAX_LINE = 16 << 20  # a line longer than this is recorded and forwarded in parts
READ_SIZE = 1 << 16
ACK_TIMEOUT = 30.0  # seconds a client line waits for its record (storage.write_timeout where given)
NOT_RECORDED = ("wiretrail could not record this MCP message, so it was not forwarded to the server "
                "and this session ends. The store's operator has been told; retry later.")


class RecordFailed(Exception):
    pass


@dataclass
class Counts:
    messages: dict = field(default_factory=lambda: {"client": 0, "server": 0})
    size: dict = field(default_factory=lambda: {"client": 0, "server": 0})


class StdioRecorder:
    """Records one stdio MCP session (a flow of `session`) through its writer."""

    def __init__(self, session, *, masker=None, max_body: int = 0, ack_timeout: float = ACK_TIMEOUT):
        self.session = session
        self.masker = masker
        self.max_body = max_body
        self.ack_timeout = ack_timeout
        self.flow = str(uuid.uuid4())
        self.counts = Counts()
        self.failed: BaseException | None = None
        self._lock = threading.Lock()  # Session.record is called from two relay threads

    def _record(self, rtype: str, fields: dict, wait: bool) -> None:
        done = threading.Event() if wait else None
        result: list = []

        def ack(err):
            result.append(err)
            done.set()

        with self._lock:
            if self.session.closed:
                raise RecordFailed("the session is closed")
            self.session.record(rtype, dict(fields, flow=self.flow), ack=ack if wait else None)
        if wait:
            if not done.wait(self.ack_timeout):
                raise RecordFailed(f"the record was not written within {self.ack_timeout:g} s")
            if result[0] is not None:
                raise RecordFailed(str(result[0]))

    def open(self, command: list[str], pid: int, name: str | None, cwd: str) -> None:
        mask = self.masker.mask_text if self.masker is not None else (lambda s: s)
        self._record("mcp.open", {"name": name, "command": [mask(a) for a in command], "pid": pid,
                                  "parent_pid": os.getppid(), "cwd": mask(cwd)}, wait=True)

    def message(self, sender: str, line: bytes, *, wait: bool, partial: bool = False) -> None:
        n = self.counts.messages[sender]
        self.counts.messages[sender] += 1
        self.counts.size[sender] += len(line)
        fields = {"from": sender, "n": n,
                  "body": BodyBytes(line, None, self.max_body, masker=self.masker, content_type="application/json")}
        if partial:
            fields["partial"] = True
        self._record("mcp.message", fields, wait)

    def close(self, by: str, exit_status: int | None, duration: float, message: str | None = None) -> None:
        fields = {"by": by, "exit": exit_status, "size": dict(self.counts.size),
                  "messages": dict(self.counts.messages), "duration_ms": round(duration * 1000, 3)}
        if message:
            fields["message"] = self.masker.mask_text(message) if self.masker is not None else message
        try:
            self._record("mcp.close", fields, wait=True)
        except RecordFailed:
            pass  # the session's file says it was not closed cleanly


def error_reply(line: bytes, message: str, code: int = -32603) -> bytes:
    """JSON-RPC error lines for the requests in `line` (nothing for notifications and answers)."""
    try:
        parsed = json.loads(line)
    except ValueError:
        return b""
    out = b""
    for msg in rpc_messages(parsed):
        if kind(msg) == REQUEST:
            out += json.dumps({"jsonrpc": "2.0", "id": msg["id"],
                               "error": {"code": code, "message": message}}).encode() + b"\n"
    return out


def complete_lines(buf: bytes) -> tuple[bytes, bytes, list[tuple[bytes, bool]]]:
    """(the complete lines to pass on, what stays buffered, each line and whether it is a part of
    a longer one). A line longer than MAX_LINE is passed on in parts."""
    cut = buf.rfind(b"\n") + 1
    if cut == 0:
        if len(buf) <= MAX_LINE:
            return b"", buf, []
        return buf, b"", [(buf, True)]
    ready = buf[:cut]
    return ready, buf[cut:], [(line, False) for line in ready[:-1].split(b"\n")]


class Relay:
    """Runs `command` and relays stdin/stdout between the caller and it, recording each line."""

    def __init__(self, command: list[str], recorder: StdioRecorder, *, fail_closed: bool = True,
                 stdin_fd: int = 0, stdout_fd: int = 1, env: dict | None = None, cwd: str | None = None,
                 name: str | None = None, log=None):
        self.command = command
        self.recorder = recorder
        self.fail_closed = fail_closed
        self.stdin_fd = stdin_fd
        self.stdout_fd = stdout_fd
        self.env = env
        self.cwd = cwd or os.getcwd()
        self.name = name
        self.log = log or (lambda text: None)
        self.proc: subprocess.Popen | None = None
        self._out_lock = threading.Lock()  # whole lines to the caller's stdout, from two threads
        self._stop = threading.Event()
        self._stdin_closed = threading.Event()
        self._signal: int | None = None
        self._failure: str | None = None
        self._started = 0.0

    # -- the two directions ----------------------------------------------------------------

    def _write_out(self, data: bytes) -> bool:
        with self._out_lock:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.stdout_fd, view):]
                return True
            except OSError:  # the client is gone
                self._stop.set()
                return False

    def _fail(self, why: str) -> None:
        if self._failure is None:
            self._failure = why
            self.log(f"cannot record ({why}): " + ("the session ends; nothing more is forwarded" if self.fail_closed
                                                   else "forwarding UNRECORDED (storage.fail_closed = false)"))
        if self.fail_closed:
            self._stop.set()

    def _client_to_server(self) -> None:
        buf = b""
        sink = self.proc.stdin.fileno()
        try:
            while not self._stop.is_set():
                data = os.read(self.stdin_fd, READ_SIZE)
                if not data:
                    break
                buf += data
                ready, buf, parts = complete_lines(buf)
                if not ready:
                    continue
                if not self._record_client(parts, ready):
                    return
                if not self._forward(sink, ready):
                    break
            if buf and self._record_client([(buf, False)], buf):
                self._forward(sink, buf)
        except OSError:
            pass
        finally:
            self._stdin_closed.set()
            try:
                self.proc.stdin.close()
            except OSError:
                pass

    def _record_client(self, parts: list[tuple[bytes, bool]], raw: bytes) -> bool:
        """Record the client's lines (the last one waited for: the writer writes in order)."""
        try:
            for k, (line, partial) in enumerate(parts):
                self.recorder.message("client", line, wait=k == len(parts) - 1, partial=partial)
            return True
        except RecordFailed as e:
            self._fail(str(e))
            if not self.fail_closed:
                return True
            reply = b"".join(error_reply(line, f"wiretrail: {NOT_RECORDED}") for line in raw.split(b"\n") if line)
            if reply:
                self._write_out(reply)
            return False

    def _forward(self, sink: int, data: bytes) -> bool:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(sink, view):]
            return True
        except OSError:  # the server is gone
            return False

    def _server_to_client(self) -> None:
        buf = b""
        source = self.proc.stdout.fileno()
        try:
            while True:
                data = os.read(source, READ_SIZE)
                if not data:
                    break
                if self._stop.is_set() and self.fail_closed:
                    break
                buf += data
                ready, buf, parts = complete_lines(buf)
                if not ready:
                    continue
                if not self._write_out(ready):
                    break
                self._record_server(parts)
            if buf and not (self._stop.is_set() and self.fail_closed) and self._write_out(buf):
                self._record_server([(buf, False)])
        except OSError:
            pass

    def _record_server(self, parts) -> None:
        try:
            for line, partial in parts:
                self.recorder.message("server", line, wait=False, partial=partial)
        except RecordFailed as e:
            self._fail(str(e))
        if self.recorder.failed is not None:
            self._fail(str(self.recorder.failed))

    # -- the process ----------------------------------------------------------------------

    def _on_signal(self, signum, frame) -> None:
        self._signal = signum
        self._stop.set()

    def run(self) -> int:
        """Run the server until it exits, the client goes, or a signal; returns the exit status
        for mcp-stdio (the server's, 128 + a signal, or 1 when recording failed)."""
        self._started = time.monotonic()
        try:
            self.proc = subprocess.Popen(self.command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=None, env=self.env, cwd=self.cwd, bufsize=0)
        except OSError as e:
            self.log(f"cannot run {self.command[0]}: {e.strerror or e}")
            self.recorder.close("error", None, 0.0, f"cannot run {self.command[0]}: {e.strerror or e}")
            return 127
        try:
            self.recorder.open(self.command, self.proc.pid, self.name, self.cwd)
        except RecordFailed as e:
            self.log(f"cannot record ({e}): the server is stopped before anything reaches it")
            self._terminate()
            return 1
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            try:
                signal.signal(sig, self._on_signal)
            except ValueError:  # not the main thread (tests)
                pass
        c2s = threading.Thread(target=self._client_to_server, name="mcp-stdio client", daemon=True)
        s2c = threading.Thread(target=self._server_to_client, name="mcp-stdio server", daemon=True)
        c2s.start()
        s2c.start()
        while self.proc.poll() is None and not self._stop.is_set():
            try:
                self.proc.wait(0.2)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self._terminate()
        s2c.join(5.0)  # what the server wrote before it went
        status = self.proc.returncode
        duration = time.monotonic() - self._started
        if self._signal is not None:
            by, code = "signal", 128 + self._signal
            message = f"mcp-stdio got {signal.Signals(self._signal).name}"
        elif self._failure is not None and self.fail_closed:
            by, code, message = "error", 1, f"recording failed: {self._failure}"
        elif self._stdin_closed.is_set():
            by, code, message = "client", status, None
        else:
            by, code, message = "server", status, None
        self.recorder.close(by, status, duration, message)
        return code if code is not None else 0

    def _terminate(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            self.proc.terminate()
            self.proc.wait(5.0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5.0)
        except OSError:
            pass
