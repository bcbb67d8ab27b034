"""A raw TCP upstream for end-to-end tests: optional TLS, 127.0.0.1 only, echoes with a prefix.

Each connection's received bytes are kept (`connections[i].received`): the ground truth of
what reached the upstream. With `greeting`, it speaks first, as a database or SSH server does.
"""
from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass, field

from tests.support.tls import TestCA


@dataclass
class RawConnection:
    received: bytes = b""
    closed: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)


class RawUpstream:
    def __init__(self, ca: TestCA | None = None, *, tls: bool = False, greeting: bytes = b""):
        self.ctx = None
        if tls:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(ca.server_cert_path, ca.server_key_path)
        self.greeting = greeting
        self.connections: list[RawConnection] = []
        self.accepted = 0  # TCP connections accepted, TLS handshake or not
        self._listener: socket.socket | None = None
        self._stopped = threading.Event()
        self.port = 0

    def start(self) -> "RawUpstream":
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.listen(16)
        self._listener, self.port = s, s.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        if self._listener is not None:
            self._listener.close()

    def received(self) -> bytes:
        return b"".join(c.received for c in self.connections)

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.02)
        return predicate(self)

    def _accept(self) -> None:
        while not self._stopped.is_set():
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        conn = RawConnection()
        try:
            sock = self.ctx.wrap_socket(raw, server_side=True) if self.ctx else raw
        except (OSError, ssl.SSLError):
            raw.close()
            return
        self.connections.append(conn)
        try:
            if self.greeting:
                sock.sendall(self.greeting)
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                with conn.lock:
                    conn.received += data
                sock.sendall(b"echo:" + data)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.closed = True
            sock.close()
