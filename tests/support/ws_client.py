"""A real WebSocket client for end-to-end tests (wsproto over a socket), through the gateway.

`WsClient.through_proxy(gw, host, path, token=...)` sends CONNECT (with the identity token as
Proxy-Authorization, like HTTPS_PROXY=http://user:token@gw), trusts the gateway's CA, and
upgrades. Messages can be sent in several frames; what arrives is read with a deadline.
"""
from __future__ import annotations

import base64
import socket
import ssl
import time

import wsproto.events as ev
from wsproto import ConnectionType, WSConnection
from wsproto.utilities import LocalProtocolError


class WsRefused(Exception):
    """The upgrade was answered with something else than 101."""

    def __init__(self, status: int, body: bytes):
        super().__init__(f"upgrade refused: {status} {body[:300]!r}")
        self.status, self.body = status, body


def connect_tunnel(gw, host: str, token: str | None = None, timeout: float = 10.0) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.proxy_port), timeout=timeout)
    auth = ""
    if token is not None:
        auth = "Proxy-Authorization: Basic " + base64.b64encode(f"u:{token}".encode()).decode() + "\r\n"
    sock.sendall(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError(f"the gateway closed the CONNECT: {head!r}")
        head += data
    status = int(head.split(b" ", 2)[1])
    if status != 200:
        sock.close()
        raise WsRefused(status, head)
    return sock


class WsClient:
    def __init__(self, sock, ws: WSConnection):
        self.sock = sock
        self.ws = ws
        self.received: list[tuple[str, bytes]] = []  # (kind, data) of each whole message
        self.closed: tuple | None = None  # (code, reason) the gateway or server sent, or ("eof", None)
        self._buf: list = []

    @classmethod
    def through_proxy(cls, gw, host: str, path: str, *, token: str | None = None, headers=(),
                      timeout: float = 10.0) -> "WsClient":
        raw = connect_tunnel(gw, host, token, timeout)
        ctx = ssl.create_default_context(cafile=str(gw.ca_path))
        ctx.set_alpn_protocols(["http/1.1"])
        sock = ctx.wrap_socket(raw, server_hostname=host.rsplit(":", 1)[0])
        return cls._upgrade(sock, host, path, headers, timeout)

    @classmethod
    def direct(cls, port: int, path: str, *, host: str = "127.0.0.1", headers=(), timeout: float = 10.0) -> "WsClient":
        """Plain ws:// to a listener on 127.0.0.1 (the gateway's reverse mode)."""
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        return cls._upgrade(sock, f"{host}:{port}", path, headers, timeout)

    @classmethod
    def _upgrade(cls, sock, host: str, path: str, headers, timeout: float) -> "WsClient":
        ws = WSConnection(ConnectionType.CLIENT)
        extra = [(k.encode(), v.encode()) for k, v in headers]
        sock.sendall(ws.send(ev.Request(host=host, target=path, extra_headers=extra)))
        client = cls(sock, ws)
        deadline = time.monotonic() + timeout
        body = b""
        while time.monotonic() < deadline:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("closed during the upgrade")
            ws.receive_data(data)
            for event in ws.events():
                if isinstance(event, ev.AcceptConnection):
                    return client
                if isinstance(event, ev.RejectConnection):
                    status = event.status_code
                    if not event.has_body:
                        raise WsRefused(status, b"")
                elif isinstance(event, ev.RejectData):
                    body += event.data
                    if event.body_finished:
                        raise WsRefused(status, body)
                else:
                    client._event(event)
        raise TimeoutError("no answer to the upgrade")

    # -- sending -----------------------------------------------------------------------------

    def send_text(self, text: str, frames: int = 1) -> None:
        self._send(text, frames, True)

    def send_binary(self, data: bytes, frames: int = 1) -> None:
        self._send(data, frames, False)

    def _send(self, payload, frames: int, text: bool) -> None:
        step = max(1, -(-len(payload) // frames))
        pieces = [payload[i:i + step] for i in range(0, len(payload), step)] or [payload]
        out = b""
        for i, piece in enumerate(pieces):
            last = i == len(pieces) - 1
            event = ev.TextMessage(piece, message_finished=last) if text else ev.BytesMessage(piece, message_finished=last)
            out += self.ws.send(event)
        self.sock.sendall(out)  # every frame in one write: the gateway sees them together

    def close(self, code: int = 1000, reason: str = "bye") -> None:
        try:
            self.sock.sendall(self.ws.send(ev.CloseConnection(code=code, reason=reason)))
        except (OSError, LocalProtocolError):
            pass
        self.wait(lambda c: c.closed is not None, timeout=5)
        self.sock.close()

    # -- receiving ---------------------------------------------------------------------------

    def wait(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate(self):
            left = deadline - time.monotonic()
            if left <= 0 or self.closed is not None and not predicate(self):
                return predicate(self)
            self.sock.settimeout(min(left, 0.5))
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                data = b""
            if not data:
                if self.closed is None:
                    self.closed = ("eof", None)
                return predicate(self)
            self.ws.receive_data(data)
            for event in self.ws.events():
                self._event(event)
        return True

    def recv(self, n: int = 1, timeout: float = 10.0) -> list[tuple[str, bytes]]:
        want = len(self.received) + n
        assert self.wait(lambda c: len(c.received) >= want, timeout), (
            f"got {len(self.received)} of {want} messages; closed={self.closed}")
        return self.received[want - n:want]

    def _event(self, event) -> None:
        if isinstance(event, ev.Message):
            self._buf.append(event.data.encode() if isinstance(event, ev.TextMessage) else bytes(event.data))
            if event.message_finished:
                self.received.append(("text" if isinstance(event, ev.TextMessage) else "binary", b"".join(self._buf)))
                self._buf = []
        elif isinstance(event, ev.CloseConnection):
            self.closed = (event.code, event.reason)
            try:
                self.sock.sendall(self.ws.send(event.response()))
            except (OSError, LocalProtocolError):
                pass
        elif isinstance(event, ev.Ping):
            self.sock.sendall(self.ws.send(event.response()))
