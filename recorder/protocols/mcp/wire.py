"""The MCP messages one recorded exchange carried, each with when it crossed and on which stream.

MCP over HTTP puts JSON-RPC messages in three places: a POST body (the client's requests,
notifications and answers), the POST's reply (JSON, or an SSE stream that can carry the
server's progress, requests and the response), and a stream the server keeps open (the
Streamable HTTP GET stream; the HTTP+SSE transport's GET /sse, which carries every reply).
A message's time is that of the record that completed it: an SSE event is complete in the
chunk that holds its blank line, so messages of a long stream keep their own times.
Over stdio (`wiretrail mcp-stdio`) each `mcp.message` record is one line, one message.
"""
from __future__ import annotations

import codecs
import json
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from recorder.store import format_v1
from recorder.http import json_depth
from recorder.protocols.mcp.jsonrpc import rpc_messages

CLIENT = "client"
SERVER = "server"

# Streams a message can come on.
POST = "post"  # a POST body (client to server)
REPLY = "reply"  # the reply to a POST (JSON or SSE)
GET = "get"  # a stream the server keeps open (Streamable HTTP GET, HTTP+SSE GET /sse)
STDIO = "stdio"

SESSION_HEADER = "mcp-session-id"
SSE_SESSION_PARAMS = ("session_id", "sessionId")  # the HTTP+SSE endpoint's query (Python / TypeScript SDKs)


@dataclass
class WireMessage:
    rpc: dict  # one JSON-RPC object
    sender: str  # CLIENT or SERVER
    ts: float
    order: tuple  # (seq of the completing record, position in it): a total order with ts
    flow: str
    stream: str  # POST, REPLY, GET, STDIO
    index: int  # the exchange's [n] in the session (0 over stdio)
    event_id: str | None = None  # the SSE event's id (Last-Event-ID resumption)
    raw: str | None = None  # the SSE data or the line, to tell a resent duplicate from a different message
    # A streamed message is stamped with the record that completed it: it arrived after the
    # record before it on the same stream (ts_min) and by `ts`. POST bodies and stdio lines are
    # recorded as they arrive: ts_min = ts.
    ts_min: float | None = None

    @property
    def earliest(self) -> float:
        return self.ts if self.ts_min is None else min(self.ts_min, self.ts)


@dataclass
class SseEvent:
    event: str
    data: str
    id: str | None
    ts: float
    seq: int
    ts_min: float | None = None


class SseParser:
    """Server-Sent Events from text fed in pieces (the recorded chunks), each event stamped
    with the time and seq of the piece that completed it."""

    def __init__(self):
        self.ts_min: float | None = None  # the time of the piece before the current one
        self._buf = ""
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._data: list[str] = []
        self._event = ""
        self._id: str | None = None
        self.events: list[SseEvent] = []

    def feed(self, data: bytes, ts: float, seq: int, final: bool = False) -> None:
        self._buf += self._decoder.decode(data, final)
        text = self._buf
        start = 0
        i = 0
        n = len(text)
        while i < n:
            c = text[i]
            if c == "\n" or c == "\r":
                if c == "\r" and i + 1 == n and not final:
                    break  # a CR at the end may be half of a CRLF
                self._line(text[start:i], ts, seq)
                i += 2 if c == "\r" and i + 1 < n and text[i + 1] == "\n" else 1
                start = i
                continue
            i += 1
        self._buf = text[start:]
        if final:
            if self._buf:
                self._line(self._buf, ts, seq)
                self._buf = ""
            self._line("", ts, seq)  # a stream cut before its blank line still has its last event

    def _line(self, line: str, ts: float, seq: int) -> None:
        if line == "":
            if self._data or self._event:
                self.events.append(SseEvent(self._event or "message", "\n".join(self._data), self._id, ts, seq,
                                            self.ts_min))
            self._data, self._event, self._id = [], "", None
            return
        if line.startswith(":"):
            return
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            self._id = value


def _num(rec: dict | None, key: str, default=0):
    v = (rec or {}).get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def _is_sse(content_type: str | None, body_start: bytes) -> bool:
    if content_type and "text/event-stream" in content_type.lower():
        return True
    return body_start.lstrip()[:6] in (b"data:", b"event:") or body_start.lstrip()[:3] == b"id:"


def _json_messages(data: bytes) -> list[dict]:
    return rpc_messages(json_depth.loads(data)) if data.strip()[:1] in (b"{", b"[") else []


@dataclass
class ExchangeWire:
    """What one exchange carried, as MCP."""

    messages: list[WireMessage]
    endpoint: str | None = None  # the HTTP+SSE `endpoint` event's URL
    sse_events: int = 0
    other_events: list[SseEvent] | None = None  # SSE events that are neither JSON-RPC nor the endpoint


