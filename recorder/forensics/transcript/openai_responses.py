"""OpenAI responses API: POST .../responses, JSON or SSE replies."""
from __future__ import annotations

import json

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

PROTOCOL = "openai.responses"


def matches(ex: Exchange) -> bool:
    return ex.path.rstrip("/").endswith("/responses") and (ex.method or "").upper() == "POST"


def _content_parts(content) -> list[Part]:
    if isinstance(content, str):
        return [Part("text", text=content)]
    parts = []
    for item in content or ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type")
        if kind in ("input_text", "output_text", "text"):
            parts.append(Part("text", text=str(item.get("text", ""))))
        elif kind == "refusal":
            parts.append(Part("text", text=f"(refusal) {item.get('refusal')}"))
        elif kind in ("input_image", "input_file"):
            parts.append(Part("image", text=f"[{kind}]"))
        else:
            parts.append(Part("other", text=f"[{kind}]"))
    return parts


def _item(item) -> Message | None:
    """One input or output item as a message."""
    if isinstance(item, str):
        return Message("user", [Part("text", text=item)])
    if not isinstance(item, dict):
        return None
    kind = item.get("type") or "message"
    if kind == "message":
        return Message(str(item.get("role") or "?"), _content_parts(item.get("content")))
    if kind in ("function_call", "custom_tool_call"):
        args = item.get("arguments", item.get("input"))
        return Message("assistant", [Part("tool_call", name=item.get("name"), id=item.get("call_id"), arguments=parse_json_args(args))])
    if kind in ("function_call_output", "custom_tool_call_output"):
        return Message("tool", [Part("tool_result", id=item.get("call_id"), text=text_of(item.get("output")))])
    if kind == "reasoning":
        summary = text_of(item.get("summary")) or "[reasoning]"
        return Message("assistant", [Part("thinking", text=summary)])
    # An item type this reader does not know (Codex's additional_tools, configuration_update, ...):
    # its type as the speaker, never a role it did not have, and what it holds.
    rest = {k: v for k, v in item.items() if k not in ("type", "id")}
    text = text_of(rest.get("content")) or text_of(rest.get("text")) or (
        json.dumps(rest, ensure_ascii=False, sort_keys=True) if rest else "")
    return Message(f"[{kind}]", [Part("other", text=text)])


def _messages(items) -> list[Message]:
    if isinstance(items, str):
        return [Message("user", [Part("text", text=items)])]
    out = [_item(i) for i in items or ()]
    return [m for m in out if m is not None]


def _apply_response(turn: Turn, resp: dict) -> None:
    turn.model = resp.get("model") or turn.model
    if isinstance(resp.get("usage"), dict):
        turn.usage = resp["usage"]
    turn.stop_reason = resp.get("status") or turn.stop_reason
    if isinstance(resp.get("error"), dict):
        turn.notes.append(f"error: {resp['error'].get('message')}")
    turn.reply = _messages(resp.get("output"))


def decode(ex: Exchange) -> Turn:
    turn = Turn(ex, PROTOCOL)
    req = load_json(ex.request_body)
    if isinstance(req, dict):
        apply_request(turn, req)
    body = ex.response_body
    if is_sse(ex.response_header("content-type"), body):
        turn.streamed = True
        _assemble_stream(turn, body)
    else:
        resp = load_json(body)
        if isinstance(resp, dict):
            _apply_response(turn, resp)
    return turn


def apply_request(turn: Turn, req: dict) -> None:
    """A request's model, instructions and input: a POST body, or a `response.create` message."""
    turn.model = req.get("model")
    messages = _messages(req.get("input"))
    # Instructions and the system/developer messages (Codex sends its instructions as developer
    # messages) are the system prompt: shown once per conversation, and again when they change.
    system = [text_of(req.get("instructions"))] + [
        "\n".join(p.text for p in m.parts if p.text) for m in messages if m.role in ("system", "developer")]
    turn.system = "\n\n".join(s for s in system if s) or None
    turn.messages = [m for m in messages if m.role not in ("system", "developer")]
    if req.get("previous_response_id"):
        # The server keeps the history: the input holds only what is new.
        turn.notes.append(f"continues response {req['previous_response_id']}")
    else:
        turn.conversation = PROTOCOL + ":" + (turn.messages[0].fingerprint() if turn.messages else "")
    if isinstance(req.get("tools"), list):
        turn.tools = tool_table(req["tools"], lambda t: t.get("name") or t.get("type"))
    if req.get("tools"):
        turn.notes.append("tools offered: " + ", ".join(str(t.get("name") or t.get("type")) for t in req["tools"] if isinstance(t, dict)))


def _assemble_stream(turn: Turn, body: bytes) -> None:
    events = []
    for ev in parse_sse(body):
        data = ev.json()
        if isinstance(data, dict):
            events.append(data if data.get("type") else dict(data, type=ev.event))
    assemble_events(turn, events)


def assemble_events(turn: Turn, events: list[dict]) -> None:
    """The final response from response.completed, else the finished items, else the deltas.
    For an SSE reply and for the server's events over a WebSocket alike."""
    done_items: list[dict] = []
    text: list[str] = []
    final = None
    for data in events:
        kind = data.get("type")
        if kind in ("response.completed", "response.failed", "response.incomplete") and isinstance(data.get("response"), dict):
            final = data["response"]
        elif kind in ("response.created", "response.in_progress") and isinstance(data.get("response"), dict):
            turn.model = data["response"].get("model") or turn.model
        elif kind == "response.output_item.done" and isinstance(data.get("item"), dict):
            done_items.append(data["item"])
        elif kind == "response.output_text.delta":
            text.append(str(data.get("delta", "")))
        elif kind == "error":
            turn.notes.append(f"error: {data.get('message')}")
    if final is not None and final.get("output"):
        _apply_response(turn, final)
    else:
        if final is not None:
            _apply_response(turn, final)
        if done_items:
            turn.reply = _messages(done_items)
        elif text:
            turn.reply = [Message("assistant", [Part("text", text="".join(text))])]
