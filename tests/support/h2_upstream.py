"""A real HTTP/2 upstream for end-to-end tests: TLS with ALPN h2, 127.0.0.1 only, on the
`h2` library that mitmproxy installs.

One thread reads each connection; each stream is answered by a handler on a thread of its
own, so a handler can send while the request body is still arriving (bidirectional
streaming, the way gRPC and Connect clients talk). Every stream is kept as an `H2Stream`,
the server's own log of what it received: headers, each DATA chunk as it came, trailers,
whether the request was complete (END_STREAM) and whether the peer reset it. Tests take
that log as the ground truth of what crossed the gateway.

Routes (the path decides; handlers are plain functions, `H2Upstream.route` adds more):
  /echo             the whole request body back once it is complete; request trailers
                    are echoed as response trailers prefixed "echo-"
  /bidi             response headers at once, then "echo:<chunk>" for each DATA chunk as
                    it arrives, and "end" once the request is complete
  /sse?n=&delay=    n SSE events `delay` seconds apart
  /reset?after=n    response headers and n SSE events, then RST_STREAM (INTERNAL_ERROR)
  /never            reads the request and never answers
  /nested?depth=    a JSON reply nested `depth` levels deep, a secret at the bottom
A request header `x-reply-trailers: name=value; name2=value2` makes any route end its
response with those trailers.
"""
from __future__ import annotations

import queue
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from tests.support.listener import listen_loopback, stop_listening
from tests.support.tls import TestCA
from tests.support.upstream import nested_json

_END = object()  # the end of a stream's request body, in its handler's queue


