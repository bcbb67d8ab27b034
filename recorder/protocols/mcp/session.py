"""One MCP session across the flows that carried it, as an ordered tool-call log.

An MCP session spans many HTTP exchanges: Streamable HTTP sends each client message in a POST
and its reply comes back on that POST's stream or on the GET stream the server keeps open; the
old HTTP+SSE transport answers every POST with 202 and puts every reply on its GET /sse stream.
Exchanges are grouped by the `Mcp-Session-Id` header (Streamable HTTP) or the `session_id` /
`sessionId` of the HTTP+SSE endpoint; a server that gives no session id has one session per
`initialize` on its URL. Over stdio (`wiretrail mcp-stdio`) each server process is one session.

Within a session, a request is paired with its response by JSON-RPC id and direction (each side
numbers its own requests), wherever the response came; progress notifications go to the call
whose progressToken they carry; an event resent after a `Last-Event-ID` resumption (same event
id, same data) or a response seen twice is dropped and counted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field

from recorder.protocols.mcp import jsonrpc
from recorder.protocols.mcp.wire import (
    CLIENT, GET, POST, REPLY, SERVER, SESSION_HEADER, STDIO, WireMessage, exchange_wire, looks_like_mcp, origin,
    sse_session_of, stdio_message, without_query,
)

STREAMABLE = "streamable-http"
HTTP_SSE = "http+sse"
STDIO_TRANSPORT = "stdio"
TRANSPORT_NAMES = {STREAMABLE: "Streamable HTTP", HTTP_SSE: "HTTP+SSE", STDIO_TRANSPORT: "stdio (wiretrail mcp-stdio)"}

# Requests the server sends the client, shown with the client's answer.
SERVER_REQUESTS = ("sampling/createMessage", "elicitation/create", "roots/list", "ping")


@dataclass
class Entry:
    """One line of the log: a request (with its answer), a notification, or a session event."""

    kind: str  # "request", "notification", "end", "transport", "unpaired", "note"
    ts: float
    sender: str | None = None  # who sent the message that opened the entry
    method: str | None = None
    id: object = None
    params: object = None
    flow: str | None = None
    index: int = 0
    stream: str | None = None
    # The answer to a request:
    answered: bool = False
    result: object = None
    error: dict | None = None
    answer_ts: float | None = None
    answer_stream: str | None = None
    answer_index: int = 0
    order: tuple = ()  # the message's place among records (WireMessage.order)
    answer_flow: str | None = None
    answer_order: tuple = ()
    answer_earliest: float | None = None  # the answer arrived after this (see WireMessage.ts_min)
    progress: list = field(default_factory=list)  # [(ts, params)] of notifications/progress
    during: "Entry | None" = None  # a server request: the client request it came during
    cancelled: object = None  # the params of a notifications/cancelled for it
    tools: list | None = None  # tools/list: [{"name", "description"}]
    tools_diff: dict | None = None  # tools/list after an earlier one: {"added", "removed", "changed"}
    text: str | None = None  # session events and notes: what happened, in words
    http_status: int | None = None  # a POST refused or failed at the HTTP level
    timing_unknown: bool = False  # a server request recorded after the client's answer (chunk batching)

    @property
    def duration_ms(self) -> float | None:
        if self.answer_ts is None or self.timing_unknown:
            return None
        return round((self.answer_ts - self.ts) * 1000, 3)

    @property
    def is_tool_call(self) -> bool:
        return self.method == "tools/call"

    @property
    def tool(self) -> str | None:
        if self.is_tool_call and isinstance(self.params, dict):
            return str(self.params.get("name"))
        return None

    @property
    def is_error(self) -> bool:
        if self.error is not None:
            return True
        return isinstance(self.result, dict) and self.result.get("isError") is True


@dataclass
class McpSession:
    key: tuple
    transport: str  # STREAMABLE, HTTP_SSE, STDIO_TRANSPORT
    url: str | None
    session_id: str | None
    connection: str | None = None
    indexes: list[int] = field(default_factory=list)  # the exchanges' [n] (HTTP)
    flows: list[str] = field(default_factory=list)
    messages: list[WireMessage] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)
    duplicates: int = 0  # messages dropped as resent (Last-Event-ID) or seen twice
    client_info: dict | None = None
    server_info: dict | None = None
    protocol_version: str | None = None
    capabilities: dict = field(default_factory=dict)  # {"client": ..., "server": ...}
    instructions: str | None = None
    notes: list[str] = field(default_factory=list)
    ts: float | None = None
    stdio: dict | None = None  # the mcp.open record's command and pid

    @property
    def first_index(self) -> int:
        return min(self.indexes) if self.indexes else 0

    @property
    def calls(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "request"]

    @property
    def tool_calls(self) -> list[Entry]:
        return [e for e in self.entries if e.kind == "request" and e.is_tool_call]


# -- grouping ---------------------------------------------------------------------------------


def _key(ex, wire, generations: dict) -> tuple:
    sid = ex.request_header(SESSION_HEADER) or ex.response_header(SESSION_HEADER)
    if sid:
        return (STREAMABLE, without_query(ex.url), sid)
    sse = sse_session_of(wire.endpoint) or sse_session_of(ex.url)
    if sse:
        return (HTTP_SSE, origin(ex.url), sse)
    url = without_query(ex.url)
    if any(m.rpc.get("method") == "initialize" for m in wire.messages if m.sender == CLIENT):
        generations[url] = generations.get(url, 0) + 1
    return (STREAMABLE, url, None, generations.get(url, 0))


def http_sessions(exchanges) -> tuple[list[McpSession], dict[str, McpSession]]:
    """The MCP sessions among a session file's exchanges, and which flow belongs to which."""
    by_key: dict[tuple, McpSession] = {}
    of_flow: dict[str, McpSession] = {}
    generations: dict[str, int] = {}
    ends: dict[tuple, list] = {}
    for ex in exchanges:
        if ex.kind != "http" or ex.request is None or ex.ws_open is not None:
            continue
        wire = exchange_wire(ex)
        if not looks_like_mcp(ex, wire):
            continue
        key = _key(ex, wire, generations)
        s = by_key.get(key)
        if s is None:
            transport = key[0]
            s = by_key[key] = McpSession(key, transport, without_query(ex.url) if transport == STREAMABLE else None,
                                         key[2], connection=(ex.request or {}).get("connection"), ts=ex.ts)
        if s.transport == HTTP_SSE and wire.endpoint is not None:
            s.url = without_query(ex.url)  # the GET /sse URL names the session's server
        s.indexes.append(ex.index)
        s.flows.append(ex.flow)
        s.messages.extend(wire.messages)
        of_flow[ex.flow] = s
        ends.setdefault(key, []).append(ex)
    sessions = sorted(by_key.values(), key=lambda s: s.first_index)
    for s in sessions:
        build_log(s, ends[s.key])
    return sessions, of_flow


