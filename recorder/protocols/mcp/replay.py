"""A recorded MCP session re-run against another server (`scripts/replay.py`), results compared by id.

Resending an MCP session's HTTP exchanges one by one does not work: the recorded
`Mcp-Session-Id` (or HTTP+SSE `session_id`) means nothing to a fresh server, a call that
waits for a server request (sampling) never ends, and replies come on other streams. So an
MCP session is replayed as a session:

- it is initialized again with the recorded `initialize`, and the new server's session id
  (the `Mcp-Session-Id` header, or the HTTP+SSE `endpoint`) is used from then on;
- the client's requests and notifications are sent in their recorded order, with their
  recorded ids; a request that was sent before an earlier one was answered is sent while
  that one is still open (concurrently, as recorded);
- the server's requests (sampling, elicitation, roots, ping) are answered with the recorded
  answers to the same method, in order; the client's recorded answers are not resent;
- the server's answers are read from the POST's stream and from the GET stream alike and
  compared with the recorded ones by JSON-RPC id; masked spans of the recording are counted
  as masked, not compared (recorder/forensics/replay.py's comparison).
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from urllib.parse import urljoin, urlsplit

from recorder.http.sse import SSEEvent, SSEParser
from recorder.protocols.mcp import jsonrpc
from recorder.protocols.mcp.session import HTTP_SSE, STREAMABLE, McpSession
from recorder.protocols.mcp.wire import CLIENT, SESSION_HEADER, SERVER

ACCEPT = "application/json, text/event-stream"
NO_ANSWER = -32603


@dataclass
class CallResult:
    """One client request of the session: what was recorded and what the target answered."""

    id: object
    method: str
    tool: str | None
    recorded: dict | None  # {"result": ...} or {"error": ...}; None: no answer in the record
    live: dict | None = None
    error: str | None = None  # why there is no live answer
    first_difference: str | None = None
    masked_spans: int = 0

    @property
    def label(self) -> str:
        return f"[{jsonrpc.id_text(self.id)}] " + (f"tools/call {self.tool}" if self.tool else self.method)


@dataclass
class McpReplay:
    session: McpSession
    url: str  # the target's endpoint
    new_session_id: str | None = None
    calls: list[CallResult] = field(default_factory=list)
    server_requests: list[str] = field(default_factory=list)  # what the target asked, and how it was answered
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # why the session could not be replayed at all


def target_url(recorded: str | None, target: str) -> str:
    t, r = urlsplit(target), urlsplit(recorded or "")
    return f"{t.scheme}://{t.netloc}{t.path.rstrip('/')}{r.path or '/'}"


class _Live:
    """The target's side of the session: answers by id, server requests answered from the record."""

    def __init__(self, client, s: McpSession, headers: list[tuple[str, str]], timeout: float, out: McpReplay):
        self.client = client
        self.headers = headers
        self.timeout = timeout
        self.out = out
        self.answers: dict[str, dict] = {}
        self.cond = threading.Condition()
        self.session_id: str | None = None
        self.protocol_version: str | None = None
        self.post_url: str | None = None  # HTTP+SSE: the endpoint the server named
        self.closed = False
        self.recorded_answers: dict[str, list] = {}
        for e in s.entries:
            if e.kind == "request" and e.sender == SERVER and e.answered:
                answer = {"error": e.error} if e.error is not None else {"result": e.result}
                self.recorded_answers.setdefault(str(e.method), []).append(answer)

    def head(self, accept: str = ACCEPT) -> list[tuple[str, str]]:
        h = list(self.headers) + [("accept", accept)]
        if self.session_id:
            h.append(("mcp-session-id", self.session_id))
        if self.protocol_version:
            h.append(("mcp-protocol-version", self.protocol_version))
        return h

    def handle(self, msg: dict) -> None:
        k = jsonrpc.kind(msg)
        if k in (jsonrpc.RESULT, jsonrpc.ERROR):
            with self.cond:
                self.answers[jsonrpc.id_key(msg.get("id"))] = msg
                self.cond.notify_all()
        elif k == jsonrpc.REQUEST:
            method = str(msg.get("method"))
            queue = self.recorded_answers.get(method)
            if queue:
                answer = dict(queue.pop(0))
                how = "answered with the recorded answer"
            else:
                answer = {"error": {"code": NO_ANSWER, "message": f"replay: no recorded answer to {method}"}}
                how = "NOT in the record: answered with an error"
            self.out.server_requests.append(f"{method} [{jsonrpc.id_text(msg.get('id'))}]: {how}")
            threading.Thread(target=self.post, args=({"jsonrpc": "2.0", "id": msg.get("id"), **answer},),
                             daemon=True).start()

    def read_stream(self, resp) -> None:
        parser = SSEParser()
        for data in resp.iter_bytes():
            self._take(parser.feed(data))
            if self.closed:
                return
        self._take(parser.feed(b"", final=True))

    def _take(self, events: list[SSEEvent]) -> None:
        for ev in events:
            if ev.event == "endpoint":
                with self.cond:
                    self.post_url = urljoin(self.out.url, ev.data.strip())
                    self.cond.notify_all()
                continue
            try:
                parsed = json.loads(ev.data)
            except ValueError:
                continue
            for m in jsonrpc.rpc_messages(parsed):
                self.handle(m)

    def post(self, msg: dict) -> None:
        """Send one client message; read what its POST answers (JSON, or a stream) as it comes."""
        url = self.post_url or self.out.url
        body = json.dumps(msg).encode()
        with self.client.stream("POST", url, headers=self.head() + [("content-type", "application/json")],
                                content=body) as resp:
            if resp.status_code >= 400:
                text = resp.read()[:300].decode("utf-8", "replace")
                err = {"code": NO_ANSWER, "message": f"HTTP {resp.status_code}: {text}"}
                if jsonrpc.kind(msg) == jsonrpc.REQUEST:
                    self.handle({"jsonrpc": "2.0", "id": msg.get("id"), "error": err, "_http": resp.status_code})
                return
            if msg.get("method") == "initialize" and resp.headers.get(SESSION_HEADER):
                self.session_id = resp.headers[SESSION_HEADER]
            ctype = resp.headers.get("content-type", "")
            if "text/event-stream" in ctype:
                self.read_stream(resp)
                return
            data = resp.read()
            if data.strip()[:1] in (b"{", b"["):
                try:
                    for m in jsonrpc.rpc_messages(json.loads(data)):
                        self.handle(m)
                except ValueError:
                    pass

    def listen(self, url: str, ready: threading.Event | None = None) -> None:
        """The GET stream: the server's own requests and notifications (and, for HTTP+SSE, every answer)."""
        try:
            with self.client.stream("GET", url, headers=self.head("text/event-stream")) as resp:
                if ready is not None:
                    ready.set()
                if resp.status_code >= 400:
                    self.out.notes.append(f"the GET stream got HTTP {resp.status_code}")
                    return
                self.read_stream(resp)
        except Exception as e:  # noqa: BLE001 - the stream ends when the session does
            if not self.closed:
                self.out.notes.append(f"the GET stream ended: {type(e).__name__}: {e}")
        finally:
            if ready is not None:
                ready.set()

    def wait(self, id_, deadline: float) -> dict | None:
        key = jsonrpc.id_key(id_)
        with self.cond:
            while key not in self.answers:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.cond.wait(left)
            return self.answers[key]


