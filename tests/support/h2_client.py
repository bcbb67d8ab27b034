"""A raw HTTP/2 client for end-to-end tests, on the `h2` library: what httpx cannot do.

It reaches an h2 server through the gateway as an HTTPS proxy (CONNECT, then TLS with
ALPN h2, trusting the gateway's CA) and lets a test drive each stream by hand: send
headers, DATA chunks and trailers when it likes, and read the response as it arrives,
trailers and resets included. That is what a bidirectional stream (gRPC, Connect) and
request trailers need.
"""
from __future__ import annotations

import base64
import queue
import select
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events
import h2.exceptions


@dataclass
class Reply:
    """One stream's response as the client received it."""

    stream_id: int
    headers: list | None = None
    chunks: list = field(default_factory=list)  # (time, bytes)
    trailers: list | None = None
    ended: bool = False
    reset: int | None = None  # the error code of a RST_STREAM from the gateway
    events: queue.Queue = field(default_factory=queue.Queue, repr=False)  # ("headers"|"data"|"end"|"reset", value)
    finished: threading.Event = field(default_factory=threading.Event, repr=False)

    @property
    def status(self) -> int | None:
        for k, v in self.headers or ():
            if k == ":status":
                return int(v)
        return None

    @property
    def body(self) -> bytes:
        return b"".join(c for _, c in self.chunks)

    def header(self, name: str) -> str | None:
        for k, v in self.headers or ():
            if k == name.lower():
                return v
        return None

    def next(self, timeout: float = 10.0):
        return self.events.get(timeout=timeout)

    def wait(self, timeout: float = 30.0) -> "Reply":
        assert self.finished.wait(timeout), f"stream {self.stream_id} did not finish within {timeout} s: {self}"
        return self


