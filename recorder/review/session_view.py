"""One session as the review page shows it: plain data for the template, made from the
transcript model (recorder.forensics.transcript), the records and the verifier's verdict.

Everything recorded is hostile input. Nothing here makes markup: text is split into
`Segment`s (plain text, a masked-secret tag, a credential marker, a search match) and the
template escapes each one. Record types this module does not know are shown field by field;
a new kind of traffic (ws.*, pg.*, MCP) can register a summary in RECORD_SUMMARIES.
"""
from __future__ import annotations

import difflib
import json
import re
import time
from dataclasses import dataclass, field
from typing import Callable

import orjson

from recorder.commands.show import record_details
from recorder.forensics.summary import summarize
from recorder.forensics.transcript import Turn, build
from recorder.forensics.transcript.model import Message, Part
from recorder.forensics.verify import FileVerdict
from recorder.review.integrity import Integrity
from recorder.review.listing import Agent, agent_of, has_error, session_href, token_usage, tool_calls
from recorder.forensics.transcript.rpc import messages_text
from recorder.store import format_v1

PART_LIMIT = 20_000  # characters of one message part shown on the page
BODY_LIMIT = 100_000  # characters of one raw body shown in the drawer
SEARCH_HITS = 500
SNIPPET = 60  # characters either side of a search match
ENVELOPE = set(format_v1.ENVELOPE)
SESSION_TYPES = ("session.open", "session.close", "checkpoint", "seal")

# -- text --------------------------------------------------------------------------------------

_TAGS = re.compile(r"\[MASKED:[A-Za-z0-9_.-]{1,64}:[0-9a-f]{8}\]|\[credential:[^\]\n]{1,100}\]")


@dataclass(frozen=True)
class Segment:
    kind: str  # "text", "masked" (a masked secret's tag), "credential" (a swapped credential), "mark" (search)
    text: str


def segments(text: str, query: str = "") -> list[Segment]:
    """`text` split into plain runs, mask tags and credential markers, and (with a query) matches."""
    out: list[Segment] = []
    pos = 0
    for m in _TAGS.finditer(text):
        out.extend(_marked(text[pos:m.start()], query))
        out.append(Segment("masked" if m.group(0).startswith("[MASKED:") else "credential", m.group(0)))
        pos = m.end()
    out.extend(_marked(text[pos:], query))
    return out


def _marked(text: str, query: str) -> list[Segment]:
    if not text:
        return []
    if not query:
        return [Segment("text", text)]
    out, low, q, pos = [], text.lower(), query.lower(), 0
    while True:
        i = low.find(q, pos)
        if i < 0:
            break
        if i > pos:
            out.append(Segment("text", text[pos:i]))
        out.append(Segment("mark", text[i:i + len(q)]))
        pos = i + len(q)
    if pos < len(text):
        out.append(Segment("text", text[pos:]))
    return out


def _cut(text: str, limit: int) -> tuple[str, int]:
    return (text, 0) if len(text) <= limit else (text[:limit], len(text) - limit)


def clock(ts) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "?"
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def iso(ts) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) + " UTC"


def ms(value) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return "-"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.2f} s"


def _json(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=1, sort_keys=False, default=str)


# -- records -----------------------------------------------------------------------------------


@dataclass
class BodyView:
    text: list[Segment]
    size: int | None
    notes: list[str]


@dataclass
class RecordView:
    seq: int | None
    t: str
    clock: str
    summary: list[Segment]
    headers: list[tuple[list[Segment], list[Segment]]]
    body: BodyView | None
    fields: list[tuple[str, list[Segment]]]
    known: bool

    @property
    def anchor(self) -> str:
        return f"seq-{self.seq}" if self.seq is not None else ""


def _summary_http(rec: dict) -> str:
    return record_details(rec)[0]


