"""Anchor sinks served by the tests ([anchors] http and syslog): each writes what it
received to a file, as an operator's collector or syslog daemon would, for
`wiretrail verify --anchors FILE`."""
from __future__ import annotations

import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class HttpAnchorSink:
    """POSTs to /anchors are appended to `path`, one body per line, while `status` is 2xx;
    otherwise they are answered with `status` and dropped."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.status = 200
        self.posts: list[tuple[int, dict, bytes]] = []  # (status answered, headers, body)
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                status = sink.status
                sink.posts.append((status, dict(self.headers), body))
                if 200 <= status < 300:
                    with open(sink.path, "ab") as fh:
                        fh.write(body + b"\n")
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/anchors"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "HttpAnchorSink":
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def answered(self, ok: bool) -> int:
        return sum(1 for status, _, _ in self.posts if (200 <= status < 300) == ok)


class SyslogAnchorSink:
    """A unix datagram socket, as /dev/log is; each message becomes a line of `path`, prefixed
    the way a syslog daemon's log file is ("Dec  3 10:00:00 host ...")."""

    def __init__(self, socket_path: Path, path: Path):
        self.socket_path = Path(socket_path)
        self.path = Path(path)
        self.messages: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(self.socket_path))
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "SyslogAnchorSink":
        self.thread.start()
        return self

    def _run(self) -> None:
        while True:
            try:
                msg = self.sock.recv(65536)
            except TimeoutError:
                if self._stop.is_set():
                    return  # stopped, and nothing more was waiting
                continue
            except OSError:
                return
            self.messages.append(msg)
            with open(self.path, "ab") as fh:
                stamp = time.strftime("%b %e %H:%M:%S").encode()
                fh.write(stamp + b" testhost " + msg.split(b">", 1)[-1] + b"\n")

    def stop(self) -> None:
        self._stop.set()
        self.thread.join(2)
        self.sock.close()
        try:
            os.unlink(self.socket_path)
        except OSError:
            pass