class H2Client:
    """h2 over TLS through an HTTP CONNECT proxy. `authority` is the host:port the requests name."""

    def __init__(self, proxy_port: int, target: tuple[str, int], ca_path, proxy_auth: str | None = None,
                 timeout: float = 30.0, *, direct: bool = False, context: ssl.SSLContext | None = None):
        """direct=True: TLS straight to `proxy_port` (a reverse-mode listener), no CONNECT.
        `context` replaces the one made from `ca_path` (ALPN h2 is set on it)."""
        self.target = target
        raw = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
        host = f"{target[0]}:{target[1]}"
        if not direct:
            connect = f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n"
            if proxy_auth:
                connect += f"Proxy-Authorization: Basic {base64.b64encode(proxy_auth.encode()).decode()}\r\n"
            raw.sendall((connect + "\r\n").encode())
            head = b""
            while b"\r\n\r\n" not in head:
                got = raw.recv(4096)
                if not got:
                    raw.close()
                    raise ConnectionError(f"the proxy closed the connection after CONNECT: {head!r}")
                head += got
            status = head.split(b"\r\n", 1)[0]
            if b" 200" not in status:
                raw.close()
                raise ConnectionError(f"CONNECT refused: {head!r}")
        ctx = context or ssl.create_default_context(cafile=str(ca_path))
        ctx.set_alpn_protocols(["h2"])
        self.sock = ctx.wrap_socket(raw, server_hostname=target[0])
        if self.sock.selected_alpn_protocol() != "h2":
            raise ConnectionError(f"the gateway did not negotiate h2: {self.sock.selected_alpn_protocol()!r}")
        self.sock.settimeout(None)
        self.h2 = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding="utf-8"))
        self.lock = threading.Lock()
        self.replies: dict[int, Reply] = {}
        self.closed = threading.Event()
        self.error: str | None = None
        with self.lock:
            self.h2.initiate_connection()
            self.sock.sendall(self.h2.data_to_send())
        self._reader = threading.Thread(target=self._read, daemon=True, name="h2-client")
        self._reader.start()

    @property
    def authority(self) -> str:
        return f"{self.target[0]}:{self.target[1]}"

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data:
            self.sock.sendall(data)

    def request(self, method: str, path: str, headers=(), body: bytes | None = None, end: bool = True,
                trailers=None) -> Reply:
        """Open a stream. With end=False the body stays open: `send` more, then `finish`."""
        with self.lock:
            sid = self.h2.get_next_available_stream_id()
            reply = self.replies[sid] = Reply(sid)
            hdrs = [(":method", method), (":scheme", "https"), (":authority", self.authority), (":path", path),
                    *headers]
            only_headers = end and not body and not trailers
            self.h2.send_headers(sid, hdrs, end_stream=only_headers)
            self._flush()
        if body:
            self.send(sid, body, end=end and not trailers)
        if end and trailers:
            self.finish(sid, trailers)
        return reply

    def send(self, stream_id: int, data: bytes, end: bool = False) -> None:
        view = memoryview(data)
        while True:
            with self.lock:
                room = min(self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size)
                n = min(room, len(view))
                if n or not view:
                    self.h2.send_data(stream_id, bytes(view[:n]), end_stream=end and n == len(view))
                    self._flush()
                    view = view[n:]
                    if not view:
                        return
            time.sleep(0.01)  # wait for a WINDOW_UPDATE

    def finish(self, stream_id: int, trailers=None) -> None:
        with self.lock:
            if trailers:
                self.h2.send_headers(stream_id, list(trailers), end_stream=True)
            else:
                self.h2.end_stream(stream_id)
            self._flush()

    def close(self) -> None:
        try:
            with self.lock:
                self.h2.close_connection()
                self._flush()
        except (OSError, h2.exceptions.H2Error):
            pass
        # End the reader thread before the socket is closed: a reader still inside recv on a
        # closed socket's SSL object would read from whatever socket next gets the same fd number
        # (the next client's TLS handshake then fails with "bad record mac").
        try:
            socket.socket.shutdown(self.sock, socket.SHUT_RDWR)
        except OSError:
            pass
        if self._reader is not threading.current_thread():
            self._reader.join(5)
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "H2Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _read(self) -> None:
        # The socket's SSL object is used under self.lock only, reads included: OpenSSL does not
        # allow one SSL object to read on one thread while it writes on another (a write that
        # overlaps a read can go out corrupt: the gateway then sees "bad record mac").
        try:
            while True:
                if not self.sock.pending():
                    select.select([self.sock], [], [], 0.2)
                with self.lock:
                    self.sock.settimeout(0.01)
                    try:
                        data = self.sock.recv(65536)
                    except (socket.timeout, ssl.SSLWantReadError):
                        continue
                    finally:
                        self.sock.settimeout(None)
                    if not data:
                        break
                    events = self.h2.receive_data(data)
                    for ev in events:
                        self._event(ev)
                    self._flush()
        except (OSError, ssl.SSLError, h2.exceptions.H2Error) as e:
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.closed.set()
            for r in self.replies.values():
                if not r.finished.is_set():
                    r.events.put(("closed", self.error))
                    r.finished.set()

    def _event(self, ev) -> None:
        r = self.replies.get(getattr(ev, "stream_id", None) or -1)
        if isinstance(ev, h2.events.ResponseReceived) and r is not None:
            r.headers = list(ev.headers)
            r.events.put(("headers", r.headers))
        elif isinstance(ev, h2.events.DataReceived):
            self.h2.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            if r is not None:
                r.chunks.append((time.time(), ev.data))
                r.events.put(("data", ev.data))
        elif isinstance(ev, h2.events.TrailersReceived) and r is not None:
            r.trailers = list(ev.headers)
            r.events.put(("trailers", r.trailers))
        elif isinstance(ev, h2.events.StreamEnded) and r is not None:
            r.ended = True
            r.events.put(("end", None))
            r.finished.set()
        elif isinstance(ev, h2.events.StreamReset) and r is not None:
            r.reset = int(ev.error_code)
            r.events.put(("reset", r.reset))
            r.finished.set()
