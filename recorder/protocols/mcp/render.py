"""An MCP session as a tool-call log: text for a reviewer (`wiretrail show`), JSON for machines.

    [1] 13:49:24.431  MCP session 6e5f21bd... (Streamable HTTP) https://tools.example/mcp  [github]
        client claude-code 1.0.0, server github-mcp 0.3; protocol 2025-06-18; exchanges [1]-[19]
      13:49:24.431  initialize [0]  (17 ms)
      13:49:24.510  tools/list [1]  (12 ms)
                    tools offered (6): read_secret, count, ...
      13:49:24.538  tool call read_secret [2] {}  (20 ms)
                    result: the deploy token is [MASKED:github-pat:2d2f3675]
      13:49:25.330  resources/read [11] {"uri": "config://missing"}  (15 ms)
                    error -32602 invalid params: Unknown resource: config://missing
      13:49:25.407  the client ended the MCP session (DELETE) -> 200
"""
from __future__ import annotations

import json
import time

from recorder.protocols.mcp.jsonrpc import error_text, id_text
from recorder.protocols.mcp.session import TRANSPORT_NAMES, Entry, McpSession
from recorder.protocols.mcp.wire import CLIENT, GET

PAD = " " * 18  # under the time column


def _clock(ts) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool) or not ts:
        return "??:??:??.???"
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def _ms(value) -> str:
    if value is None:
        return "?"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.1f} s"


def _number(value) -> str:
    """A progress number as people write it (3, not 3.0)."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _json(value) -> str:
    return json.dumps(value, ensure_ascii=False)


def _cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + f" ... [{len(text) - limit} more characters; --full shows all]"


def content_text(result) -> str:
    """A tools/call result's content, or any other result, as text."""
    if isinstance(result, dict) and isinstance(result.get("content"), list):
        parts = []
        for item in result["content"]:
            if not isinstance(item, dict):
                continue
            if item.get("type") == "text" and isinstance(item.get("text"), str):
                parts.append(item["text"])
            elif item.get("type") == "resource" and isinstance(item.get("resource"), dict):
                r = item["resource"]
                parts.append(f"[resource {r.get('uri')}] " + str(r.get("text") or "<blob>"))
            else:
                parts.append(f"[{item.get('type')}" + (f" {item.get('mimeType')}" if item.get("mimeType") else "")
                             + "]")
        return "\n".join(parts)
    if isinstance(result, dict) and isinstance(result.get("contents"), list):  # resources/read
        return "\n".join(f"[{c.get('uri')}] " + str(c.get("text") if c.get("text") is not None else "<blob>")
                         for c in result["contents"] if isinstance(c, dict))
    if isinstance(result, dict) and isinstance(result.get("action"), str):  # elicitation answer
        content = result.get("content")
        return result["action"] + (f" {_json(content)}" if content is not None else "")
    if isinstance(result, dict) and isinstance(result.get("content"), dict):  # sampling answer
        c = result["content"]
        text = c.get("text") if c.get("type") == "text" else f"[{c.get('type')}]"
        return f"{text}" + (f"  (model {result.get('model')})" if result.get("model") else "")
    return _json(result)


def _call_label(e: Entry) -> str:
    ident = f" [{id_text(e.id)}]" if e.id is not None else ""
    if e.is_tool_call:
        args = e.params.get("arguments") if isinstance(e.params, dict) else None
        return f"tool call {e.tool}{ident} {_json(args if args is not None else {})}"
    who = "server request " if e.sender != CLIENT else ""
    params = _params_text(e.params) if e.method != "initialize" else ""  # the session's head says it
    return f"{who}{e.method}{ident}" + (f" {params}" if params else "")


def _params_text(params) -> str:
    if not params:
        return ""
    if isinstance(params, dict):
        shown = {k: v for k, v in params.items() if k != "_meta"}
        return _json(shown) if shown else ""
    return _json(params)