@dataclass
class H2Stream:
    """One stream as the server saw it."""

    conn: int  # which connection (0, 1, ...) carried it
    stream_id: int
    headers: list  # [(name, value), ...] as received, pseudo-headers included
    started_at: float
    chunks: list = field(default_factory=list)  # (time, bytes) of each DATA frame received
    trailers: list | None = None
    trailers_at: float | None = None
    complete: bool = False  # END_STREAM received: the server has the whole request
    reset_by_peer: int | None = None  # the error code of a RST_STREAM the client (the gateway) sent
    status: int | None = None
    sent: list = field(default_factory=list)  # (time, bytes) of each DATA frame sent
    sent_trailers: list | None = None
    reset_sent: int | None = None  # the error code of a RST_STREAM this server sent
    done: threading.Event = field(default_factory=threading.Event, repr=False)  # the server is through with it
    inbox: queue.Queue = field(default_factory=queue.Queue, repr=False)

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def path(self) -> str:
        return urlsplit(self.header(":path") or "").path

    @property
    def query(self) -> dict:
        return {k: v[-1] for k, v in parse_qs(urlsplit(self.header(":path") or "").query).items()}

    @property
    def body(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    @property
    def test_id(self) -> str | None:
        return self.header("x-test-id")

    def read(self, timeout: float = 30.0) -> bytes | None:
        """The next DATA chunk of the request, or None at its end (or a reset)."""
        item = self.inbox.get(timeout=timeout)
        return None if item is _END else item

    def read_all(self, timeout: float = 30.0) -> bytes:
        out = b""
        while (chunk := self.read(timeout)) is not None:
            out += chunk
        return out


class _Conn:
    """One h2 connection: the h2 state machine and the socket, used by several threads."""

    def __init__(self, server: "H2Upstream", sock: ssl.SSLSocket, number: int):
        self.server = server
        self.sock = sock
        self.number = number
        self.lock = threading.Lock()
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.streams: dict[int, H2Stream] = {}
        self.window_open = threading.Condition(self.lock)
        self.closed = False

    def flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    # -- what handlers call --------------------------------------------------------------

    def send_headers(self, st: H2Stream, status: int, headers=(), end: bool = False) -> None:
        with self.lock:
            st.status = status
            self.h2.send_headers(st.stream_id, [(":status", str(status)), *headers], end_stream=end)
            self.flush()

    def send_data(self, st: H2Stream, data: bytes, end: bool = False) -> None:
        view = memoryview(data)
        with self.lock:
            while True:
                if self.closed or st.reset_by_peer is not None:
                    return
                room = min(self.h2.local_flow_control_window(st.stream_id), self.h2.max_outbound_frame_size)
                if room >= len(view) or (room > 0 and len(view) > 0):
                    n = min(room, len(view))
                    last = n == len(view)
                    self.h2.send_data(st.stream_id, bytes(view[:n]), end_stream=end and last)
                    st.sent.append((time.time(), bytes(view[:n])))
                    self.flush()
                    view = view[n:]
                    if not view:
                        return
                elif not view:
                    self.h2.end_stream(st.stream_id)
                    self.flush()
                    return
                else:
                    self.window_open.wait(1.0)

    def end(self, st: H2Stream, trailers=None) -> None:
        with self.lock:
            if self.closed or st.reset_by_peer is not None:
                return
            if trailers:
                st.sent_trailers = list(trailers)
                self.h2.send_headers(st.stream_id, list(trailers), end_stream=True)
            else:
                self.h2.end_stream(st.stream_id)
            self.flush()

    def reset(self, st: H2Stream, code=h2.errors.ErrorCodes.INTERNAL_ERROR) -> None:
        with self.lock:
            if self.closed:
                return
            st.reset_sent = int(code)
            self.h2.reset_stream(st.stream_id, code)
            self.flush()

    # -- reading ---------------------------------------------------------------------------

    def serve(self) -> None:
        with self.lock:
            self.h2.initiate_connection()
            self.flush()
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                with self.lock:
                    try:
                        events = self.h2.receive_data(data)
                    except h2.exceptions.ProtocolError as e:
                        self.server._note(f"protocol error on connection {self.number}: {e}")
                        self.flush()
                        break
                    started = [self._event(ev) for ev in events]
                    self.flush()
                for st in started:
                    if st is not None:
                        threading.Thread(target=self.server._handle, args=(self, st), daemon=True,
                                         name=f"h2-upstream-stream-{st.stream_id}").start()
        except (OSError, ssl.SSLError):
            pass
        finally:
            with self.lock:
                self.closed = True
                self.window_open.notify_all()
                for st in self.streams.values():
                    if not st.complete:
                        st.inbox.put(_END)
            try:
                self.sock.close()
            except OSError:
                pass

    def _event(self, ev) -> H2Stream | None:
        """Apply one h2 event (under the lock). A new stream is returned, to be handled."""
        if isinstance(ev, h2.events.RequestReceived):
            st = H2Stream(self.number, ev.stream_id, list(ev.headers), time.time())
            self.streams[ev.stream_id] = st
            self.server._add(st)
            if ev.stream_ended is not None:
                st.complete = True
                st.inbox.put(_END)
            return st
        st = self.streams.get(getattr(ev, "stream_id", None) or -1)
        if isinstance(ev, h2.events.DataReceived):
            if st is not None and ev.data:
                st.chunks.append((time.time(), ev.data))
                st.inbox.put(ev.data)
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.TrailersReceived):
            if st is not None:
                st.trailers = list(ev.headers)
                st.trailers_at = time.time()
        elif isinstance(ev, h2.events.StreamEnded):
            if st is not None:
                st.complete = True
                st.inbox.put(_END)
        elif isinstance(ev, h2.events.StreamReset):
            if st is not None:
                st.reset_by_peer = int(ev.error_code)
                st.inbox.put(_END)
                self.window_open.notify_all()
        elif isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
            self.window_open.notify_all()
        elif isinstance(ev, h2.events.ConnectionTerminated):
            for s in self.streams.values():
                s.inbox.put(_END)
        return None


def _trailers_asked(st: H2Stream) -> list | None:
    spec = st.header("x-reply-trailers")
    if not spec:
        return None
    out = []
    for part in spec.split(";"):
        name, _, value = part.strip().partition("=")
        out.append((name.strip(), value.strip()))
    return out


def _echo(conn: _Conn, st: H2Stream) -> None:
    body = st.read_all()
    if not st.complete:
        return  # reset, or the connection went: nothing to answer
    headers = [("content-type", st.header("content-type") or "application/octet-stream"),
               ("content-length", str(len(body)))]
    trailers = _trailers_asked(st) or []
    trailers += [("echo-" + k, v) for k, v in st.trailers or []]
    conn.send_headers(st, 200, headers)
    conn.send_data(st, body, end=not trailers)
    if trailers:
        conn.end(st, trailers)


def _bidi(conn: _Conn, st: H2Stream) -> None:
    conn.send_headers(st, 200, [("content-type", st.header("content-type") or "application/octet-stream")])
    while (chunk := st.read()) is not None:
        conn.send_data(st, b"echo:" + chunk)
    if not st.complete:
        return
    conn.send_data(st, b"end")
    conn.end(st, _trailers_asked(st))


def _sse_events(n: int) -> list[bytes]:
    return [f'data: {{"i": {i}, "text": "event {i}"}}\n\n'.encode() for i in range(n)]