def stdio_sessions(records: list[dict]) -> list[McpSession]:
    """The sessions `wiretrail mcp-stdio` recorded (mcp.open, mcp.message, mcp.close by flow)."""
    by_flow: dict[str, McpSession] = {}
    closes: dict[str, dict] = {}
    for rec in records:
        t = rec.get("t")
        if t not in ("mcp.open", "mcp.message", "mcp.close"):
            continue
        flow = str(rec.get("flow"))
        s = by_flow.get(flow)
        if s is None:
            s = by_flow[flow] = McpSession((STDIO_TRANSPORT, flow), STDIO_TRANSPORT, None, None, ts=rec.get("ts"))
            s.flows.append(flow)
        if t == "mcp.open":
            s.stdio = {k: rec.get(k) for k in ("command", "pid", "name", "cwd") if rec.get(k) is not None}
            s.connection = rec.get("name")
        elif t == "mcp.message":
            s.messages.extend(stdio_message(rec))
        else:
            closes[flow] = rec
    for flow, s in by_flow.items():
        build_log(s, [], close=closes.get(flow))
    return list(by_flow.values())


# -- the log ------------------------------------------------------------------------------------


def _dedup(s: McpSession) -> list[WireMessage]:
    s.messages.sort(key=lambda m: (m.ts, m.order))
    seen_events: dict[tuple, str | None] = {}
    seen_answers: dict[tuple, str] = {}
    out = []
    for m in s.messages:
        if m.event_id is not None:
            key = (m.sender, m.event_id, jsonrpc.id_key(m.rpc.get("id")), m.rpc.get("method"))
            if key in seen_events and seen_events[key] == m.raw:
                s.duplicates += 1
                continue
            seen_events[key] = m.raw
        k = jsonrpc.kind(m.rpc)
        if k in (jsonrpc.RESULT, jsonrpc.ERROR):
            key = (m.sender, jsonrpc.id_key(m.rpc.get("id")))
            canon = json.dumps(m.rpc, sort_keys=True)
            if seen_answers.get(key) == canon:
                s.duplicates += 1
                continue
            seen_answers[key] = canon
        out.append(m)
    return out