# t (exact) or prefix ending in "." -> a one-line summary. Unknown types get a generic one.
RECORD_SUMMARIES: dict[str, Callable[[dict], str]] = {
    t: _summary_http for t in ("session.open", "http.request", "http.response", "http.chunk", "http.end",
                               "http.error", "session.close", "checkpoint", "seal")
}
RECORD_SUMMARIES["auth.refused"] = lambda r: (f"{r.get('method')} {r.get('url')} refused {r.get('status')} "
                                              f"({r.get('reason')}): {r.get('message')}")
RECORD_SUMMARIES["tunnel"] = lambda r: f"tunnel to {r.get('host')}:{r.get('port')} (not intercepted, not recorded)"


# -- PostgreSQL (docs/format.md, the pg.* records) ---------------------------------------------

SQL_LINE = 300  # characters of a statement on its one line; the record's fields show all of it


def _sql(sql) -> str:
    text = " ".join(str(sql or "").split())
    return text[:SQL_LINE] + ("…" if len(text) > SQL_LINE else "")


def _name(value) -> str:
    return str(value) if value else "(unnamed)"


def _plural(n, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _pg_connect(r: dict) -> str:
    up = r.get("upstream") if isinstance(r.get("upstream"), dict) else {}
    conn = f" [{r['connection']}]" if r.get("connection") else ""
    version = f", server {r['server_version']}" if r.get("server_version") else ""
    return (f"connect {up.get('user')}@{up.get('host')}:{up.get('port')}/{up.get('database')}{conn} "
            f"(auth {up.get('auth')}{version})")


def _pg_result(r: dict) -> str:
    n = f"#{r.get('n')} " if r.get("n") is not None else ""
    err = r.get("error")
    if isinstance(err, dict):
        return f"{n}error {err.get('sqlstate')}: {err.get('message')}"
    rows = f", {_plural(r.get('rows'), 'row')}" if isinstance(r.get("rows"), int) else ""
    took = f" in {r.get('duration_ms')} ms" if r.get("duration_ms") is not None else ""
    return f"{n}{r.get('tag') or '(empty query)'}{rows}{took}" + (" (suspended)" if r.get("suspended") else "")


def _pg_end(r: dict) -> str:
    took = f" after {r.get('duration_s')} s" if r.get("duration_s") is not None else ""
    statements = f", {_plural(r.get('statements'), 'statement')}" if isinstance(r.get("statements"), int) else ""
    return f"end ({r.get('reason')}){took}{statements}" + (f": {r['message']}" if r.get("message") else "")


RECORD_SUMMARIES.update({
    "pg.connect": _pg_connect,
    "pg.refused": lambda r: f"refused ({r.get('reason')}, SQLSTATE {r.get('sqlstate')}): {r.get('message')}",
    "pg.query": lambda r: f"#{r.get('n')} query: {_sql(r.get('sql'))}",
    "pg.parse": lambda r: f"#{r.get('n')} parse {_name(r.get('statement'))}: {_sql(r.get('sql'))}",
    "pg.bind": lambda r: (f"#{r.get('n')} bind {_name(r.get('portal'))} to {_name(r.get('statement'))}: "
                          f"{_plural(len(r.get('params') or []), 'parameter')}"),
    "pg.execute": lambda r: (f"#{r.get('n')} execute {_name(r.get('portal'))}"
                             + (f" (max {r['max_rows']} rows)" if r.get("max_rows") else "")),
    "pg.function": lambda r: f"#{r.get('n')} function call oid {r.get('oid')}, {_plural(len(r.get('args') or []), 'argument')}",
    "pg.result": _pg_result,
    "pg.cancel": lambda r: f"cancel request ({'forwarded' if r.get('forwarded') else 'not forwarded'})"
                           + (f": {r['error']}" if r.get("error") else ""),
    "pg.error": lambda r: f"{r.get('phase')} error {r.get('sqlstate') or ''}: {r.get('message')}".replace("  ", " "),
    "pg.end": _pg_end,
})


def _summary_of(rec: dict) -> tuple[str, bool]:
    t = str(rec.get("t"))
    fn = RECORD_SUMMARIES.get(t)
    if fn is None:
        for key, f in RECORD_SUMMARIES.items():
            if key.endswith(".") and t.startswith(key):
                fn = f
                break
    if fn is not None:
        try:
            return str(fn(rec)), True
        except Exception:  # a record with odd field types: fall back to the generic view
            pass
    rest = {k: v for k, v in rec.items() if k not in ENVELOPE and k not in ("headers", "body")}
    text = orjson.dumps(rest, default=str).decode()
    return (text[:300] + ("…" if len(text) > 300 else "")), False


def _body_view(body, query: str) -> BodyView | None:
    if not isinstance(body, dict):
        return None
    notes = []
    size = body.get("size") if isinstance(body.get("size"), int) else None
    if body.get("truncated"):
        notes.append("cut by the gateway (capture.max_body)")
    if isinstance(body.get("text"), str):
        text, more = _cut(body["text"], BODY_LIMIT)
        if more:
            notes.append(f"{more} more characters not shown here: download the artifact or HAR")
        return BodyView(segments(text, query), size, notes)
    if isinstance(body.get("messages"), list):  # Connect/gRPC: the messages' text, with field paths
        text, more = _cut(messages_text(body), BODY_LIMIT)
        if more:
            notes.append(f"{more} more characters not shown here: download the artifact or HAR")
        return BodyView(segments(text, query), size, notes)
    if isinstance(body.get("b64"), str):
        try:
            n = len(format_v1.decode_body(body))
        except ValueError:
            n = None
        notes.append(f"binary, {n if n is not None else '?'} bytes: not shown (download HAR or flows)")
        return BodyView([], size, notes)
    return BodyView([], size, ["no text"])


def record_view(rec: dict, query: str = "") -> RecordView:
    seq = rec.get("seq") if isinstance(rec.get("seq"), int) and not isinstance(rec.get("seq"), bool) else None
    summary, known = _summary_of(rec)
    headers = []
    if isinstance(rec.get("headers"), list):
        for pair in rec["headers"]:
            if isinstance(pair, (list, tuple)) and len(pair) == 2:
                headers.append((segments(str(pair[0]), query), segments(str(pair[1]), query)))
    fields = [(str(k), segments(_cut(_json(v), 2000)[0], query)) for k, v in rec.items()
              if k not in ENVELOPE and k not in ("headers", "body")]
    return RecordView(seq, str(rec.get("t")), clock(rec.get("ts")), segments(summary, query), headers,
                      _body_view(rec.get("body"), query), fields, known)


# -- turns -------------------------------------------------------------------------------------


@dataclass
class PartView:
    kind: str  # text, thinking, tool_call, tool_result, image, other
    label: str
    text: list[Segment]
    more: int  # characters cut
    is_error: bool = False

    @property
    def collapsible(self) -> bool:
        return self.kind in ("tool_call", "tool_result", "thinking")


@dataclass
class MessageView:
    role: str
    parts: list[PartView]


@dataclass
class DiffView:
    what: str  # "system prompt" or "tools"
    first: bool  # first time shown: `full` holds it all
    full: list[Segment] = field(default_factory=list)
    lines: list[tuple[str, str]] = field(default_factory=list)  # (" " | "+" | "-" | "@", text)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)


@dataclass
class TurnView:
    index: int
    kind: str  # http, auth.refused, tunnel, other (records of a flow with no request)
    first_seq: int | None
    clock: str
    offset: str
    title: str
    status: int | None
    protocol: str
    model: str | None
    streamed: bool
    connection: str | None
    duration: str
    ttfb: str
    usage: str
    stop_reason: str | None
    system: DiffView | None
    tools: DiffView | None
    history_note: str | None
    skipped: int
    messages: list[MessageView]
    reply: list[MessageView]
    notes: list[str]
    errors: list[str]
    truncated: bool
    records: list[RecordView]
    tool_calls: int
    has_error: bool
    refusal: str | None = None

    @property
    def anchor(self) -> str:
        return f"turn-{self.index}"


def _part_view(part: Part, names: dict[str, str], query: str) -> PartView:
    if part.type == "tool_call":
        if part.id and part.name:
            names[str(part.id)] = str(part.name)
        label = f"tool call {part.name or '?'}" + (f" [{part.id}]" if part.id else "")
        text = _json(part.arguments) if part.arguments is not None else ""
    elif part.type == "tool_result":
        name = part.name or (names.get(str(part.id)) if part.id else None)
        label = "tool result" + (f" {name}" if name else "") + (f" [{part.id}]" if part.id else "") + (
            " (error)" if part.is_error else "")
        text = part.text
    elif part.type == "thinking":
        label, text = "thinking", part.text
    else:
        label, text = ("" if part.type == "text" else part.type), part.text
    shown, more = _cut(str(text), PART_LIMIT)
    return PartView(part.type, label, segments(shown, query), more, bool(part.is_error))


def _message_view(msg: Message, names: dict[str, str], query: str) -> MessageView:
    return MessageView(msg.role, [_part_view(p, names, query) for p in msg.parts] or [PartView("text", "", [], 0)])


def _usage_text(usage: dict) -> str:
    tin, tout = token_usage([_UsageOnly(usage)])
    parts = []
    if tin:
        parts.append(f"{tin} in")
    if tout:
        parts.append(f"{tout} out")
    for key in ("cache_read_input_tokens", "cache_creation_input_tokens"):
        if isinstance(usage.get(key), int) and usage[key]:
            parts.append(f"{usage[key]} {key.replace('_input_tokens', '').replace('_', ' ')}")
    return "tokens " + ", ".join(parts) if parts else ""


class _UsageOnly:
    def __init__(self, usage):
        self.usage = usage if isinstance(usage, dict) else {}


def _system_diff(before: str | None, now: str | None, query: str) -> DiffView | None:
    if now is None or now == before:
        return None
    if before is None:
        return DiffView("system prompt", True, full=segments(_cut(now, PART_LIMIT)[0], query))
    return DiffView("system prompt", False, lines=_unified(before, now))


def _unified(a: str, b: str) -> list[tuple[str, str]]:
    out = []
    for line in list(difflib.unified_diff(a.splitlines(), b.splitlines(), lineterm="", n=2))[2:]:
        op = line[:1] if line[:1] in "+- @" else " "
        out.append((op, line[1:] if op in "+- " else line))
    return out[:2000]


def _tools_diff(before: dict | None, now: dict | None) -> DiffView | None:
    if now is None or now == before:
        return None
    if before is None:
        d = DiffView("tools", True, added=list(now))
        d.lines = [(" ", f"{name}: {defn}") for name, defn in now.items()]
        return d
    d = DiffView("tools", False, added=[n for n in now if n not in before], removed=[n for n in before if n not in now],
                 changed=[n for n in now if n in before and now[n] != before[n]])
    for name in d.changed:
        d.lines.append(("@", f"tool {name} changed:"))
        d.lines.extend(_unified(before[name], now[name]))
    for name in d.added:
        d.lines.append(("+", f"{name}: {now[name]}"))
    for name in d.removed:
        d.lines.append(("-", name))
    return d


def _turn_view(turn: Turn, recs: list[dict], start: float | None, last_system: dict, last_tools: dict,
               names: dict[str, str], query: str) -> TurnView:
    ex = turn.exchange
    seqs = [r["seq"] for r in recs if isinstance(r.get("seq"), int)]
    offset = f"+{ex.ts - start:.3f} s" if ex.ts is not None and start is not None else ""
    key = turn.conversation or f"{turn.protocol}:{ex.host}"
    system = _system_diff(last_system.get(key), turn.system, query)
    if turn.system is not None:
        last_system[key] = turn.system
    tools = _tools_diff(last_tools.get(key), turn.tools)
    if turn.tools is not None:
        last_tools[key] = turn.tools
    shown = turn.new_messages if turn.new_messages is not None else turn.messages
    kind = ex.kind if ex.kind != "http" or ex.request is not None else "other"
    refusal = None
    if ex.kind == "auth.refused":
        o = ex.other or {}
        title = f"REFUSED {o.get('method')} {o.get('url')} -> {o.get('status')}"
        refusal = f"{o.get('reason')}: {o.get('message')}"
    elif ex.kind == "tunnel":
        o = ex.other or {}
        title = f"TUNNEL {o.get('host')}:{o.get('port')} (not intercepted, not recorded)"
    elif ex.request is None:
        types = sorted({str(r.get("t")) for r in recs})
        title = f"records of flow {ex.flow}: {', '.join(types)}"
    else:
        title = f"{ex.method} {ex.url}"
    return TurnView(
        index=ex.index,
        kind=kind,
        first_seq=min(seqs) if seqs else None,
        clock=clock(ex.ts),
        offset=offset,
        title=title,
        status=ex.status,
        protocol=turn.protocol,
        model=turn.model,
        streamed=turn.streamed,
        connection=(ex.request or {}).get("connection") if isinstance((ex.request or {}).get("connection"), str) else None,
        duration=ms(ex.duration_ms),
        ttfb=ms(ex.ttfb_ms),
        usage=_usage_text(turn.usage),
        stop_reason=str(turn.stop_reason) if turn.stop_reason else None,
        system=system,
        tools=tools,
        history_note=turn.history_note,
        skipped=len(turn.messages) - len(shown),
        messages=[_message_view(m, names, query) for m in shown],
        reply=[_message_view(m, names, query) for m in turn.reply],
        notes=[n for n in turn.notes if not (turn.tools is not None and n.startswith("tools offered: "))],
        errors=[f"{e.get('phase')}: {e.get('message')}" for e in ex.errors],
        truncated=ex.request_truncated or ex.response_truncated,
        records=[record_view(r, query) for r in recs],
        tool_calls=tool_calls(turn),
        has_error=has_error(turn),
        refusal=refusal,
    )


# -- search ------------------------------------------------------------------------------------


@dataclass
class SearchHit:
    seq: int | None
    t: str
    snippet: list[Segment]


def search(records: list[dict], query: str) -> tuple[list[SearchHit], int]:
    """Records whose content contains `query` (case-insensitive): bodies as text, headers and
    fields. Returns (first SEARCH_HITS hits, total)."""
    q = query.lower()
    hits: list[SearchHit] = []
    total = 0
    for rec in records:
        parts = []
        for k, v in rec.items():
            if k in ("prev", "v", "sig"):
                continue
            if k == "body" and isinstance(v, dict) and isinstance(v.get("text"), str):
                parts.append(v["text"])
            elif k == "headers" and isinstance(v, list):
                parts.extend(f"{p[0]}: {p[1]}" for p in v if isinstance(p, (list, tuple)) and len(p) == 2)
            else:
                parts.append(_json(v) if not isinstance(v, (int, float)) else str(v))
        text = "\n".join(parts)
        i = text.lower().find(q)
        if i < 0:
            continue
        total += 1
        if len(hits) < SEARCH_HITS:
            a, b = max(0, i - SNIPPET), min(len(text), i + len(q) + SNIPPET)
            snippet = ("…" if a else "") + text[a:b].replace("\n", " ⏎ ") + ("…" if b < len(text) else "")
            hits.append(SearchHit(rec.get("seq") if isinstance(rec.get("seq"), int) else None, str(rec.get("t")),
                                  segments(snippet, query)))
    return hits, total


# -- the page ----------------------------------------------------------------------------------


@dataclass
class SessionView:
    stem: str
    rel: str
    integrity: Integrity
    identity: dict
    client: str
    gateway: str
    agent: Agent
    start: str
    end: str
    duration: str
    last_seq: int | None
    records: int
    items: list  # TurnView and RecordView (records of no flow), in file order
    session_records: list[RecordView]  # session.open, checkpoints, seal, session.close
    tokens: str
    tool_calls: int
    errors: int
    refusals: int
    models: list[str]
    keys: list[str]  # configured public key ids
    query: str = ""
    hits: list[SearchHit] = field(default_factory=list)
    hit_total: int = 0
    href: str = ""  # this page's path (listing.session_href)
    part: str = ""  # the name of the fleet part it lies in (its gateway's folder), or ""

    @property
    def live(self) -> bool:
        return self.integrity.live


def _identity(opened: dict) -> dict:
    ident = opened.get("identity") if isinstance(opened.get("identity"), dict) else {}
    groups = ident.get("groups")
    return {
        "sub": ident.get("sub"),
        "email": ident.get("email"),
        "name": ident.get("name"),
        "groups": ", ".join(map(str, groups)) if isinstance(groups, list) else "",
        "iss": ident.get("iss"),
        "method": ident.get("method"),
        "authenticated": ident.get("authenticated") is not False and ident.get("sub") is not None,
    }


def _position(item) -> int:
    seq = item.first_seq if isinstance(item, TurnView) else item.seq
    return seq if seq is not None else 1 << 62


def session_view(stem: str, rel: str, v: FileVerdict, integrity: Integrity, keys: list[str],
                 query: str = "", *, part: str = "", part_name: str = "") -> SessionView:
    read = v.read
    records = read.records
    opened = read.open_record or {}
    s = summarize(read)
    turns = build(records)
    by_flow: dict[str, list[dict]] = {}
    for rec in records:
        if isinstance(rec.get("flow"), str):
            by_flow.setdefault(rec["flow"], []).append(rec)
    last_system: dict = {}
    last_tools: dict = {}
    names: dict[str, str] = {}
    items: list = []
    for turn in turns:
        ex = turn.exchange
        recs = by_flow.get(ex.flow) or ([ex.other] if ex.other else [])
        items.append(_turn_view(turn, recs, s.start, last_system, last_tools, names, query))
    session_records = []
    for rec in records:
        if isinstance(rec.get("flow"), str) or rec.get("t") == "tunnel":
            continue
        view = record_view(rec, query)
        if rec.get("t") in SESSION_TYPES:
            session_records.append(view)
        else:
            items.append(view)  # a record of no flow and no known kind: shown where it happened
    items.sort(key=_position)
    tin, tout = token_usage(turns)
    client = opened.get("client") if isinstance(opened.get("client"), dict) else {}
    gw = opened.get("gateway") if isinstance(opened.get("gateway"), dict) else {}
    hits, total = search(records, query) if query else ([], 0)
    return SessionView(
        stem=stem,
        rel=rel,
        integrity=integrity,
        identity=_identity(opened),
        client=s.client or "-",
        gateway=(f"{gw['id']} on " if isinstance(gw.get("id"), str) else "")
        + f"{gw.get('host', '-')} (wiretrail {gw.get('version', '?')})",
        agent=agent_of(records),
        start=iso(s.start),
        end=iso(s.end),
        duration=ms(s.duration * 1000) if s.duration is not None else "-",
        last_seq=read.last_seq,
        records=len(records),
        items=items,
        session_records=session_records,
        tokens=f"{tin} in, {tout} out" if tin or tout else "-",
        tool_calls=sum(tool_calls(t) for t in turns),
        errors=sum(1 for t in turns if has_error(t)),
        refusals=sum(1 for t in turns if t.exchange.kind == "auth.refused"),
        models=sorted({str(t.model) for t in turns if t.model}),
        keys=keys,
        query=query,
        hits=hits,
        hit_total=total,
        href=session_href(stem, part),
        part=part_name,
    )
