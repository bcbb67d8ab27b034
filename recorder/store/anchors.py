"""Anchors: the ledger's signed head, sent outside the store as the ledger grows.

Whoever can write the store can cut the ledger's newest entries together with the files
they name; what is left is a shorter ledger that verifies. An anchor is a copy of the
head kept where that person cannot reach: a file on another mount, syslog, an HTTP
endpoint (docs/integrity.md). `wiretrail verify --anchors FILE` then requires that the
ledger still holds every anchored entry.

One anchor is one JSON line (docs/format.md §11):
  {"wiretrail_anchor":1,"ledger":ID,"seq":N,"head":SHA256,"t":TYPE,"ts":T,"host":H,"dir":D,
   "key":KID,"sig":BASE64}
`ledger` is the hash of the ledger's first line (recorder.store.ledger.ledger_id), `head` the hash
of its line `seq`; `sig` signs ANCHOR_CONTEXT + ledger + "\n" + seq + "\n" + head.

The writer thread only hands the newest durable head over (`Anchorer.offer`, no I/O); the
sinks are written on a thread of their own, so a slow or hung sink never holds a record.
Heads are coalesced: the newest one covers every entry before it (the ledger is a chain).
"""
from __future__ import annotations

import dataclasses
import errno
import os
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from recorder.store.signing import Signer, Verifier

ANCHOR_CONTEXT = b"wiretrail-anchor-v1\n"
MARK = "wiretrail_anchor"
_MARK_BYTES = b'{"' + MARK.encode() + b'"'
REMIND_EVERY = 60.0  # seconds between log lines while a sink keeps failing
MAX_BACKOFF = 30.0
SYSLOG_FACILITIES = {
    "kern": 0, "user": 1, "daemon": 3, "auth": 4, "syslog": 5, "authpriv": 10,
    **{f"local{i}": 16 + i for i in range(8)},
}


class AnchorError(OSError):
    """A sink did not take an anchor. The message says why, never a secret."""


def signed_bytes(ledger: str, seq: int, head: str) -> bytes:
    return ANCHOR_CONTEXT + ledger.encode() + b"\n" + str(seq).encode() + b"\n" + head.encode()


def encode(ledger: str, seq: int, head: str, t: str | None, ts: float, host: str, store: str,
           signer: Signer | None) -> bytes:
    a = {MARK: 1, "ledger": ledger, "seq": seq, "head": head, "t": t, "ts": ts, "host": host, "dir": store,
         "key": signer.key_id if signer else None}
    if signer is not None:
        a["sig"] = signer.sign(signed_bytes(ledger, seq, head))
    return orjson.dumps(a)


# -- sinks -----------------------------------------------------------------------------------


