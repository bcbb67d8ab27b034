"""Session files written with recorder's real writer, flow by flow, for tests of the
reading tools (show, export, replay planning). A flow is a request and its reply, the
reply either buffered or as SSE chunks."""
from __future__ import annotations

import json
from pathlib import Path

from recorder.store import format_v1
from recorder.store.sessions import SessionRegistry
from recorder.store.writer import RecordWriter

T0 = 1767225600.0


def sse(data, event=None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data)
    return (f"event: {event}\n" if event else "").encode() + f"data: {text}\n\n".encode()


class Recorder:
    """Writes one session with recorder's writer; flows are added as (request, reply)."""

    def __init__(self, store: Path):
        self.writer = RecordWriter(fsync="never")
        self.writer.start()
        self.clock = [T0]
        self.reg = SessionRegistry(self.writer, store, idle_timeout=60, max_duration=600, clock=lambda: self.clock[0])
        ident = {"sub": "alice", "email": "alice@example.com", "groups": ["eng"], "iss": "https://idp/", "method": "jwt", "authenticated": True}
        self.session = self.reg.begin_flow("alice", ident, ("10.0.0.9", 50000))
        self.n = 0

    def raw(self, t: str, fields: dict) -> None:
        self.n += 1
        self.session.record(t, fields, ts=T0 + self.n)

    def flow(self, url: str, request: dict | bytes | None, reply: dict | bytes, *, method="POST", status=200,
             sse_chunks: list[bytes] | None = None, ua="agent/1.0", stream_request: list[bytes] | None = None) -> str:
        self.n += 1
        flow = f"f{self.n:07d}-0000-0000-0000-000000000000"
        body = request if isinstance(request, (bytes, type(None))) else json.dumps(request).encode()
        ts = T0 + self.n
        self.session.record("http.request", {
            "flow": flow, "conn": "c1", "connection": "llm", "method": method, "url": url, "http_version": "HTTP/1.1",
            "headers": [["content-type", "application/json"], ["user-agent", ua], ["authorization", "[credential:llm]"]],
            "body": None if stream_request else (format_v1.encode_body(body) if body else None),
            "streamed": bool(stream_request)}, ts=ts)
        for i, c in enumerate(stream_request or ()):
            self.session.record("http.chunk", {"flow": flow, "dir": "request", "n": i, "body": format_v1.encode_body(c)}, ts=ts)
        if sse_chunks is not None:
            self.session.record("http.response", {"flow": flow, "status": status, "reason": "OK", "http_version": "HTTP/1.1",
                                                  "headers": [["content-type", "text/event-stream"]], "body": None, "streamed": True}, ts=ts + 0.1)
            for i, c in enumerate(sse_chunks):
                self.session.record("http.chunk", {"flow": flow, "dir": "response", "n": i, "body": format_v1.encode_body(c)}, ts=ts + 0.2)
        else:
            rbody = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
            self.session.record("http.response", {"flow": flow, "status": status, "reason": "OK", "http_version": "HTTP/1.1",
                                                  "headers": [["content-type", "application/json"]], "body": format_v1.encode_body(rbody), "streamed": False}, ts=ts + 0.1)
        self.session.record("http.end", {"flow": flow, "status": status, "size": {"request": 10, "response": 20}, "duration_ms": 1234.0, "ttfb_ms": 56.0}, ts=ts + 0.5)
        return flow

    def close(self) -> Path:
        self.reg.end_flow(self.session)
        self.reg.close_all()
        assert self.writer.stop()
        return self.session.path
