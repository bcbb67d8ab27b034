"""A fake Cursor backend and client for end-to-end tests: they play one conversation
(tests/support/cursor_fixture.py) in its order, each side waiting for what the other sends.

The client sends its tool result only after it has received the server's tool request, and
the server sends its next message only after it has the client's: a gateway that buffered
either direction would stall both, and the waits (with deadlines) fail the test.

- HTTP/2: `h2_run(conn, stream)` is an H2Upstream route for agent.v1.AgentService/Run; the
  test's client drives an H2Client stream with `play_client`.
- HTTP/1.1: `run_sse` and `bidi_append` are FakeUpstream routes (the server's messages as the
  RunSSE response stream, each client message as its own BidiAppend post).

What the server received and sent is its own log, the ground truth the tests compare with.
"""
from __future__ import annotations

import gzip
import json
import queue
import threading
import time

from tests.support.cursor_fixture import Conversation, end_stream, envelope, gz_envelope

WAIT = 15.0  # seconds either side waits for the other's next message


class EnvelopeSplitter:
    """The test's own Connect envelope reader (not the recorder's)."""

    def __init__(self, encoding: str | None = None):
        self.buf = b""
        self.encoding = encoding

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        self.buf += data
        out = []
        while len(self.buf) >= 5:
            length = int.from_bytes(self.buf[1:5], "big")
            if len(self.buf) < 5 + length:
                break
            flags, payload = self.buf[0], self.buf[5:5 + length]
            self.buf = self.buf[5 + length:]
            if flags & 0x01:
                assert self.encoding == "gzip", f"a compressed envelope without gzip ({self.encoding})"
                payload = gzip.decompress(payload)
            out.append((flags, payload))
        return out


class CursorBackend:
    def __init__(self, mimic, conv: Conversation, *, gzip_server: bool = False, end_error: dict | None = None,
                 split_server: int = 3):
        self.mimic = mimic
        self.conv = conv
        self.split_server = split_server  # HTTP/2: this server message goes in two DATA frames
        self.gzip_server = gzip_server
        self.end_error = end_error
        self.received: list[bytes] = []  # client messages, as this server decoded them
        self.sent: list[bytes] = []
        self.errors: list[str] = []
        self.finished = threading.Event()
        self.request_headers: list = []
        self._inboxes: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self.appends: list[dict] = []  # HTTP/1.1: each BidiAppend post: request id, seqno, gzip

    # -- the conversation, from the server's side -------------------------------------------

    def _serve(self, recv, send, end) -> None:
        try:
            for side, i in self.conv.steps:
                if side == "client":
                    got = recv()
                    if got is None:
                        self.errors.append(f"the client's message {i} never came (within {WAIT} s)")
                        return
                    self.received.append(got)
                    if got != self.conv.client[i]:
                        self.errors.append(f"client message {i} arrived changed")
                else:
                    send(i)
                    self.sent.append(self.conv.server[i])
            end()
        finally:
            self.finished.set()

    def _server_envelope(self, i: int) -> bytes:
        payload = self.conv.server[i]
        return gz_envelope(payload) if self.gzip_server else envelope(payload)

    # -- HTTP/2: agent.v1.AgentService/Run ------------------------------------------------------

    def h2_run(self, conn, st) -> None:
        self.request_headers = list(st.headers)
        headers = [("content-type", "application/connect+proto")]
        if self.gzip_server:
            headers.append(("connect-content-encoding", "gzip"))
        conn.send_headers(st, 200, headers)
        splitter = EnvelopeSplitter(st.header("connect-content-encoding"))
        pending: list[bytes] = []

        def recv():
            deadline = time.monotonic() + WAIT
            while not pending:
                try:
                    chunk = st.read(timeout=max(0.01, deadline - time.monotonic()))
                except queue.Empty:
                    return None
                if chunk is None:
                    return None
                pending.extend(p for _, p in splitter.feed(chunk))
            return pending.pop(0)

        batch: list[int] = []

        def send(i: int) -> None:
            # The first two messages go in one DATA frame; the tool request is split over two.
            if i == 0:
                batch.append(i)
                return
            data = b"".join(self._server_envelope(j) for j in batch) + self._server_envelope(i)
            batch.clear()
            if i == self.split_server:
                cut = len(data) - 7
                conn.send_data(st, data[:cut])
                time.sleep(0.05)
                conn.send_data(st, data[cut:])
            else:
                conn.send_data(st, data)

        def end() -> None:
            st.read_all(timeout=WAIT)  # the client's end of stream
            conn.send_data(st, end_stream(self.end_error))
            conn.end(st)

        self._serve(recv, send, end)

    # -- HTTP/1.1: RunSSE and BidiAppend ----------------------------------------------------------

    def inbox(self, request_id: str) -> queue.Queue:
        with self._lock:
            return self._inboxes.setdefault(request_id, queue.Queue())

    def run_sse(self, r, ex) -> str:
        self.request_headers = list(ex.headers)
        (_flags, payload), = EnvelopeSplitter().feed(ex.body)
        request_id = self.mimic.aiserver.BidiRequestId.FromString(payload).request_id
        box = self.inbox(request_id)
        r.stream_head("application/connect+proto")

        def recv():
            try:
                return box.get(timeout=WAIT)
            except queue.Empty:
                return None

        def send(i: int) -> None:
            r.chunk(envelope(self.conv.server[i]))

        def end() -> None:
            r.chunk(end_stream(self.end_error))
            r.end_chunks()

        self._serve(recv, send, end)
        return "keep-alive"

    def bidi_append(self, r, ex) -> str:
        body = gzip.decompress(ex.body) if (ex.header("content-encoding") or "") == "gzip" else ex.body
        msg = self.mimic.aiserver.BidiAppendRequest.FromString(body)
        self.appends.append({"request_id": msg.request_id.request_id, "seqno": msg.append_seqno,
                             "gzip": body is not ex.body})
        self.inbox(msg.request_id.request_id).put(bytes.fromhex(msg.data))
        r.full(200, b"", "application/proto")
        return "keep-alive"


# -- the client side --------------------------------------------------------------------------


def play_client(conv: Conversation, send, recv_chunk, *, wait: float = WAIT, before_end=None,
                encoding: str | None = "gzip") -> tuple[list, list[str]]:
    """Play the client's part: `send(i)` sends client message i; `recv_chunk(timeout)` returns
    the next response bytes (None at the end); `before_end()` ends the request (a bidi stream)
    before the end-of-stream message is awaited. Returns (the server messages received, then
    the end-of-stream JSON; problems)."""
    splitter = EnvelopeSplitter(encoding)
    pending: list[tuple[int, bytes]] = []
    got: list[bytes] = []
    problems: list[str] = []

    def next_message():
        deadline = time.monotonic() + wait
        while not pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            chunk = recv_chunk(left)
            if chunk is None:
                return None
            pending.extend(splitter.feed(chunk))
        return pending.pop(0)

    for side, i in conv.steps:
        if side == "client":
            send(i)
            continue
        item = next_message()
        if item is None:
            problems.append(f"server message {i} never arrived within {wait} s (a buffering proxy deadlocks here)")
            return got, problems
        got.append(item[1])
        if item[1] != conv.server[i]:
            problems.append(f"server message {i} arrived changed")
    if before_end is not None:
        before_end()
    end = next_message()
    if end is None or end[0] != 0x02:
        problems.append(f"no end-of-stream message: {end!r}")
    else:
        got.append(json.loads(end[1]) if end[1] else {})
    return got, problems
