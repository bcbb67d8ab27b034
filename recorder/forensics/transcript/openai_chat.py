"""OpenAI chat completions: POST .../chat/completions, JSON or SSE replies."""
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

PROTOCOL = "openai.chat"


def matches(ex: Exchange) -> bool:
    return ex.path.endswith("/chat/completions")


def _message(m: dict) -> Message:
    role = str(m.get("role") or "?")
    parts: list[Part] = []
    if role == "tool":
        return Message("tool", [Part("tool_result", text=text_of(m.get("content")), id=m.get("tool_call_id"))])
    content = m.get("content")
    if isinstance(content, list):
        for item in content:
            if not isinstance(item, dict):
                continue
            kind = item.get("type")
            if kind in ("text", "input_text") or isinstance(item.get("text"), str):
                parts.append(Part("text", text=str(item.get("text", ""))))
            elif kind in ("image_url", "input_image", "image"):
                parts.append(Part("image", text="[image]"))
            else:
                parts.append(Part("other", text=f"[{kind}]"))
    elif content:
        parts.append(Part("text", text=text_of(content)))
    if m.get("refusal"):
        parts.append(Part("text", text=f"(refusal) {m['refusal']}"))
    for call in m.get("tool_calls") or ():
        fn = call.get("function") or {}
        parts.append(Part("tool_call", name=fn.get("name"), id=call.get("id"), arguments=parse_json_args(fn.get("arguments"))))
    if isinstance(m.get("function_call"), dict):  # the legacy shape
        fn = m["function_call"]
        parts.append(Part("tool_call", name=fn.get("name"), arguments=parse_json_args(fn.get("arguments"))))
    return Message(role, parts)


def decode(ex: Exchange) -> Turn:
    turn = Turn(ex, PROTOCOL)
    req = load_json(ex.request_body)
    if isinstance(req, dict):
        turn.model = req.get("model")
        msgs = [m for m in req.get("messages") or () if isinstance(m, dict)]
        system = [m for m in msgs if m.get("role") in ("system", "developer")]
        turn.system = "\n".join(text_of(m.get("content")) for m in system) or None
        turn.messages = [_message(m) for m in msgs if m.get("role") not in ("system", "developer")]
        turn.conversation = PROTOCOL + ":" + (turn.messages[0].fingerprint() if turn.messages else "")
        if isinstance(req.get("tools"), list):
            turn.tools = tool_table(req["tools"], lambda t: (t.get("function") or {}).get("name") or t.get("name") or t.get("type"))
        if req.get("tools"):
            names = [((t.get("function") or {}).get("name") or t.get("type")) for t in req["tools"] if isinstance(t, dict)]
            turn.notes.append("tools offered: " + ", ".join(map(str, names)))
    body = ex.response_body
    if is_sse(ex.response_header("content-type"), body):
        turn.streamed = True
        _assemble_stream(turn, body)
    else:
        reply = load_json(body)
        if isinstance(reply, dict):
            turn.model = reply.get("model") or turn.model
            turn.usage = reply.get("usage") or {}
            for choice in reply.get("choices") or ():
                if isinstance(choice, dict) and isinstance(choice.get("message"), dict):
                    turn.reply.append(_message(choice["message"]))
                    turn.stop_reason = choice.get("finish_reason")
            if isinstance(reply.get("error"), dict):
                turn.notes.append(f"error: {reply['error'].get('message')}")
    return turn


def _assemble_stream(turn: Turn, body: bytes) -> None:
    """Join the deltas of a chat.completion.chunk stream into the reply message."""
    text: list[str] = []
    calls: dict[int, dict] = {}
    role = "assistant"
    for ev in parse_sse(body):
        data = ev.json()
        if not isinstance(data, dict):
            continue
        turn.model = data.get("model") or turn.model
        if isinstance(data.get("usage"), dict):
            turn.usage = data["usage"]
        if isinstance(data.get("error"), dict):
            turn.notes.append(f"error: {data['error'].get('message')}")
        for choice in data.get("choices") or ():
            delta = choice.get("delta") or {}
            role = delta.get("role") or role
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
            for call in delta.get("tool_calls") or ():
                slot = calls.setdefault(call.get("index", len(calls)), {"id": None, "name": None, "arguments": ""})
                slot["id"] = call.get("id") or slot["id"]
                fn = call.get("function") or {}
                slot["name"] = fn.get("name") or slot["name"]
                slot["arguments"] += fn.get("arguments") or ""
            if choice.get("finish_reason"):
                turn.stop_reason = choice["finish_reason"]
    parts = [Part("text", text="".join(text))] if text else []
    for _, c in sorted(calls.items()):
        parts.append(Part("tool_call", name=c["name"], id=c["id"], arguments=parse_json_args(c["arguments"])))
    if parts:
        turn.reply.append(Message(role, parts))