class FileSink:
    """Appends each anchor as a line and fsyncs it. Meant for a file on another mount (an
    append-only NFS export, a `chattr +a` file another account owns)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.name = f"file {self.path}"
        self.fd = -1

    def send(self, line: bytes) -> None:
        try:
            if self.fd < 0:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
            data = line + b"\n"
            if os.write(self.fd, data) != len(data):
                raise OSError(errno.ENOSPC, "short write")
            os.fsync(self.fd)
        except OSError as e:
            self.close()
            raise AnchorError(f"cannot append to {self.path}: {e.strerror or e}") from None

    def close(self) -> None:
        if self.fd >= 0:
            try:
                os.close(self.fd)
            except OSError:
                pass
            self.fd = -1


class SyslogSink:
    """One syslog message per anchor: to a local socket ("/dev/log") or "udp:HOST:PORT"."""

    def __init__(self, address: str, facility: str, host: str):
        self.address = address
        self.name = f"syslog {address}"
        self.pri = SYSLOG_FACILITIES[facility] * 8 + 6  # severity: info
        self.host = host
        self.sock: socket.socket | None = None

    def _connect(self) -> socket.socket:
        if self.address.startswith("udp:"):
            host, _, port = self.address[len("udp:"):].rpartition(":")
            host = host.strip("[]")
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.connect((host, int(port)))
            return s
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
            s = socket.socket(socket.AF_UNIX, kind)
            try:
                s.connect(self.address)
                return s
            except OSError as e:
                s.close()
                if e.errno != errno.EPROTOTYPE:
                    raise
        raise OSError(errno.EPROTOTYPE, "not a datagram or stream socket")

    def send(self, line: bytes) -> None:
        stamp = time.strftime("%b %d %H:%M:%S").encode()
        host = b" " + self.host.encode() if self.address.startswith("udp:") else b""
        msg = b"<%d>%s%s wiretrail[%d]: %s" % (self.pri, stamp, host, os.getpid(), line)
        try:
            if self.sock is None:
                self.sock = self._connect()
            if self.sock.type == socket.SOCK_STREAM:
                self.sock.sendall(msg + b"\n")
            else:
                self.sock.send(msg)
        except OSError as e:
            self.close()
            raise AnchorError(f"cannot send to syslog at {self.address}: {e.strerror or e}") from None

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirected POST would be re-sent as a GET and look like success


class HttpSink:
    """POSTs each anchor as application/json; any 2xx answer is success."""

    def __init__(self, url: str, token: str | None, timeout: float):
        self.url = url
        self.name = f"http {url}"
        self.token = token
        self.timeout = timeout
        self.opener = urllib.request.build_opener(_NoRedirect)

    def send(self, line: bytes) -> None:
        headers = {"content-type": "application/json", "user-agent": "wiretrail-anchor"}
        if self.token:
            headers["authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(self.url, data=line, headers=headers, method="POST")
        try:
            with self.opener.open(req, timeout=self.timeout) as resp:
                resp.read(65536)
                status = resp.status
        except urllib.error.HTTPError as e:
            status = e.code
        except (urllib.error.URLError, OSError, ValueError) as e:
            reason = getattr(e, "reason", e)
            raise AnchorError(f"cannot POST to {self.url}: {getattr(reason, 'strerror', None) or reason}") from None
        if not 200 <= status < 300:
            raise AnchorError(f"{self.url} answered HTTP {status}")

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class AnchorSpec:
    """Where anchors go: [anchors] of the config, secrets read. Plain data, so it travels to
    the writer process (recorder/store/writer_child.py) as it is."""

    file: Path | None = None
    syslog: str | None = None
    syslog_facility: str = "authpriv"
    http: str | None = None
    http_token: str | None = dataclasses.field(default=None, repr=False)  # a secret: never shown
    interval: float = 1.0
    timeout: float = 5.0
    fail_closed: bool = False
    max_lag: float = 60.0

    @classmethod
    def from_config(cls, anchors) -> "AnchorSpec":
        """From config.AnchorsConfig; reads the http token (a SecretRef) now."""
        return cls(file=anchors.file, syslog=anchors.syslog, syslog_facility=anchors.syslog_facility,
                   http=anchors.http, http_token=anchors.http_token.read() if anchors.http_token else None,
                   interval=anchors.interval, timeout=anchors.timeout, fail_closed=anchors.fail_closed,
                   max_lag=anchors.max_lag)

    @property
    def any(self) -> bool:
        return bool(self.file or self.syslog or self.http)

    def sinks(self, host: str) -> list:
        out: list = []
        if self.file:
            out.append(FileSink(self.file))
        if self.syslog:
            out.append(SyslogSink(self.syslog, self.syslog_facility, host))
        if self.http:
            out.append(HttpSink(self.http, self.http_token, self.timeout))
        return out


# -- the anchor thread -------------------------------------------------------------------------


class _SinkState:
    __slots__ = ("sink", "sent", "failing_since", "error", "next_try", "fails", "reminded")

    def __init__(self, sink):
        self.sink = sink
        self.sent: int = -1  # seq of the newest head it took
        self.failing_since: float | None = None  # monotonic
        self.error: str | None = None
        self.next_try = 0.0
        self.fails = 0
        self.reminded = 0.0


class Anchorer:
    """Sends the newest durable ledger head to every sink, on its own thread."""

    def __init__(self, spec: AnchorSpec, *, signer: Signer | None, store: Path, host: str,
                 on_event: Callable[[str], None], alarm: Callable[[str], object]):
        self.spec = spec
        self.signer = signer
        self.store = str(Path(store).absolute())
        self.host = host
        self.on_event = on_event
        self.alarm = alarm  # wraps a text so that it is logged as an error
        self.states = [_SinkState(s) for s in spec.sinks(host)]
        self._cond = threading.Condition()
        self._newest: tuple[str, int, str, str | None] | None = None
        self._last_send = float("-inf")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="wiretrail-anchors", daemon=True)

    # -- the writer thread's side ----------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def offer(self, ledger: str, seq: int, head: str, t: str | None) -> None:
        """The ledger is durable up to `seq`. Costs a lock and a notify, no I/O."""
        with self._cond:
            if self._newest is None or seq > self._newest[1] or ledger != self._newest[0]:
                self._newest = (ledger, seq, head, t)
                self._cond.notify()

    def refusal(self) -> str | None:
        """With fail_closed: why records must be refused now (a sink failing longer than
        max_lag), else None."""
        if not self.spec.fail_closed:
            return None
        now = time.monotonic()
        for st in self.states:
            since = st.failing_since
            if since is not None and now - since >= self.spec.max_lag:
                return (f"no ledger head reached the anchor sink {st.sink.name} for {now - since:.0f} s "
                        f"({st.error}); [anchors] fail_closed = true refuses traffic until it takes one")
        return None

    def stop(self, timeout: float) -> None:
        """Send the newest head to every sink that lacks it (one last try each), then end."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.on_event(self.alarm(f"anchors: the last ledger head was not anchored within {timeout:.0f} s "
                                     "at shutdown: a sink is hanging"))

    # -- the anchor thread ---------------------------------------------------------------------

    def _due(self, now: float) -> tuple[list[_SinkState], float | None]:
        """Sinks to send to now, and how long until the next one is due (None: none waits)."""
        newest = self._newest
        if newest is None:
            return [], None
        due, wake = [], None
        for st in self.states:
            if st.sent >= newest[1]:
                continue
            at = max(st.next_try, self._last_send + self.spec.interval)
            if self._stopping or at <= now:
                due.append(st)
            else:
                wake = at - now if wake is None else min(wake, at - now)
        return due, wake

    def _run(self) -> None:
        try:
            while True:
                with self._cond:
                    while True:
                        due, wake = self._due(time.monotonic())
                        if due or self._stopping:
                            break
                        self._cond.wait(wake)
                    newest, stopping = self._newest, self._stopping
                if due:
                    self._send(newest, due, final=stopping)
                if stopping:
                    for st in self.states:
                        st.sink.close()
                    return
        except Exception as e:  # a bug must not pass silently: anchoring would stop unnoticed
            self.on_event(self.alarm(f"anchors: the anchor thread failed ({type(e).__name__}: {e}); no more ledger "
                                     "heads are anchored until the gateway restarts"))

    def _send(self, newest, due: list[_SinkState], final: bool) -> None:
        ledger, seq, head, t = newest
        line = encode(ledger, seq, head, t, time.time(), self.host, self.store, self.signer)
        self._last_send = time.monotonic()
        for st in due:
            try:
                st.sink.send(line)
            except AnchorError as e:
                self._failed(st, seq, str(e), final)
                continue
            now = time.monotonic()
            if st.failing_since is not None:
                self.on_event(f"anchors: {st.sink.name} works again after {now - st.failing_since:.0f} s; it has "
                              f"the ledger head seq {seq}, which covers every entry before it")
            st.sent, st.failing_since, st.error, st.fails = seq, None, None, 0

    def _failed(self, st: _SinkState, seq: int, error: str, final: bool) -> None:
        now = time.monotonic()
        first = st.failing_since is None
        if first:
            st.failing_since = now
        st.error = error
        st.fails += 1
        st.next_try = now + min(MAX_BACKOFF, 2.0 ** (st.fails - 1))
        behind = f"ledger entries after seq {st.sent} are" if st.sent >= 0 else "no ledger entry is"
        if final:
            self.on_event(self.alarm(f"ANCHOR FAILED at shutdown: {error}; the last ledger head (seq {seq}) was not "
                                     f"anchored to {st.sink.name}: {behind} not anchored outside the store"))
        elif first:
            st.reminded = now
            self.on_event(self.alarm(f"ANCHOR FAILED: {error}; {behind} not anchored outside the store (a rollback of "
                                     f"the ledger would not show against {st.sink.name}); still recording, retrying"
                                     + ("; traffic is refused if it lasts "
                                        f"{self.spec.max_lag:g} s ([anchors] fail_closed)" if self.spec.fail_closed
                                        else "")))
        elif now - st.reminded >= REMIND_EVERY:
            st.reminded = now
            self.on_event(self.alarm(f"ANCHOR STILL FAILING for {now - st.failing_since:.0f} s: {error}; {behind} "
                                     f"not anchored to {st.sink.name}"))