def _answer_lines(e: Entry, limit: int | None) -> list[str]:
    if e.method == "initialize" and e.result is not None:
        return []  # the session's head says it
    if e.tools is not None:
        lines = [f"tools offered ({len(e.tools)}): " + ", ".join(str(t.get("name")) for t in e.tools)]
        d = e.tools_diff
        if d is None:  # the first list: each description, where a poisoned one would be
            for t in e.tools:
                text = " ".join(str(t.get("description") or "").split())
                lines.append(f"  {t.get('name')}: {_cut(text, limit)}" if text else f"  {t.get('name')}")
        else:
            if not (d["added"] or d["removed"] or d["changed"]):
                lines = [f"tools offered ({len(e.tools)}): unchanged"]
            else:
                lines.append("TOOLS CHANGED since the last tools/list:")
                for t in d["added"]:
                    lines.append(f"  + {t.get('name')}: {_cut(str(t.get('description') or ''), limit)}")
                for name in d["removed"]:
                    lines.append(f"  - {name}")
                for c in d["changed"]:
                    before, after = c["before"], c["after"]
                    if before.get("description") != after.get("description"):
                        lines.append(f"  ~ {c['name']}: description was {_json(before.get('description'))}, "
                                     f"now {_json(after.get('description'))}")
                    else:
                        lines.append(f"  ~ {c['name']}: definition changed (schema or annotations)")
        return lines
    if e.error is not None:
        return [f"error {error_text(e.error)}"]
    if not e.answered:
        if e.http_status is not None:
            return [f"no answer: the POST got HTTP {e.http_status}"]
        return ["no answer in the record"]
    who = "client answer" if e.sender != CLIENT else ("result (isError)" if e.is_error else "result")
    return [f"{who}: {_cut(content_text(e.result), limit)}"]


def _stream_note(e: Entry) -> str:
    if e.answer_stream == GET:
        return ", on the GET stream"
    return ""


def entry_lines(e: Entry, limit: int | None, safe) -> list[str]:
    head = f"  {_clock(e.ts)}  "
    if e.kind in ("end", "transport", "note"):
        return [safe(head + str(e.text))]
    if e.kind == "notification":
        who = "" if e.sender != CLIENT else "client "
        params = _params_text(e.params)
        stream = " (GET stream)" if e.stream == GET else ""
        return [safe(head + f"{who}notification {e.method}{stream}" + (f" {_cut(params, limit)}" if params else ""))]
    if e.kind == "unpaired":
        what = f"error {error_text(e.error)}" if e.error is not None else _cut(content_text(e.result), limit)
        return [safe(head + f"{e.sender} answer [{id_text(e.id)}] to a request not in the record: {what}")]
    timing = f"  ({_ms(e.duration_ms)}{_stream_note(e)})" if e.answered and e.duration_ms is not None else (
        f"  (answered{_stream_note(e)})" if e.answered else "")
    first = head + _cut(_call_label(e), limit) + timing
    lines = [safe(first)]
    if e.during is not None:
        lines.append(safe(PAD + f"during {_call_label(e.during).split(' {')[0]}"
                          + (" (on the GET stream)" if e.stream == GET else "")))
    for ts, p in e.progress:
        total = f"/{_number(p.get('total'))}" if p.get("total") is not None else ""
        msg = f" {p.get('message')}" if p.get("message") else ""
        lines.append(safe(PAD + f"progress {_number(p.get('progress'))}{total}{msg}  (+{_ms((ts - e.ts) * 1000)})"))
    if e.cancelled is not None:
        lines.append(safe(PAD + f"cancelled by the {'client' if e.sender == CLIENT else 'server'}: "
                          + str(e.cancelled.get("reason") or "")))
    for line in _answer_lines(e, limit):
        for k, piece in enumerate(line.split("\n")):
            lines.append(safe(PAD + ("" if k == 0 else "  ") + piece))
    return lines


def session_head(s: McpSession) -> str:
    sid = f" {s.session_id}" if s.session_id else ""
    conn = f"  [{s.connection}]" if s.connection else ""
    where = s.url or (" ".join(map(str, s.stdio.get("command") or [])) if s.stdio else "")
    index = f"[{s.first_index}] " if s.first_index else ""
    return f"{index}{_clock(s.ts)}  MCP session{sid} ({TRANSPORT_NAMES.get(s.transport, s.transport)}) {where}{conn}"


def _info(info) -> str:
    if not isinstance(info, dict):
        return "?"
    return f"{info.get('name')} {info.get('version') or ''}".strip()