def _tools_of(result) -> list[dict] | None:
    if not isinstance(result, dict) or not isinstance(result.get("tools"), list):
        return None
    return [t for t in result["tools"] if isinstance(t, dict)]


def _tools_diff(before: list[dict], after: list[dict]) -> dict:
    b = {str(t.get("name")): t for t in before}
    a = {str(t.get("name")): t for t in after}
    canon = lambda t: json.dumps(t, sort_keys=True, ensure_ascii=False)  # noqa: E731
    return {
        "added": [a[n] for n in a if n not in b],
        "removed": [n for n in b if n not in a],
        "changed": [{"name": n, "before": b[n], "after": a[n]} for n in a if n in b and canon(a[n]) != canon(b[n])],
    }


def _progress_token(params) -> object:
    meta = params.get("_meta") if isinstance(params, dict) else None
    return meta.get("progressToken") if isinstance(meta, dict) else None


def build_log(s: McpSession, exchanges: list, close: dict | None = None) -> None:
    """Pair and order the session's messages into its log (s.entries)."""
    messages = _dedup(s)
    requests: dict[tuple, list[Entry]] = {}  # (sender of the request, id) -> its entries, oldest first
    by_token: dict[str, Entry] = {}
    post_requests: dict[str, list[Entry]] = {}  # flow -> the client requests its POST carried
    entries: list[Entry] = []
    server_requests: list[tuple[Entry, WireMessage]] = []
    # Requests first: an answer pairs with its request by id wherever and whenever it was recorded.
    for m in messages:
        rpc = m.rpc
        if jsonrpc.kind(rpc) != jsonrpc.REQUEST:
            continue
        e = Entry("request", m.ts, m.sender, rpc.get("method"), rpc.get("id"), rpc.get("params"), m.flow,
                  m.index, m.stream, order=m.order)
        requests.setdefault((m.sender, jsonrpc.id_key(rpc.get("id"))), []).append(e)
        token = _progress_token(rpc.get("params"))
        if token is not None:
            by_token[jsonrpc.id_key(token)] = e
        if m.sender == CLIENT and m.stream in (POST, STDIO):
            post_requests.setdefault(m.flow, []).append(e)
        if m.sender == SERVER:
            server_requests.append((e, m))
        if rpc.get("method") == "initialize" and m.sender == CLIENT and isinstance(rpc.get("params"), dict):
            p = rpc["params"]
            s.client_info = p.get("clientInfo") if isinstance(p.get("clientInfo"), dict) else None
            s.capabilities["client"] = p.get("capabilities")
        entries.append(e)
    for m in messages:
        rpc = m.rpc
        k = jsonrpc.kind(rpc)
        if k in (jsonrpc.RESULT, jsonrpc.ERROR):
            asker = CLIENT if m.sender == SERVER else SERVER
            waiting = [e for e in requests.get((asker, jsonrpc.id_key(rpc.get("id"))), ()) if not e.answered]
            if not waiting:
                entries.append(Entry("unpaired", m.ts, m.sender, None, rpc.get("id"), None, m.flow, m.index, m.stream,
                                     answered=True, result=rpc.get("result"), error=rpc.get("error")))
                continue
            e = waiting[0]
            e.answered = True
            e.result = rpc.get("result")
            e.error = rpc.get("error") if k == jsonrpc.ERROR else None
            e.answer_ts = m.ts
            e.answer_stream = m.stream
            e.answer_index = m.index
            e.answer_flow = m.flow
            e.answer_order = m.order
            e.answer_earliest = m.earliest
            if e.answer_ts < e.ts:
                # A stream's message is stamped when its batch was recorded (within
                # capture.chunk_interval of its arrival): it was sent before the answer to it,
                # when is known only to that interval, so no duration is given.
                e.ts = e.answer_ts
                e.timing_unknown = True
        elif k == jsonrpc.NOTIFICATION:
            method = rpc.get("method")
            params = rpc.get("params")
            if method == "notifications/progress" and isinstance(params, dict):
                owner = by_token.get(jsonrpc.id_key(params.get("progressToken")))
                if owner is not None:
                    owner.progress.append((m.ts, params))
                    continue
            if method == "notifications/cancelled" and isinstance(params, dict):
                for target in requests.get((m.sender, jsonrpc.id_key(params.get("requestId"))), ()):
                    target.cancelled = params
            entries.append(Entry("notification", m.ts, m.sender, method, None, params, m.flow, m.index, m.stream))
        elif k is None:
            entries.append(Entry("note", m.ts, m.sender, flow=m.flow, index=m.index, stream=m.stream,
                                 text="not a JSON-RPC message: " + json.dumps(rpc, ensure_ascii=False)[:500]))
    for e in entries:
        if e.kind == "request" and e.method == "initialize" and e.sender == CLIENT and isinstance(e.result, dict):
            r = e.result
            s.server_info = r.get("serverInfo") if isinstance(r.get("serverInfo"), dict) else None
            s.protocol_version = r.get("protocolVersion")
            s.capabilities["server"] = r.get("capabilities")
            s.instructions = r.get("instructions") if isinstance(r.get("instructions"), str) else None
    for e, m in server_requests:
        e.during = _during(e, m, post_requests, entries)
    entries.extend(_transport_entries(s, exchanges, post_requests, close))
    entries.sort(key=lambda e: e.ts)
    last_tools: list[dict] | None = None
    for e in entries:  # in time order: each tools/list against the one before
        tools = _tools_of(e.result) if e.kind == "request" and e.method == "tools/list" else None
        if tools is not None:
            e.tools = tools
            if last_tools is not None:
                e.tools_diff = _tools_diff(last_tools, tools)
            last_tools = tools
    s.entries = entries
    if s.duplicates:
        s.notes.append(f"{s.duplicates} message(s) seen twice (resent after a Last-Event-ID resumption, or "
                       "repeated) were dropped")