# -- reading anchors back (wiretrail verify) -----------------------------------------------------


@dataclass
class Anchor:
    where: str  # FILE:LINE
    ledger: str
    seq: int
    head: str
    t: str | None
    ts: float | None
    host: str | None
    dir: str | None
    key: str | None
    sig: str | None

    def check(self, verifiers: list[Verifier]) -> str | None:
        """None when signed by one of `verifiers`, else what is wrong."""
        if self.sig is None:
            return "is not signed (the gateway had no signing key, or the anchor was forged)"
        v = next((x for x in verifiers if x.key_id == self.key), None)
        if v is None:
            return f"is signed by key {self.key}, not by the --key given"
        if not v.verify(signed_bytes(self.ledger, self.seq, self.head), self.sig):
            return "signature does not verify: the anchor was forged or altered"
        return None


def _hex64(x) -> bool:
    return isinstance(x, str) and len(x) == 64 and all(c in "0123456789abcdef" for c in x)


def read_anchors(path: str | os.PathLike) -> tuple[list[Anchor], list[str]]:
    """The anchors in a file: the file sink's lines, an HTTP collector's JSON lines, or a
    syslog export (each anchor is the JSON object at the end of its line). Lines without
    an anchor are skipped. Returns (anchors, problems); a problem names FILE:LINE."""
    anchors: list[Anchor] = []
    problems: list[str] = []
    with open(path, "rb") as fh:
        for n, raw in enumerate(fh, 1):
            i = raw.find(_MARK_BYTES)
            if i < 0:
                continue
            where = f"{path}:{n}"
            try:
                a = orjson.loads(raw[i:].strip())
            except orjson.JSONDecodeError:
                problems.append(f"{where}: an anchor that is not valid JSON (cut or altered)")
                continue
            seq, sig, key = a.get("seq"), a.get("sig"), a.get("key")
            if (a.get(MARK) != 1 or not _hex64(a.get("ledger")) or not _hex64(a.get("head"))
                    or not isinstance(seq, int) or isinstance(seq, bool) or seq < 0
                    or not isinstance(sig, (str, type(None))) or not isinstance(key, (str, type(None)))):
                problems.append(f"{where}: not a well-formed anchor (ledger, seq, head, key, sig)")
                continue
            ts = a.get("ts")
            anchors.append(Anchor(where, a["ledger"], seq, a["head"], a.get("t"),
                                  ts if isinstance(ts, (int, float)) else None, a.get("host"), a.get("dir"), key, sig))
    return anchors, problems
