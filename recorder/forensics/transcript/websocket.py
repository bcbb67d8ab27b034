"""WebSocket exchanges as turns: one upgraded flow can carry a whole conversation.

- OpenAI Responses API over WebSocket (what Codex CLI speaks): each client `response.create`
  message starts a turn (its input, instructions, model, previous_response_id, as a POST body
  would carry them); the server's response.* events up to `response.completed` are its reply.
- OpenAI Realtime: `session.update` sets the instructions, `conversation.item.create` adds
  messages and tool results, `response.create` asks for a reply, whose text comes from
  `response.done` (or else from the text and transcript deltas).
- Anything else: one turn listing the messages both ways, as text or a size.
"""
from __future__ import annotations

import json

from recorder.forensics.exchange import Exchange
from recorder.forensics.transcript import openai_responses
from recorder.forensics.transcript.model import Message, Part, Turn

PREVIEW = 500
_REALTIME_CLIENT = {"session.update", "conversation.item.create", "input_audio_buffer.append",
                    "input_audio_buffer.commit", "response.cancel", "transcription_session.update"}
_REALTIME_SERVER = {"session.created", "session.updated", "response.done", "conversation.item.created",
                    "response.audio_transcript.delta", "response.output_audio_transcript.delta", "response.text.delta"}
_TEXT_DELTAS = ("response.text.delta", "response.output_text.delta", "response.audio_transcript.delta",
                "response.output_audio_transcript.delta")


def _parsed(ex: Exchange) -> list[tuple[str, object, dict]]:
    out = []
    for rec in ex.messages:
        data = ex.message_body(rec)
        obj = None
        if rec.get("kind") != "binary" and data[:1] in (b"{", b"["):
            try:
                obj = json.loads(data)
            except ValueError:
                obj = None
        out.append((str(rec.get("from")), obj, rec))
    return out


def _type(obj) -> str | None:
    return obj.get("type") if isinstance(obj, dict) and isinstance(obj.get("type"), str) else None


def turns(ex: Exchange) -> list[Turn]:
    msgs = _parsed(ex)
    client_types = {_type(o) for s, o, _ in msgs if s == "client"}
    server_types = {_type(o) for s, o, _ in msgs if s == "server"}
    realtime = bool(client_types & _REALTIME_CLIENT or server_types & _REALTIME_SERVER)
    if realtime:
        out = _realtime(ex, msgs)
    elif "response.create" in client_types:
        out = _responses(ex, msgs)
    else:
        out = [_generic(ex, msgs)]
    if not out:
        out = [_generic(ex, msgs)]
    _close_note(ex, out[-1])
    return out


def _responses(ex: Exchange, msgs) -> list[Turn]:
    out: list[Turn] = []
    turn, events = None, []
    for sender, obj, rec in msgs:
        kind = _type(obj)
        if sender == "client" and kind == "response.create":
            if turn is not None:
                openai_responses.assemble_events(turn, events)
            turn, events = Turn(ex, openai_responses.PROTOCOL, streamed=True, ts=rec.get("ts")), []
            openai_responses.apply_request(turn, obj)
            if obj.get("generate") is False:
                turn.notes.append("warm-up request (generate: false): no reply asked for")
            out.append(turn)
        elif sender == "server" and turn is not None and isinstance(obj, dict):
            events.append(obj)
    if turn is not None:
        openai_responses.assemble_events(turn, events)
    return out


def _realtime_item(item) -> dict | None:
    """A Realtime conversation item in the Responses API's shape (audio parts by their transcript)."""
    if not isinstance(item, dict):
        return None
    content = item.get("content")
    if isinstance(content, list):
        parts = []
        for c in content:
            if isinstance(c, dict) and c.get("type") in ("audio", "input_audio", "output_audio"):
                parts.append({"type": "output_text", "text": c.get("transcript") or f"[{c.get('type')}]"})
            else:
                parts.append(c)
        item = dict(item, content=parts)
    return item


def _realtime(ex: Exchange, msgs) -> list[Turn]:
    out: list[Turn] = []
    instructions, model = None, None
    items: list[dict] = []
    turn, text, final = None, [], None

    def finish():
        if turn is None:
            return
        if final is not None:
            if isinstance(final.get("usage"), dict):
                turn.usage = final["usage"]
            turn.stop_reason = final.get("status") or turn.stop_reason
            output = [i for i in (_realtime_item(x) for x in final.get("output") or ()) if i]
            turn.reply = openai_responses._messages(output)
        if not turn.reply and text:
            turn.reply = [Message("assistant", [Part("text", text="".join(text))])]

    for sender, obj, rec in msgs:
        kind = _type(obj)
        if sender == "client":
            if kind == "session.update" and isinstance(obj.get("session"), dict):
                session = obj["session"]
                instructions = session.get("instructions") or instructions
                model = session.get("model") or model
            elif kind == "conversation.item.create":
                item = _realtime_item(obj.get("item"))
                if item:
                    items.append(item)
            elif kind == "response.create":
                finish()
                turn, text, final = Turn(ex, "openai.realtime", model=model, streamed=True, ts=rec.get("ts")), [], None
                resp = obj.get("response") if isinstance(obj.get("response"), dict) else {}
                turn.system = resp.get("instructions") or instructions
                turn.messages = [m for m in openai_responses._messages(items) if m.role not in ("system", "developer")]
                items = []
                out.append(turn)
        elif isinstance(obj, dict):
            if kind in ("session.created", "session.updated") and isinstance(obj.get("session"), dict):
                model = obj["session"].get("model") or model
                instructions = instructions or obj["session"].get("instructions")
            elif turn is not None and kind in _TEXT_DELTAS and isinstance(obj.get("delta"), str):
                text.append(obj["delta"])
            elif turn is not None and kind == "response.done" and isinstance(obj.get("response"), dict):
                final = obj["response"]
            elif kind == "error" and isinstance(obj.get("error"), dict) and out:
                out[-1].notes.append(f"error: {obj['error'].get('message')}")
    finish()
    return out


def _generic(ex: Exchange, msgs) -> Turn:
    turn = Turn(ex, "websocket")
    for sender, _, rec in msgs:
        data = ex.message_body(rec)
        if rec.get("kind") == "binary":
            text = f"[{(rec.get('body') or {}).get('size', len(data))} bytes of binary]"
        else:
            text = data.decode("utf-8", "replace")
            if len(text) > PREVIEW:
                text = text[:PREVIEW] + f"... [{len(text) - PREVIEW} more characters]"
        turn.messages.append(Message("client" if sender == "client" else "server", [Part("text", text=text)]))
    return turn


def _close_note(ex: Exchange, turn: Turn) -> None:
    c = ex.ws_close
    n = len(ex.messages)
    if c is None:
        turn.notes.append(f"WebSocket: {n} message(s), no ws.close recorded (still open when the file ends)")
        return
    by = c.get("by") or "?"
    reason = f" {c.get('reason')}" if c.get("reason") else ""
    turn.notes.append(f"WebSocket: {n} message(s), closed by {by} ({c.get('code')}{reason})")
    if c.get("not_forwarded") is not None:
        turn.notes.append(f"client message {c['not_forwarded']} was recorded but NOT forwarded ({c.get('reason')})")
