"""Anything no protocol decoder claims: method, URL, status and a body preview."""
from __future__ import annotations

from recorder.forensics.exchange import Exchange
from recorder.forensics.transcript.model import Message, Part, Turn
from recorder.http.sse import is_sse, parse_sse

PROTOCOL = "http"
PREVIEW = 500


def _preview(data: bytes, content_type: str | None) -> str:
    if not data:
        return ""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return f"[{len(data)} bytes of binary{f' ({content_type})' if content_type else ''}]"
    return text if len(text) <= PREVIEW else text[:PREVIEW] + f"... [{len(text) - PREVIEW} more characters]"


def decode(ex: Exchange) -> Turn:
    turn = Turn(ex, PROTOCOL)
    req = _preview(ex.request_body, ex.request_header("content-type"))
    if req:
        turn.messages.append(Message("client", [Part("text", text=req)]))
    body = ex.response_body
    ctype = ex.response_header("content-type")
    if is_sse(ctype, body):
        turn.streamed = True
        events = parse_sse(body)
        turn.notes.append(f"{len(events)} server-sent event(s)")
    resp = _preview(body, ctype)
    if resp:
        turn.reply.append(Message("server", [Part("text", text=resp)]))
    return turn
