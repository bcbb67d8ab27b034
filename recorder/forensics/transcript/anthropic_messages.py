"""Anthropic messages: POST .../v1/messages, JSON or SSE replies (text, tool_use, thinking)."""
from __future__ import annotations

from recorder.forensics.exchange import Exchange
from recorder.forensics.transcript.model import (
    Message,
    Part,
    Turn,
    load_json,
    parse_json_args,
    text_of,
    tool_table,
)
from recorder.http.sse import is_sse, parse_sse

PROTOCOL = "anthropic.messages"


def matches(ex: Exchange) -> bool:
    return ex.path.endswith("/messages") and not ex.path.endswith("/count_tokens")


def _block(b) -> Part:
    if isinstance(b, str):
        return Part("text", text=b)
    if not isinstance(b, dict):
        return Part("other", text=str(b))
    kind = b.get("type")
    if kind == "text":
        return Part("text", text=str(b.get("text", "")))
    if kind in ("tool_use", "server_tool_use"):
        return Part("tool_call", name=b.get("name"), id=b.get("id"), arguments=b.get("input"))
    if kind == "tool_result":
        return Part("tool_result", id=b.get("tool_use_id"), text=text_of(b.get("content")), is_error=b.get("is_error"))
    if kind == "thinking":
        return Part("thinking", text=str(b.get("thinking", "")))
    if kind == "redacted_thinking":
        return Part("thinking", text="[redacted thinking]")
    if kind in ("image", "document"):
        return Part("image", text=f"[{kind}]")
    return Part("other", text=f"[{kind}]")


def _message(m: dict) -> Message:
    content = m.get("content")
    blocks = content if isinstance(content, list) else [content] if content else []
    return Message(str(m.get("role") or "?"), [_block(b) for b in blocks])


def decode(ex: Exchange) -> Turn:
    turn = Turn(ex, PROTOCOL)
    req = load_json(ex.request_body)
    if isinstance(req, dict):
        turn.model = req.get("model")
        turn.system = text_of(req.get("system")) or None
        turn.messages = [_message(m) for m in req.get("messages") or () if isinstance(m, dict)]
        turn.conversation = PROTOCOL + ":" + (turn.messages[0].fingerprint() if turn.messages else "")
        if isinstance(req.get("tools"), list):
            turn.tools = tool_table(req["tools"], lambda t: t.get("name") or t.get("type"))
        if req.get("tools"):
            turn.notes.append("tools offered: " + ", ".join(str(t.get("name")) for t in req["tools"] if isinstance(t, dict)))
    body = ex.response_body
    if is_sse(ex.response_header("content-type"), body):
        turn.streamed = True
        _assemble_stream(turn, body)
    else:
        reply = load_json(body)
        if isinstance(reply, dict):
            if reply.get("type") == "error" or isinstance(reply.get("error"), dict):
                turn.notes.append(f"error: {(reply.get('error') or {}).get('message')}")
            else:
                turn.model = reply.get("model") or turn.model
                turn.usage = reply.get("usage") or {}
                turn.stop_reason = reply.get("stop_reason")
                turn.reply.append(_message({"role": reply.get("role", "assistant"), "content": reply.get("content") or []}))
    return turn


def _assemble_stream(turn: Turn, body: bytes) -> None:
    """message_start, content_block_start/delta/stop, message_delta: the final message."""
    blocks: dict[int, dict] = {}
    usage: dict = {}
    role = "assistant"
    for ev in parse_sse(body):
        data = ev.json()
        if not isinstance(data, dict):
            continue
        kind = data.get("type")
        if kind == "message_start":
            msg = data.get("message") or {}
            turn.model = msg.get("model") or turn.model
            role = msg.get("role") or role
            usage.update(msg.get("usage") or {})
        elif kind == "content_block_start":
            block = dict(data.get("content_block") or {})
            if block.get("type") in ("tool_use", "server_tool_use"):
                block["_json"] = ""
            blocks[data.get("index", len(blocks))] = block
        elif kind == "content_block_delta":
            block = blocks.setdefault(data.get("index", 0), {"type": "text", "text": ""})
            delta = data.get("delta") or {}
            dt = delta.get("type")
            if dt == "text_delta":
                block["text"] = block.get("text", "") + delta.get("text", "")
            elif dt == "thinking_delta":
                block["thinking"] = block.get("thinking", "") + delta.get("thinking", "")
            elif dt == "input_json_delta":
                block["_json"] = block.get("_json", "") + delta.get("partial_json", "")
        elif kind == "message_delta":
            usage.update(data.get("usage") or {})
            turn.stop_reason = (data.get("delta") or {}).get("stop_reason") or turn.stop_reason
        elif kind == "error":
            turn.notes.append(f"error: {(data.get('error') or {}).get('message')}")
    parts = []
    for _, block in sorted(blocks.items()):
        if "_json" in block:
            block["input"] = parse_json_args(block.pop("_json")) if block.get("_json") else block.get("input")
        parts.append(_block(block))
    turn.usage = usage
    if parts:
        turn.reply.append(Message(role, parts))