def _capabilities(caps) -> str:
    return ", ".join(sorted(caps)) if isinstance(caps, dict) and caps else "none"


def session_lines(s: McpSession, style, limit: int | None, safe) -> list[str]:
    lines = [style("head", safe(session_head(s)))]
    facts = []
    if s.client_info is not None or s.server_info is not None:
        facts.append(f"client {_info(s.client_info)} (capabilities: {_capabilities(s.capabilities.get('client'))})")
        facts.append(f"server {_info(s.server_info)} (capabilities: {_capabilities(s.capabilities.get('server'))})")
    if s.protocol_version:
        facts.append(f"protocol {s.protocol_version}")
    if s.indexes:
        facts.append(f"{len(s.indexes)} HTTP exchange(s): " + ", ".join(f"[{i}]" for i in sorted(s.indexes)))
    if s.stdio and s.stdio.get("pid"):
        facts.append(f"server pid {s.stdio['pid']}")
    calls = s.tool_calls
    failed = sum(1 for e in calls if e.is_error or (not e.answered))
    facts.append(f"{len(calls)} tool call(s)" + (f", {failed} failed or unanswered" if failed else ""))
    for fact in facts:
        lines.append(style("dim", "    " + safe(fact)))
    if s.instructions:
        lines.append(style("dim", "    " + safe("instructions: " + _cut(s.instructions, limit))))
    for e in s.entries:
        for k, line in enumerate(entry_lines(e, limit, safe)):
            kind = "warn" if (e.kind == "transport" or (k and "TOOLS CHANGED" in line) or
                              (e.kind == "request" and (e.is_error or not e.answered) and k)) else (
                "client" if e.sender == CLIENT else "server")
            lines.append(style(kind, line) if k == 0 or kind == "warn" else line)
    for note in s.notes:
        lines.append(style("dim", "    note: " + safe(note)))
    return lines


def entry_json(e: Entry) -> dict:
    out: dict = {"kind": e.kind, "ts": e.ts, "sender": e.sender}
    if e.kind in ("request", "notification", "unpaired"):
        out.update({"method": e.method, "id": e.id, "params": e.params, "exchange": e.index or None,
                    "stream": e.stream})
    if e.kind == "request":
        out.update({
            "tool": e.tool,
            "arguments": e.params.get("arguments") if e.is_tool_call and isinstance(e.params, dict) else None,
            "answered": e.answered,
            "answer_ts": e.answer_ts,
            "answer_exchange": e.answer_index or None,
            "answer_stream": e.answer_stream,
            "duration_ms": e.duration_ms,
            "progress": [dict(p, ts=ts) for ts, p in e.progress],
            "is_error": e.is_error,
        })
        if e.sender != CLIENT:
            out["answer"] = e.result
            out["during"] = {"method": e.during.method, "id": e.during.id, "tool": e.during.tool} if e.during else None
        else:
            out["result"] = e.result
        if e.error is not None:
            out["error"] = e.error
        if e.cancelled is not None:
            out["cancelled"] = e.cancelled
        if e.tools is not None:
            out["tools"] = e.tools
            out["tools_diff"] = e.tools_diff
        if e.http_status is not None:
            out["http_status"] = e.http_status
    if e.kind == "unpaired":
        out["result"] = e.result
        out["error"] = e.error
    if e.text is not None:
        out["text"] = e.text
    if e.http_status is not None:
        out["http_status"] = e.http_status
    return {k: v for k, v in out.items() if v is not None or k in ("result", "answer")}


def session_json(s: McpSession) -> dict:
    return {
        "session_id": s.session_id,
        "transport": s.transport,
        "url": s.url,
        "connection": s.connection,
        "ts": s.ts,
        "exchanges": sorted(s.indexes),
        "flows": s.flows,
        "stdio": s.stdio,
        "client": s.client_info,
        "server": s.server_info,
        "protocol_version": s.protocol_version,
        "capabilities": s.capabilities,
        "instructions": s.instructions,
        "tool_calls": len(s.tool_calls),
        "duplicates_dropped": s.duplicates,
        "log": [entry_json(e) for e in s.entries],
        "notes": s.notes,
    }
