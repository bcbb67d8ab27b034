"""A transcript as text for a reviewer, or as JSON for machines."""
from __future__ import annotations

import json
import time

from recorder.forensics.transcript.model import Message, Part, Turn

TEXT_LIMIT = 2000  # characters shown per message part unless --full
INDENT = "    "

# ANSI SGR codes; used only when the caller says colour is on.
_COLOURS = {"user": "32", "client": "32", "tool": "33", "assistant": "36", "server": "36", "head": "1", "dim": "2", "warn": "31"}


class Style:
    def __init__(self, colour: bool):
        self.colour = colour

    def __call__(self, kind: str, text: str) -> str:
        code = _COLOURS.get(kind)
        if not self.colour or not code:
            return text
        return f"\x1b[{code}m{text}\x1b[0m"


def _clock(ts) -> str:
    if not isinstance(ts, (int, float)):
        return "??:??:??.???"
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def _cut(text: str, limit: int | None) -> str:
    if limit is None or len(text) <= limit:
        return text
    return text[:limit] + f" ... [{len(text) - limit} more characters; --full shows all]"


def _args(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=False)


def _part_text(part: Part) -> tuple[str, str]:
    """(label, text) of one part."""
    if part.type == "tool_call":
        ident = f" [{part.id}]" if part.id else ""
        return f"tool call {part.name}{ident}", _args(part.arguments)
    if part.type == "tool_result":
        ident = f" [{part.id}]" if part.id else ""
        name = f" {part.name}" if part.name else ""
        return f"tool result{name}{ident}" + (" (error)" if part.is_error else ""), part.text
    if part.type == "thinking":
        return "thinking", part.text
    return "", part.text


def _message_lines(msg: Message, prefix: str, style: Style, limit: int | None, safe) -> list[str]:
    out = []
    role_kind = msg.role if msg.role in _COLOURS else "assistant"
    for part in msg.parts or [Part("text", text="")]:
        label, text = _part_text(part)
        # A tool message's result reads "tool result", not "tool tool result".
        head = label if msg.role == "tool" and label.startswith("tool ") else msg.role + (f" {label}" if label else "")
        lines = _cut(text, limit).split("\n")
        first = f"{prefix}{style(role_kind, head + ':')} {safe(lines[0])}".rstrip()
        out.append(first)
        pad = prefix + " " * (len(head) + 2)
        out.extend((pad + safe(line)).rstrip() for line in lines[1:])
    return out


def _usage(usage: dict) -> str:
    if not usage:
        return ""
    def pick(*names):
        for n in names:
            if isinstance(usage.get(n), int):
                return usage[n]
        return None
    parts = []
    inp, out = pick("prompt_tokens", "input_tokens"), pick("completion_tokens", "output_tokens")
    if inp is not None:
        parts.append(f"in {inp}")
    if out is not None:
        parts.append(f"out {out}")
    for key in ("cache_read_input_tokens", "cache_creation_input_tokens"):
        if usage.get(key):
            parts.append(f"{key.replace('_input_tokens', '').replace('_', ' ')} {usage[key]}")
    return "tokens " + ", ".join(parts) if parts else ""


def _ms(value: float | None) -> str:
    if value is None:
        return "?"
    return f"{value:.0f} ms" if value < 1000 else f"{value / 1000:.1f} s"


