"""One recorded exchange, put back together from its records.

show, export and replay all want the same thing from a session file: per flow, the
request and response heads, the bodies (buffered, or rebuilt from http.chunk records),
the end-of-flow numbers and any error. Records of flows the gateway refused or tunnelled
(`auth.refused`, `tunnel`) come out as exchanges too, marked by `kind`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from urllib.parse import urlsplit

from recorder.store import format_v1

MASK_PREFIX = "[MASKED:"
CREDENTIAL_PREFIX = "[credential:"


@dataclass
class Exchange:
    flow: str
    kind: str = "http"  # "http", "auth.refused", "tunnel", "tcp", "tcp.refused"
    index: int = 0  # 1-based position in the session, by first record
    ts: float | None = None  # first record of the flow
    request: dict | None = None  # the http.request record
    response: dict | None = None  # the http.response record
    end: dict | None = None  # the http.end record
    errors: list[dict] = field(default_factory=list)
    other: dict | None = None  # the auth.refused / tunnel record
    request_chunks: list[dict] = field(default_factory=list)
    response_chunks: list[dict] = field(default_factory=list)
    # After a 101 upgrade: the ws.open / ws.message / ws.close records (kind stays "http").
    # A raw TCP flow (kind "tcp"): tcp.open in `other`, its tcp.message records, tcp.close in `end`.
    ws_open: dict | None = None
    ws_close: dict | None = None
    messages: list[dict] = field(default_factory=list)

    # -- heads --------------------------------------------------------------------------

    @property
    def method(self) -> str | None:
        src = self.request or self.other or {}
        return src.get("method") if isinstance(src.get("method"), str) else None

    def message_body(self, rec: dict) -> bytes:
        """The bytes of one ws.message / tcp.message record."""
        return format_v1.decode_body(rec.get("body")) if isinstance(rec.get("body"), dict) else b""

    @property
    def url(self) -> str | None:
        src = self.request or self.other or {}
        if isinstance(src.get("url"), str):
            return src["url"]
        if self.kind in ("tunnel", "tcp", "tcp.refused") and src.get("host"):
            return f"{src.get('host')}:{src.get('port')}"
        return None

    @property
    def path(self) -> str:
        return urlsplit(self.url or "").path

    @property
    def host(self) -> str | None:
        if self.kind in ("tunnel", "tcp", "tcp.refused") and self.other:
            return self.other.get("host")
        return urlsplit(self.url or "").hostname

    @property
    def status(self) -> int | None:
        if self.response and isinstance(self.response.get("status"), int):
            return self.response["status"]
        if self.other and isinstance(self.other.get("status"), int):
            return self.other["status"]
        return None

    def request_header(self, name: str) -> str | None:
        return header(self.request.get("headers") if self.request else None, name)

    def response_header(self, name: str) -> str | None:
        return header(self.response.get("headers") if self.response else None, name)

    # -- bodies -------------------------------------------------------------------------

    def _body(self, head: dict | None, chunks: list[dict]) -> bytes:
        if head is not None and isinstance(head.get("body"), dict):
            return format_v1.decode_body(head["body"])
        return b"".join(format_v1.decode_body(c.get("body")) for c in chunks if isinstance(c.get("body"), dict))

    @property
    def request_body(self) -> bytes:
        return self._body(self.request, self.request_chunks)

    @property
    def response_body(self) -> bytes:
        return self._body(self.response, self.response_chunks)

    def _truncated(self, head: dict | None, chunks: list[dict]) -> bool:
        bodies = [head.get("body")] if head is not None and isinstance(head.get("body"), dict) else []
        bodies += [c.get("body") for c in chunks]
        return any(isinstance(b, dict) and b.get("truncated") for b in bodies)

    @property
    def request_truncated(self) -> bool:
        return self._truncated(self.request, self.request_chunks)

    @property
    def response_truncated(self) -> bool:
        return self._truncated(self.response, self.response_chunks)

    @property
    def response_streamed(self) -> bool:
        return bool(self.response and self.response.get("streamed"))

    @property
    def request_streamed(self) -> bool:
        return bool(self.request and self.request.get("streamed"))

    # -- timing -------------------------------------------------------------------------

    @property
    def duration_ms(self) -> float | None:
        v = (self.end or {}).get("duration_ms")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None

    @property
    def ttfb_ms(self) -> float | None:
        v = (self.end or {}).get("ttfb_ms")
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def header(headers, name: str) -> str | None:
    """The first value of a header in a recorded [[name, value], ...] list."""
    name = name.lower()
    for pair in headers or ():
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and str(pair[0]).lower() == name:
            return str(pair[1])
    return None


def exchanges(records: list[dict]) -> list[Exchange]:
    """Every flow of a session, in the order its first record appears."""
    out: dict[str, Exchange] = {}
    for rec in records:
        flow = rec.get("flow")
        if not isinstance(flow, str):
            if rec.get("t") not in ("auth.refused", "tunnel", "tcp.refused"):
                continue
            flow = f"{rec.get('t')}-{rec.get('seq')}"  # a tunnel is not an HTTP flow
        ex = out.get(flow)
        if ex is None:
            ex = out[flow] = Exchange(flow=flow, index=len(out) + 1, ts=_ts(rec))
        t = rec.get("t")
        if t == "http.request":
            ex.request = rec
        elif t == "http.response":
            ex.response = rec
        elif t == "http.chunk":
            (ex.request_chunks if rec.get("dir") == "request" else ex.response_chunks).append(rec)
        elif t == "http.end":
            ex.end = rec
        elif t == "http.error":
            ex.errors.append(rec)
        elif t in ("auth.refused", "tunnel", "tcp.refused"):
            ex.kind = t
            ex.other = rec
        elif t == "ws.open":
            ex.ws_open = rec
        elif t in ("ws.message", "tcp.message"):
            ex.messages.append(rec)
        elif t == "ws.close":
            ex.ws_close = rec
        elif t == "tcp.open":
            ex.kind = "tcp"
            ex.other = rec
        elif t == "tcp.close":
            ex.end = rec
    return list(out.values())


def _ts(rec: dict) -> float | None:
    ts = rec.get("ts")
    return float(ts) if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None
