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

import json
from dataclasses import dataclass
from urllib.parse import parse_qs, urlsplit

from recorder.store import format_v1
from recorder.http import json_depth
from recorder.http.sse import SSEEvent, SSEParser, is_sse
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


def _num(rec: dict | None, key: str, default=0):
    v = (rec or {}).get(key)
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def _is_sse(content_type: str | None, body_start: bytes) -> bool:
    # A stream may also start with its event's id.
    return is_sse(content_type, body_start) or body_start.lstrip()[:3] == b"id:"


def _json_messages(data: bytes) -> list[dict]:
    return rpc_messages(json_depth.loads(data)) if data.strip()[:1] in (b"{", b"[") else []


@dataclass
class ExchangeWire:
    """What one exchange carried, as MCP."""

    messages: list[WireMessage]
    endpoint: str | None = None  # the HTTP+SSE `endpoint` event's URL
    sse_events: int = 0
    other_events: list[SSEEvent] | None = None  # SSE events that are neither JSON-RPC nor the endpoint


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
        # Each event with the time and seq of the chunk that completed it, and the time of the one before.
        parser, events, ts_min = SSEParser(), [], _num(resp, "ts")
        chunks = ex.response_chunks
        for k, chunk in enumerate(chunks):
            ts, seq = _num(chunk, "ts"), _num(chunk, "seq")
            events += [(ev, ts, seq, ts_min) for ev in parser.feed(format_body(chunk), final=k == len(chunks) - 1)]
            ts_min = ts
    else:
        body = ex.response_body
        if not _is_sse(ctype, body[:64]):
            for i, rpc in enumerate(_json_messages(body)):
                out.messages.append(WireMessage(rpc, SERVER, _num(resp, "ts"), (_num(resp, "seq"), i), ex.flow,
                                                stream, ex.index))
            return out
        events = [(ev, _num(resp, "ts"), _num(resp, "seq"), None) for ev in SSEParser().feed(body, final=True)]
    out.sse_events = len(events)
    others = []
    for k, (ev, ts, seq, ts_min) in enumerate(events):
        if ev.event == "endpoint":
            out.endpoint = ev.data.strip()
            continue
        msgs = rpc_messages(json_depth.loads(ev.data)) if ev.data.strip()[:1] in ("{", "[") else []
        if not msgs:
            others.append(ev)
        for i, rpc in enumerate(msgs):
            out.messages.append(WireMessage(rpc, SERVER, ts, (seq, k, i), ex.flow, stream, ex.index,
                                            event_id=ev.id, raw=ev.data, ts_min=ts_min))
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