def replay_session(s: McpSession, target: str, client, headers: list[tuple[str, str]], *, timeout: float = 120.0,
                   compare=None) -> McpReplay:
    """Re-run `s` against `target`; `compare(recorded, live, masked)` gives the first difference."""
    out = McpReplay(s, target_url(s.url, target))
    live = _Live(client, s, headers, timeout, out)
    client_msgs = sorted((m for m in s.messages if m.sender == CLIENT), key=lambda m: (m.ts, m.order))
    requests = {jsonrpc.id_key(e.id): e for e in s.entries if e.kind == "request" and e.sender == CLIENT}
    to_send = [m.rpc for m in client_msgs if jsonrpc.kind(m.rpc) in (jsonrpc.REQUEST, jsonrpc.NOTIFICATION)]
    if not to_send or to_send[0].get("method") != "initialize":
        out.error = "the recorded session does not start with initialize: it cannot be re-initialized"
        return out
    had_get = any(e.stream == "get" or e.answer_stream == "get" for e in s.entries) or s.transport == HTTP_SSE
    pool = ThreadPoolExecutor(max_workers=16)
    deadline_of = lambda: time.monotonic() + timeout  # noqa: E731
    try:
        if s.transport == HTTP_SSE:
            threading.Thread(target=live.listen, args=(out.url,), daemon=True).start()
            with live.cond:
                end = time.monotonic() + timeout
                while live.post_url is None and time.monotonic() < end:
                    live.cond.wait(end - time.monotonic())
            if live.post_url is None:
                out.error = "the target's SSE stream named no endpoint"
                return out
        pending: list[tuple[dict, object]] = []  # (recorded request, future)
        for msg in to_send:
            # What was answered before this message was sent is waited for first.
            sent_at = min((m.ts for m in client_msgs if m.rpc is msg), default=None)
            for rec, _ in pending:
                e = requests.get(jsonrpc.id_key(rec.get("id")))
                if e is not None and e.answer_ts is not None and sent_at is not None and e.answer_ts <= sent_at:
                    live.wait(rec.get("id"), deadline_of())
            if jsonrpc.kind(msg) == jsonrpc.REQUEST:
                fut = pool.submit(live.post, msg)
                pending.append((msg, fut))
                if msg.get("method") == "initialize":
                    fut.result(timeout)
                    answer = live.wait(msg.get("id"), deadline_of()) or {}
                    result = answer.get("result") if isinstance(answer.get("result"), dict) else {}
                    live.protocol_version = result.get("protocolVersion") if s.transport == STREAMABLE else None
                    out.new_session_id = live.session_id or (live.post_url and _query_session(live.post_url))
            else:
                live.post(msg)
                if msg.get("method") == "notifications/initialized" and had_get and s.transport == STREAMABLE:
                    ready = threading.Event()
                    threading.Thread(target=live.listen, args=(out.url, ready), daemon=True).start()
                    ready.wait(timeout)  # the server's requests need the stream open
        for rec, fut in pending:
            e = requests.get(jsonrpc.id_key(rec.get("id")))
            answer = live.wait(rec.get("id"), deadline_of())
            tool = (rec.get("params") or {}).get("name") if rec.get("method") == "tools/call" else None
            recorded = None
            if e is not None and e.answered:
                recorded = {"error": e.error} if e.error is not None else {"result": e.result}
            r = CallResult(rec.get("id"), str(rec.get("method")), tool, recorded)
            try:
                fut.result(timeout=1)
            except Exception as exc:  # noqa: BLE001 - said in the result
                r.error = f"{type(exc).__name__}: {exc}"
            if answer is None:
                r.error = r.error or f"no answer within {timeout:g} s"
            else:
                r.live = {"error": answer["error"]} if "error" in answer else {"result": answer.get("result")}
                if recorded is not None and compare is not None:
                    masked = [0]
                    r.first_difference = compare(recorded, r.live, masked)
                    r.masked_spans = masked[0]
                elif recorded is None:
                    r.first_difference = "no answer in the record"
            out.calls.append(r)
        if s.transport == STREAMABLE and live.session_id and any(
                "DELETE" in (e.text or "") for e in s.entries if e.kind == "end"):
            client.request("DELETE", out.url, headers=live.head())
    except Exception as e:  # noqa: BLE001 - the report says why
        out.error = f"{type(e).__name__}: {e}"
    finally:
        live.closed = True
        pool.shutdown(wait=False, cancel_futures=True)
    return out


