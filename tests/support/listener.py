"""A TCP listener on 127.0.0.1 (a free port) that serves each connection on a thread of its own:
what the fake upstreams (tests/support/upstream.py, h2_upstream.py) share."""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable


def listen_loopback(serve: Callable[[socket.socket], None], name: str, stopped: threading.Event,
                    backlog: int = 128) -> socket.socket:
    """The listening socket (its port: getsockname()[1]); `serve(raw)` runs for each accepted
    connection until `stopped` is set or the socket is closed."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(backlog)

    def accept() -> None:
        while not stopped.is_set():
            try:
                raw, _ = s.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(raw,), name=f"{name}-conn", daemon=True).start()

    threading.Thread(target=accept, name=f"{name}-accept", daemon=True).start()
    return s


def stop_listening(s: socket.socket) -> None:
    """Stop a listener for good. close() alone does not wake a thread blocked in accept(): that
    thread can later accept on the same descriptor number, reused by the next test's listener,
    and take (and drop) a connection meant for it. shutdown() wakes it first."""
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()