def turn_lines(turn: Turn, style: Style, limit: int | None, safe, last_system: dict) -> list[str]:
    ex = turn.exchange
    if ex.kind == "auth.refused":
        o = ex.other or {}
        return [
            style("warn", f"[{ex.index}] {_clock(ex.ts)}  REFUSED {o.get('method')} {o.get('url')} -> {o.get('status')}"),
            f"{INDENT}{safe(str(o.get('reason') or ''))}: {safe(str(o.get('message') or ''))}".rstrip(": "),
        ]
    if ex.kind == "tcp.refused":
        o = ex.other or {}
        return [
            style("warn", f"[{ex.index}] {_clock(ex.ts)}  REFUSED {str(o.get('protocol') or 'tcp').upper()} "
                          f"{safe(str(o.get('host')))}:{o.get('port')}"),
            f"{INDENT}{safe(str(o.get('reason') or ''))}: {safe(str(o.get('message') or ''))}".rstrip(": "),
        ]
    if ex.kind == "tcp":
        return _tcp_lines(ex, style, limit, safe)
    if ex.kind == "tunnel":
        o = ex.other or {}
        return [f"[{ex.index}] {_clock(ex.ts)}  TUNNEL {safe(str(o.get('host')))}:{o.get('port')} (not intercepted, not recorded)"]
    if ex.request is None:
        lines = [f"[{ex.index}] {_clock(ex.ts)}  (no request recorded for flow {safe(ex.flow)})"]
        for err in ex.errors:
            lines.append(style("warn", f"{INDENT}error ({safe(str(err.get('phase')))}): {safe(str(err.get('message')))}"))
        return lines
    status = ex.status if ex.status is not None else "no response"
    what = ", ".join(x for x in (turn.protocol, turn.model, "streamed" if turn.streamed else None) if x)
    conn = f"  [{ex.request.get('connection')}]" if ex.request and ex.request.get("connection") else ""
    ts = turn.ts if turn.ts is not None else ex.ts
    what = ", ".join(x for x in (what, "over WebSocket" if ex.ws_open is not None else None) if x)
    lines = [style("head", safe(f"[{ex.index}] {_clock(ts)}  {ex.method} {ex.url} -> {status}  ({what}){conn}"))]
    facts = []
    if ex.duration_ms is not None:
        facts.append(_ms(ex.duration_ms) + (f" (first byte {_ms(ex.ttfb_ms)})" if ex.ttfb_ms is not None else ""))
    if _usage(turn.usage):
        facts.append(_usage(turn.usage))
    if turn.stop_reason:
        facts.append(f"stop: {turn.stop_reason}")
    if facts:
        lines.append(style("dim", INDENT + safe(" · ".join(facts))))
    if turn.system and last_system.get(turn.conversation) != turn.system:
        last_system[turn.conversation] = turn.system
        lines.extend(_message_lines(Message("system", [Part("text", text=turn.system)]), INDENT, style, min(limit or 300, 300), safe))
    if turn.history_note:
        lines.append(style("warn", INDENT + "note: " + turn.history_note))
    shown = turn.new_messages if turn.new_messages is not None else turn.messages
    skipped = len(turn.messages) - len(shown)
    if skipped:
        lines.append(style("dim", f"{INDENT}({skipped} earlier message(s) resent, not repeated)"))
    for msg in shown:
        lines.extend(_message_lines(msg, INDENT, style, limit, safe))
    for msg in turn.reply:
        lines.extend(_message_lines(msg, "  > ", style, limit, safe))
    for note in turn.notes:
        lines.append(style("dim", INDENT + "note: " + safe(note)))
    for err in ex.errors:
        lines.append(style("warn", f"{INDENT}error ({err.get('phase')}): {safe(str(err.get('message')))}"))
    if ex.response_truncated or ex.request_truncated:
        lines.append(style("warn", INDENT + "a body was cut by the gateway (capture.max_body): the transcript is partial"))
    return lines


def _tcp_lines(ex, style: Style, limit: int | None, safe) -> list[str]:
    o = ex.other or {}
    conn = f"  [{o.get('connection')}]" if o.get("connection") else ""
    lines = [style("head", safe(f"[{ex.index}] {_clock(ex.ts)}  TCP {o.get('host')}:{o.get('port')} "
                                f"(raw, via {o.get('via')}){conn}"))]
    for rec in ex.messages:
        data = ex.message_body(rec)
        if not data:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = f"[{len(data)} bytes of binary] " + data[:64].hex()
        sender = "client" if rec.get("from") == "client" else "server"
        lines.extend(_message_lines(Message(sender, [Part("text", text=text)]), INDENT, style, limit, safe))
    end = ex.end or {}
    if end:
        extra = f", error: {end.get('error')}" if end.get("error") else ""
        lines.append(style("dim", INDENT + safe(f"closed: {end.get('size')} bytes{extra}")))
    return lines


def turn_json(turn: Turn) -> dict:
    ex = turn.exchange
    out: dict = {"n": ex.index, "flow": ex.flow, "ts": turn.ts if turn.ts is not None else ex.ts, "kind": ex.kind,
                 "method": ex.method, "url": ex.url}
    if ex.kind != "http":
        out.update({k: v for k, v in (ex.other or {}).items() if k not in ("v", "seq", "t", "ts", "prev", "flow")})
        return out
    shown = turn.new_messages if turn.new_messages is not None else turn.messages
    out.update(
        {
            "connection": (ex.request or {}).get("connection"),
            "status": ex.status,
            "protocol": turn.protocol,
            "model": turn.model,
            "system": turn.system,
            "streamed": turn.streamed,
            "new_messages": [m.to_json() for m in shown],
            "history_messages": len(turn.messages) - len(shown),
            "history_note": turn.history_note,
            "reply": [m.to_json() for m in turn.reply],
            "usage": turn.usage,
            "stop_reason": turn.stop_reason,
            "timing": {"duration_ms": ex.duration_ms, "ttfb_ms": ex.ttfb_ms},
            "size": (ex.end or {}).get("size"),
            "errors": [{"phase": e.get("phase"), "message": e.get("message")} for e in ex.errors],
            "truncated": ex.request_truncated or ex.response_truncated,
            "notes": turn.notes,
        }
    )
    return out
