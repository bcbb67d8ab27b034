"""A fake WebSocket upstream for end-to-end tests: real TLS, wsproto, 127.0.0.1 only.

Every connection is kept as a `WsConnection`: the upgrade request's path and headers, each
message received (text or binary, and in how many frames), and how it closed. That log is
the ground truth of what reached the upstream.

What it does with a connection depends on the upgrade's path:
  /echo           each message is sent back as it came (text as text, binary as binary)
  /v1/responses   OpenAI's Responses API over WebSocket: each `response.create` message is
                  answered with the response.* events a `responder` makes (tests/support/openai_fake.py)
  /raw            not a WebSocket: answers 101 with `Upgrade: foo` and then echoes raw bytes
Plain HTTP requests (no upgrade) are answered too: GET /v1/models, and POST /v1/responses with
the responder's events as SSE.

On /echo, a text message {"x_fake": "send", "messages": [{"text": ..} | {"text_b64": ..} | {"text_rev": ..}
| {"b64": ..}, ...], "frames": n} makes the server send those messages (text, text given in base64 or
reversed, binary), each split into n frames, instead of an echo;
{"x_fake": "close", "code": c, "reason": r} makes it close.
"""
from __future__ import annotations

import base64
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

import wsproto
import wsproto.events as ev
from wsproto import ConnectionType, WSConnection

from tests.support.tls import TestCA


@dataclass
class WsConnection:
    path: str
    headers: list  # [(name, value)] of the upgrade request, as received
    messages: list = field(default_factory=list)  # (kind "text"/"binary", bytes, frames)
    closed: tuple | None = None  # (code, reason) the client sent, or ("eof", None)
    raw: bytes = b""  # what arrived after a non-WebSocket 101 (/raw)
    http: tuple | None = None  # (method, body) of a plain HTTP request (not an upgrade)
    changed: threading.Condition = field(default_factory=threading.Condition, repr=False)

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k.lower() == name.lower():
                return v
        return None

    def header_values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    def texts(self) -> list[str]:
        return [data.decode() for kind, data, _ in self.messages if kind == "text"]

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while not predicate(self):
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def _note(self) -> None:
        with self.changed:
            self.changed.notify_all()


