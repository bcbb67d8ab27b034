"""A session as a transcript: one decoder module per protocol, tried in order.

`build(records)` puts each flow back together (exchange.py), lets the first decoder
that claims it make a Turn (model.py), and marks which messages are new
(conversation.py). render.py turns the result into text or JSON.
"""
from __future__ import annotations

from recorder.forensics.exchange import Exchange, exchanges
from recorder.forensics.transcript import (
    anthropic_messages,
    cursor,
    generic,
    mcp_jsonrpc,
    openai_chat,
    openai_responses,
    rpc,
    websocket,
)
from recorder.forensics.transcript.conversation import mark_new
from recorder.forensics.transcript.model import Message, Part, Turn

# Order matters: MCP is recognised by its body, the LLM APIs by their paths.
DECODERS = (mcp_jsonrpc, openai_responses, openai_chat, anthropic_messages)


def decode_exchange(ex: Exchange) -> Turn:
    if ex.kind == "http" and ex.request is not None:
        for decoder in DECODERS:
            try:
                if decoder.matches(ex):
                    turn = decoder.decode(ex)
                    if turn.messages or turn.reply or not (ex.request_body or ex.response_body):
                        return turn
                    raw = generic.decode(ex)  # the path said this protocol, the bodies did not
                    raw.notes.append(f"not readable as {decoder.PROTOCOL}; shown raw")
                    return raw
            except Exception as e:  # recorded data is untrusted: a decoder bug must not hide the exchange
                turn = generic.decode(ex)
                turn.notes.append(f"{decoder.PROTOCOL} decoder failed ({type(e).__name__}: {e}); shown raw")
                return turn
    if ex.kind != "http" or ex.request is None:
        return Turn(ex, ex.kind)
    return generic.decode(ex)


def decode_websocket(ex: Exchange) -> list[Turn]:
    """An upgraded flow: one turn per request it carried (recorder/forensics/transcript/websocket.py)."""
    try:
        return websocket.turns(ex)
    except Exception as e:  # recorded data is untrusted: a decoder bug must not hide the exchange
        turn = Turn(ex, "websocket")
        turn.notes.append(f"WebSocket decoder failed ({type(e).__name__}: {e}); {len(ex.messages)} message(s) recorded")
        return [turn]


def decode_rpc(ex: Exchange, namer: rpc.Namer, appends: list[Exchange]) -> list[Turn]:
    """A Connect/gRPC exchange (recorder/forensics/transcript/rpc.py): Cursor's agent as a conversation,
    anything else as its messages' strings with their field paths."""
    try:
        if cursor.matches(ex):
            return cursor.turns(ex, namer, appends)
        return [rpc.generic_turn(ex, namer)]
    except Exception as e:  # recorded data is untrusted: a decoder bug must not hide the exchange
        turn = generic.decode(ex)
        turn.notes.append(f"RPC decoder failed ({type(e).__name__}: {e}); shown raw")
        return [turn]


def build(records: list[dict], descriptors=None) -> list[Turn]:
    """`descriptors` (recorder.protocols.connect.descriptors.Descriptors) names protobuf fields."""
    turns: list[Turn] = []
    exs = exchanges(records)
    linked = cursor.link_fallback(exs)  # Cursor's HTTP/1.1 posts, shown in their stream's turns
    namer = rpc.Namer(descriptors)
    for ex in exs:
        if ex.flow in linked:
            continue
        if ex.kind == "http" and (ex.ws_open is not None or ex.messages):
            turns.extend(decode_websocket(ex))
        elif rpc.is_rpc_exchange(ex):
            turns.extend(decode_rpc(ex, namer, [a for a in exs if linked.get(a.flow) is ex]))
        else:
            turns.append(decode_exchange(ex))
    mark_new(turns)
    return turns


__all__ = ["Exchange", "Message", "Part", "Turn", "build", "decode_exchange", "exchanges"]