def exchange_wire(ex) -> ExchangeWire:
    """The MCP messages of one HTTP exchange (recorder.forensics.exchange.Exchange)."""
    out = ExchangeWire([])
    req = ex.request or {}
    if ex.request_chunks:
        last = ex.request_chunks[-1]
        ts, seq = _num(last, "ts", _num(req, "ts")), _num(last, "seq")
    else:
        ts, seq = _num(req, "ts"), _num(req, "seq")
    for i, rpc in enumerate(_json_messages(ex.request_body)):
        out.messages.append(WireMessage(rpc, CLIENT, ts, (seq, i), ex.flow, POST, ex.index))
    if ex.response is None:
        return out
    get = (ex.method or "").upper() == "GET"
    stream = GET if get else REPLY
    ctype = ex.response_header("content-type")
    resp = ex.response
    if ex.response_chunks:
        first = format_body(ex.response_chunks[0])
        if not _is_sse(ctype, first):
            body = ex.response_body
            last = ex.response_chunks[-1]
            for i, rpc in enumerate(_json_messages(body)):
                out.messages.append(WireMessage(rpc, SERVER, _num(last, "ts"), (_num(last, "seq"), i), ex.flow,
                                                stream, ex.index, ts_min=_num(resp, "ts")))
            return out
        parser = SseParser()
        parser.ts_min = _num(resp, "ts")
        chunks = ex.response_chunks
        for k, chunk in enumerate(chunks):
            parser.feed(format_body(chunk), _num(chunk, "ts"), _num(chunk, "seq"), final=k == len(chunks) - 1)
            parser.ts_min = _num(chunk, "ts")
        events = parser.events
    else:
        body = ex.response_body
        if not _is_sse(ctype, body[:64]):
            for i, rpc in enumerate(_json_messages(body)):
                out.messages.append(WireMessage(rpc, SERVER, _num(resp, "ts"), (_num(resp, "seq"), i), ex.flow,
                                                stream, ex.index))
            return out
        parser = SseParser()
        parser.feed(body, _num(resp, "ts"), _num(resp, "seq"), final=True)
        events = parser.events
    out.sse_events = len(events)
    others = []
    for k, ev in enumerate(events):
        if ev.event == "endpoint":
            out.endpoint = ev.data.strip()
            continue
        msgs = rpc_messages(json_depth.loads(ev.data)) if ev.data.strip()[:1] in ("{", "[") else []
        if not msgs:
            others.append(ev)
        for i, rpc in enumerate(msgs):
            out.messages.append(WireMessage(rpc, SERVER, ev.ts, (ev.seq, k, i), ex.flow, stream, ex.index,
                                            event_id=ev.id, raw=ev.data, ts_min=ev.ts_min))
    out.other_events = others
    return out


def format_body(rec: dict) -> bytes:
    body = rec.get("body")
    return format_v1.decode_body(body) if isinstance(body, dict) else b""


def stdio_message(rec: dict) -> list[WireMessage]:
    """The JSON-RPC messages of one `mcp.message` record (one line over stdio)."""
    data = format_body(rec)
    sender = CLIENT if rec.get("from") == CLIENT else SERVER
    text = data.decode("utf-8", "replace")
    return [WireMessage(rpc, sender, _num(rec, "ts"), (_num(rec, "seq"), i), str(rec.get("flow")), STDIO, 0,
                        raw=text)
            for i, rpc in enumerate(_json_messages(data))]


def sse_session_of(url: str | None) -> str | None:
    """The HTTP+SSE session id in an endpoint or POST URL (?session_id= or ?sessionId=)."""
    if not url:
        return None
    query = parse_qs(urlsplit(url).query)
    for name in SSE_SESSION_PARAMS:
        if query.get(name):
            return query[name][0]
    return None


def origin(url: str | None) -> str:
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}"


def without_query(url: str | None) -> str:
    parts = urlsplit(url or "")
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


def looks_like_mcp(ex, wire: ExchangeWire) -> bool:
    """An exchange of MCP: JSON-RPC in a body, an HTTP+SSE endpoint, or the session header."""
    if wire.messages or wire.endpoint:
        return True
    if ex.request_header(SESSION_HEADER) or ex.response_header(SESSION_HEADER):
        return True
    return bool(sse_session_of(ex.url)) and (ex.method or "").upper() == "POST"


def dumps(value) -> str:
    return json.dumps(value, ensure_ascii=False, sort_keys=False)