class FakeWsUpstream:
    def __init__(self, ca: TestCA, responder=None):
        self.ca = ca
        self.responder = responder  # for /v1/responses: payload dict -> list of event dicts
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(ca.server_cert_path, ca.server_key_path)
        ctx.set_alpn_protocols(["http/1.1"])
        self._ctx = ctx
        self._lock = threading.Lock()
        self._conns: list[WsConnection] = []
        self._socks: set = set()
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self.port = 0

    def start(self) -> "FakeWsUpstream":
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(64)
        self._listener = s
        self.port = s.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True, name="fake-ws-accept").start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def connections(self) -> list[WsConnection]:
        with self._lock:
            return list(self._conns)

    def connection(self, timeout: float = 10.0, index: int = -1) -> WsConnection:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not self.connections:
            time.sleep(0.02)
        assert self.connections, "the WebSocket upstream got no connection"
        return self.connections[index]

    # -- serving ---------------------------------------------------------------------------

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True, name="fake-ws-conn").start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(60)
        try:
            sock = self._ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError):
            raw.close()
            return
        with self._lock:
            self._socks.add(sock)
        try:
            self._run(sock)
        except (OSError, ssl.SSLError, wsproto.utilities.LocalProtocolError):
            pass
        finally:
            with self._lock:
                self._socks.discard(sock)
            try:
                sock.close()
            except OSError:
                pass

    def _run(self, sock) -> None:
        # Peek at the request line: /raw is not answered by wsproto.
        head = b""
        while b"\r\n\r\n" not in head:
            data = sock.recv(65536)
            if not data:
                return
            head += data
        first = head.split(b"\r\n", 1)[0].decode("latin-1")
        path = first.split(" ")[1] if " " in first else "/"
        if path.startswith("/raw"):
            self._raw(sock, head)
            return
        if b"upgrade: websocket" not in head.lower():
            self._http(sock, head)
            return
        ws = WSConnection(ConnectionType.SERVER)
        ws.receive_data(head)
        conn = None
        frames = 0
        buf: list = []
        while True:
            for event in ws.events():
                if isinstance(event, ev.Request):
                    headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.extra_headers]
                    headers = [("host", event.host)] + headers
                    conn = WsConnection(path=event.target, headers=headers)
                    with self._lock:
                        self._conns.append(conn)
                    sock.sendall(ws.send(ev.AcceptConnection(extensions=[])))
                elif isinstance(event, ev.Message):
                    frames += 1
                    buf.append(event.data.encode() if isinstance(event, ev.TextMessage) else bytes(event.data))
                    if event.message_finished:
                        kind = "text" if isinstance(event, ev.TextMessage) else "binary"
                        data = b"".join(buf)
                        conn.messages.append((kind, data, frames))
                        conn._note()
                        buf, frames = [], 0
                        self._on_message(sock, ws, conn, kind, data)
                elif isinstance(event, ev.Ping):
                    sock.sendall(ws.send(event.response()))
                elif isinstance(event, ev.CloseConnection):
                    conn.closed = (event.code, event.reason)
                    conn._note()
                    try:
                        sock.sendall(ws.send(event.response()))
                    except Exception:
                        pass
                    return
            data = sock.recv(65536)
            if not data:
                if conn is not None and conn.closed is None:
                    conn.closed = ("eof", None)
                    conn._note()
                return
            ws.receive_data(data)

    def _on_message(self, sock, ws: WSConnection, conn: WsConnection, kind: str, data: bytes) -> None:
        if conn.path.startswith("/v1/responses"):
            payload = json.loads(data)
            if payload.get("type") == "response.create" and self.responder is not None:
                for event in self.responder(payload):
                    sock.sendall(ws.send(ev.TextMessage(json.dumps(event))))
            return
        if kind == "text" and data.startswith(b'{"x_fake"'):
            cmd = json.loads(data)
            if cmd["x_fake"] == "close":
                sock.sendall(ws.send(ev.CloseConnection(code=cmd.get("code", 1000), reason=cmd.get("reason"))))
                return
            n = int(cmd.get("frames", 1))
            for m in cmd["messages"]:
                if "text" in m:
                    _send_frames(sock, ws, m["text"], n, text=True)
                elif "text_rev" in m:  # a text that even a masker decoding base64 does not see in the client's message
                    _send_frames(sock, ws, m["text_rev"][::-1], n, text=True)
                elif "text_b64" in m:  # a text the client's own message must not carry in clear
                    _send_frames(sock, ws, base64.b64decode(m["text_b64"]).decode(), n, text=True)
                else:
                    _send_frames(sock, ws, base64.b64decode(m["b64"]), n, text=False)
                if cmd.get("delay"):
                    time.sleep(cmd["delay"])
            return
        if kind == "text":
            sock.sendall(ws.send(ev.TextMessage(data.decode())))
        else:
            sock.sendall(ws.send(ev.BytesMessage(data)))

    def _http(self, sock, head: bytes) -> None:
        """Plain HTTP/1.1 beside the WebSockets: GET /v1/models, and POST /v1/responses answered
        with the responder's events as SSE (the Responses API's HTTP fallback)."""
        rfile = sock.makefile("rb")
        data = head
        while True:
            request, _, rest = data.partition(b"\r\n\r\n")
            lines = request.decode("latin-1").split("\r\n")
            method, target = lines[0].split(" ")[:2]
            headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:] if ":" in line]
            conn = WsConnection(path=target, headers=headers)
            length = int(conn.header("content-length") or 0)
            while len(rest) < length:
                more = sock.recv(65536)
                if not more:
                    return
                rest += more
            body, data = rest[:length], rest[length:]
            conn.http = (method, body)
            with self._lock:
                self._conns.append(conn)
            if target.startswith("/v1/responses") and method == "POST" and self.responder is not None:
                out = self.responder.sse(json.loads(body))
                ctype = "text/event-stream"
            elif target.startswith("/v1/models"):
                out, ctype = json.dumps({"object": "list", "data": [], "models": []}).encode(), "application/json"
            else:
                out, ctype = b'{"error": {"message": "no such route"}}', "application/json"
            status = "200 OK" if ctype == "text/event-stream" or target.startswith("/v1/models") else "404 Not Found"
            sock.sendall(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(out)}\r\n\r\n"
                         .encode() + out)
            while b"\r\n\r\n" not in data:
                more = sock.recv(65536)
                if not more:
                    return
                data += more

    def _raw(self, sock, head: bytes) -> None:
        lines = head.split(b"\r\n\r\n", 1)
        request, rest = lines[0].decode("latin-1"), lines[1] if len(lines) > 1 else b""
        path = request.split("\r\n")[0].split(" ")[1]
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in request.split("\r\n")[1:] if ":" in line]
        conn = WsConnection(path=path, headers=headers)
        with self._lock:
            self._conns.append(conn)
        sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n")
        data = rest
        while True:
            if data:
                conn.raw += data
                conn._note()
                sock.sendall(b"echo:" + data)
            data = sock.recv(65536)
            if not data:
                conn.closed = ("eof", None)
                conn._note()
                return


def _send_frames(sock, ws: WSConnection, payload, n: int, *, text: bool) -> None:
    step = max(1, -(-len(payload) // n))
    pieces = [payload[i:i + step] for i in range(0, len(payload), step)] or [payload]
    for i, piece in enumerate(pieces):
        last = i == len(pieces) - 1
        event = ev.TextMessage(piece, message_finished=last) if text else ev.BytesMessage(piece, message_finished=last)
        sock.sendall(ws.send(event))