def _during(req: Entry, m: WireMessage, post_requests: dict[str, list[Entry]], entries: list[Entry]) -> Entry | None:
    """The client request a server request belongs to: the one whose reply stream carried it, or
    else the only client tools/call still waiting at that moment."""
    if m.stream == REPLY and post_requests.get(m.flow):
        return post_requests[m.flow][0]
    def before(e: Entry) -> bool:  # answered before the server request: one stream keeps its order exactly
        if e.answer_flow == req.flow:
            return e.answer_order < req.order
        return (e.answer_ts or 0) < req.ts

    waiting = [e for e in entries if e.kind == "request" and e.sender == CLIENT and e.is_tool_call and
               e.ts <= req.ts and not (e.answered and before(e))]
    return waiting[0] if len(waiting) == 1 else None


def _transport_entries(s: McpSession, exchanges: list, post_requests: dict, close: dict | None) -> list[Entry]:
    """What happened at the HTTP (or process) level: the session's end, refused or failed
    requests, streams that broke."""
    out: list[Entry] = []
    for ex in exchanges:
        method = (ex.method or "").upper()
        status = ex.status
        if method == "DELETE" and ex.request_header(SESSION_HEADER):
            how = f"-> {status}" if status is not None else "(no response recorded)"
            out.append(Entry("end", ex.ts or 0, CLIENT, flow=ex.flow, index=ex.index,
                             text=f"the client ended the MCP session (DELETE) {how}"))
            continue
        if status is not None and status >= 400:
            for e in post_requests.get(ex.flow, ()):
                if not e.answered:
                    e.http_status = status
            body = ex.response_body[:300].decode("utf-8", "replace")
            out.append(Entry("transport", ex.ts or 0, SERVER, flow=ex.flow, index=ex.index, http_status=status,
                             text=f"{method} -> {status}" + (f": {body}" if body else "")))
        for err in ex.errors:
            if err.get("normal") or _closed_when_done(ex, err, method, post_requests):
                continue
            out.append(Entry("transport", err.get("ts") or ex.ts or 0, None, flow=ex.flow, index=ex.index,
                             text=f"{method} [{ex.index}] failed ({err.get('phase')}): {err.get('message')}"))
        if method == "GET" and (status or 0) < 400:
            out.append(_stream_end(ex))
    if close is not None:
        out.append(Entry("end", close.get("ts") or 0, None, flow=str(close.get("flow")),
                         text=_stdio_end_text(close)))
    return [e for e in out if e is not None]