def _sse(conn: _Conn, st: H2Stream) -> None:
    st.read_all()
    n, delay = int(st.query.get("n", 5)), float(st.query.get("delay", 0.05))
    conn.send_headers(st, 200, [("content-type", "text/event-stream"), ("cache-control", "no-cache")])
    for i, ev in enumerate(_sse_events(n)):
        if i:
            time.sleep(delay)
        conn.send_data(st, ev)
    conn.end(st, _trailers_asked(st))


def _reset(conn: _Conn, st: H2Stream) -> None:
    st.read_all()
    conn.send_headers(st, 200, [("content-type", "text/event-stream")])
    for ev in _sse_events(int(st.query.get("after", 2))):
        conn.send_data(st, ev)
        time.sleep(0.05)
    time.sleep(0.3)  # let the gateway forward them before the reset
    conn.reset(st)


def _never(conn: _Conn, st: H2Stream) -> None:
    st.read_all(timeout=3600)  # until the gateway gives up on it (a reset) or the connection goes


def _nested(conn: _Conn, st: H2Stream) -> None:
    st.read_all()
    body = nested_json(int(st.query.get("depth", 300)))
    conn.send_headers(st, 200, [("content-type", "application/json"), ("content-length", str(len(body)))])
    conn.send_data(st, body, end=True)


class H2Upstream:
    """Start with `start()`; `base_url`, `streams`, `stream(test_id)`; `stop()`."""

    def __init__(self, ca: TestCA):
        self.ca = ca
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ca.server_cert_path, ca.server_key_path)
        ctx.set_alpn_protocols(["h2"])
        self._ctx = ctx
        self._lock = threading.Lock()
        self._streams: list[H2Stream] = []
        self._conns: list[_Conn] = []
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self.port = 0
        self.notes: list[str] = []  # protocol errors and dropped connections, for failing tests
        self.routes = {"/echo": _echo, "/bidi": _bidi, "/sse": _sse, "/reset": _reset, "/never": _never,
                       "/nested": _nested}

    def route(self, path: str, handler) -> None:
        """handler(conn, stream) answers one stream: conn.send_headers / send_data / end / reset."""
        self.routes[path] = handler

    def start(self) -> "H2Upstream":
        self._listener = listen_loopback(self._serve, "h2-upstream", self._stopped)
        self.port = self._listener.getsockname()[1]
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            stop_listening(self._listener)
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def streams(self) -> list[H2Stream]:
        with self._lock:
            return list(self._streams)

    @property
    def connections(self) -> int:
        with self._lock:
            return len(self._conns)

    def received(self, test_id: str) -> list[H2Stream]:
        return [s for s in self.streams if s.test_id == test_id]

    def stream(self, test_id: str, timeout: float = 10.0, done: bool = True) -> H2Stream:
        """The one stream with `x-test-id: <test_id>`, once the server is through with it."""
        deadline = time.monotonic() + timeout
        while not self.received(test_id) and time.monotonic() < deadline:
            time.sleep(0.02)
        got = self.received(test_id)
        assert len(got) == 1, f"the h2 upstream received {test_id} {len(got)} times; notes: {self.notes}"
        if done:
            assert got[0].done.wait(max(0.0, deadline - time.monotonic())), f"the h2 upstream is not through with {test_id}"
        return got[0]

    def _note(self, text: str) -> None:
        with self._lock:
            self.notes.append(text)

    def _add(self, st: H2Stream) -> None:
        with self._lock:
            self._streams.append(st)

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(None)
        try:
            sock = self._ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as e:
            self._note(f"TLS handshake failed: {e}")
            raw.close()
            return
        if sock.selected_alpn_protocol() != "h2":
            self._note(f"a client did not negotiate h2 (ALPN {sock.selected_alpn_protocol()!r})")
            sock.close()
            return
        with self._lock:
            conn = _Conn(self, sock, len(self._conns))
            self._conns.append(conn)
        conn.serve()

    def _handle(self, conn: _Conn, st: H2Stream) -> None:
        handler = self.routes.get(st.path)
        try:
            if handler is None:
                st.read_all()
                body = b'{"error": "no such route"}'
                conn.send_headers(st, 404, [("content-type", "application/json")])
                conn.send_data(st, body, end=True)
            else:
                handler(conn, st)
        except (OSError, ssl.SSLError, queue.Empty, h2.exceptions.H2Error) as e:
            self._note(f"stream {st.stream_id} on connection {conn.number}: {type(e).__name__}: {e}")
        finally:
            st.done.set()