def _query_session(url: str) -> str | None:
    from recorder.protocols.mcp.wire import sse_session_of

    return sse_session_of(url)


def report_lines(r: McpReplay) -> list[str]:
    s = r.session
    old = s.session_id or "-"
    head = f"MCP session {old} -> {r.new_session_id or '-'} ({s.transport}) at {r.url}"
    lines = [head]
    if r.error:
        lines.append(f"  not replayed: {r.error}")
    same = sum(1 for c in r.calls if c.live is not None and c.first_difference is None)
    for c in r.calls:
        if c.error:
            verdict = "not answered: " + c.error
        elif c.first_difference:
            verdict = c.first_difference
        else:
            verdict = "same" + (f" ({c.masked_spans} masked span(s) not compared)" if c.masked_spans else "")
        lines.append(f"  {c.label}: {verdict}")
    for text in r.server_requests:
        lines.append(f"  server request {text}")
    for note in r.notes:
        lines.append(f"  note: {note}")
    if r.calls:
        lines.append(f"  {len(r.calls)} request(s) replayed by id: {same} same, {len(r.calls) - same} different "
                     "or unanswered")
    return lines


def report_json(r: McpReplay) -> dict:
    return {
        "session_id": r.session.session_id, "transport": r.session.transport, "url": r.url,
        "new_session_id": r.new_session_id, "error": r.error, "server_requests": r.server_requests,
        "notes": r.notes,
        "calls": [{"id": c.id, "method": c.method, "tool": c.tool, "recorded": c.recorded, "live": c.live,
                   "error": c.error, "first_difference": c.first_difference, "masked_spans": c.masked_spans,
                   "same": c.live is not None and c.first_difference is None and c.error is None}
                  for c in r.calls],
    }