def _closed_when_done(ex, err: dict, method: str, post_requests: dict) -> bool:
    """A client that closes a stream once it has what it asked for ends it normally: a GET stream
    (it stops listening; the session's log says so), or a POST whose every request was answered."""
    if err.get("phase") != "client" or ex.response is None:
        return False
    if method == "GET":
        return True
    return ex.end is not None and all(e.answered for e in post_requests.get(ex.flow, ()))


def _stream_end(ex) -> Entry | None:
    """How the server's GET stream ended."""
    end = ex.end
    ts = (end or {}).get("ts") or ex.ts or 0
    if end is None:
        what = "no end" if ex.response is not None else "no response and no end"
        return Entry("end", ts, None, flow=ex.flow, index=ex.index, stream=GET,
                     text=f"the client opened the GET stream [{ex.index}]: {what} in the record (still open when "
                          "the gateway stopped or crashed)")
    closed = end.get("closed")
    if closed == "client" or any(err.get("phase") == "client" for err in ex.errors):
        who = "the client closed the GET stream"
    elif ex.errors:
        return None  # said by its transport entry
    else:
        who = "the server ended the GET stream"
    return Entry("end", ts, None, flow=ex.flow, index=ex.index, stream=GET, text=f"{who} [{ex.index}]")


def _stdio_end_text(close: dict) -> str:
    by = close.get("by")
    code = close.get("exit")
    how = {"client": "the client closed the server's stdin", "server": "the server exited",
           "signal": "mcp-stdio was stopped by a signal", "error": "recording failed"}.get(by, str(by))
    return f"session end: {how}" + (f"; exit status {code}" if code is not None else "") + (
        f" ({close.get('message')})" if close.get("message") else "")


def sessions_of(records: list[dict], exchanges) -> tuple[list[McpSession], dict[str, McpSession]]:
    """Every MCP session of a session file: over HTTP (among `exchanges`) and over stdio."""
    http, of_flow = http_sessions(exchanges)
    stdio = stdio_sessions(records)
    for s in stdio:
        for flow in s.flows:
            of_flow[flow] = s
    return http + stdio, of_flow
