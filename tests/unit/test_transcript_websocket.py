"""Transcripts of WebSocket flows (Responses API over WebSocket, OpenAI Realtime, others) and raw TCP."""
import json

from recorder.forensics.transcript import build
from recorder.forensics.transcript.render import Style, turn_lines
from recorder.store import format_v1


def rec(t, ts, **fields):
    return {"t": t, "ts": ts, **fields}


def upgrade(flow="f1", url="https://api.openai.com/v1/responses"):
    return [rec("http.request", 1.0, flow=flow, conn="c", connection="openai", method="GET", url=url,
                http_version="HTTP/1.1", headers=[], body=None),
            rec("http.response", 1.1, flow=flow, status=101, headers=[], body=None, streamed=False),
            rec("http.end", 1.1, flow=flow, size={}, duration_ms=100.0, ttfb_ms=100.0),
            rec("ws.open", 1.1, flow=flow, conn="c", connection="openai", url=url)]


def msg(sender, obj, ts, flow="f1", kind="text"):
    data = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return rec("ws.message", ts, flow=flow, **{"from": sender}, n=0, kind=kind, body=format_v1.encode_body(data))


def text_of(turns) -> str:
    lines = []
    for t in turns:
        lines += turn_lines(t, Style(False), None, lambda s: s, {})
    return "\n".join(lines)


def test_responses_over_websocket_become_one_turn_per_response_create():
    records = upgrade() + [
        msg("client", {"type": "response.create", "model": "gpt-5", "instructions": "be brief",
                       "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]}],
                       "tools": [{"type": "function", "name": "shell"}]}, 2.0),
        msg("server", {"type": "response.created", "response": {"model": "gpt-5"}}, 2.1),
        msg("server", {"type": "response.output_item.done", "item": {"type": "function_call", "name": "shell",
                                                                     "call_id": "c1", "arguments": "{\"cmd\": \"ls\"}"}}, 2.2),
        msg("server", {"type": "response.completed", "response": {"id": "r1", "model": "gpt-5", "status": "completed", "output": [
            {"type": "function_call", "name": "shell", "call_id": "c1", "arguments": "{\"cmd\": \"ls\"}"}]}}, 2.3),
        msg("client", {"type": "response.create", "model": "gpt-5", "previous_response_id": "r1",
                       "input": [{"type": "function_call_output", "call_id": "c1", "output": "a.txt b.txt"}]}, 3.0),
        msg("server", {"type": "response.output_text.delta", "delta": "Two "}, 3.1),
        msg("server", {"type": "response.output_text.delta", "delta": "files."}, 3.2),
        rec("ws.close", 4.0, flow="f1", code=1000, reason="", by="client", messages={"client": 2, "server": 6}),
    ]
    turns = build(records)
    assert [t.protocol for t in turns] == ["openai.responses", "openai.responses"]
    assert [t.ts for t in turns] == [2.0, 3.0]
    first, second = turns
    assert first.model == "gpt-5" and first.system == "be brief"
    assert first.messages[0].parts[0].text == "list files"
    assert first.reply[0].parts[0].type == "tool_call" and first.reply[0].parts[0].arguments == {"cmd": "ls"}
    assert second.messages[0].parts[0].type == "tool_result" and second.messages[0].parts[0].text == "a.txt b.txt"
    assert second.reply[0].parts[0].text == "Two files."
    out = text_of(turns)
    assert out.index("list files") < out.index("tool call shell") < out.index("a.txt b.txt") < out.index("Two files.")
    assert "over WebSocket" in out and "closed by client (1000)" in out


def test_openai_realtime_text_events():
    records = upgrade(url="https://api.openai.com/v1/realtime?model=gpt-realtime") + [
        msg("server", {"type": "session.created", "session": {"model": "gpt-realtime"}}, 1.5),
        msg("client", {"type": "session.update", "session": {"instructions": "speak like a pirate"}}, 2.0),
        msg("client", {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                                   "content": [{"type": "input_text", "text": "hello there"}]}}, 2.1),
        msg("client", {"type": "response.create"}, 2.2),
        msg("server", {"type": "response.text.delta", "delta": "Ahoy "}, 2.3),
        msg("server", {"type": "response.text.delta", "delta": "matey"}, 2.4),
        msg("client", {"type": "conversation.item.create", "item": {"type": "message", "role": "user",
                                                                   "content": [{"type": "input_text", "text": "again"}]}}, 3.0),
        msg("client", {"type": "response.create"}, 3.1),
        msg("server", {"type": "response.done", "response": {"status": "completed", "output": [
            {"type": "message", "role": "assistant", "content": [{"type": "audio", "transcript": "Arr again"}]}]}}, 3.2),
    ]
    turns = build(records)
    assert [t.protocol for t in turns] == ["openai.realtime"] * 2
    assert turns[0].model == "gpt-realtime" and turns[0].system == "speak like a pirate"
    assert turns[0].messages[0].parts[0].text == "hello there" and turns[0].reply[0].parts[0].text == "Ahoy matey"
    assert turns[1].messages[0].parts[0].text == "again" and turns[1].reply[0].parts[0].text == "Arr again"


def test_another_websocket_protocol_lists_its_messages_and_raw_tcp_is_shown():
    records = upgrade(url="https://svc.example/ws") + [
        msg("client", b"ping 1", 2.0), msg("server", b"\x00\x01", 2.1, kind="binary"),
        rec("tcp.open", 5.0, flow="t1", conn="c", connection="db", host="db.example", port=5432, via="connect"),
        rec("tcp.message", 5.1, flow="t1", **{"from": "client"}, n=0, body=format_v1.encode_body(b"HELLO")),
        rec("tcp.message", 5.2, flow="t1", **{"from": "server"}, n=0, body=format_v1.encode_body(b"\xff\x00")),
        rec("tcp.close", 5.3, flow="t1", messages={"client": 1, "server": 1}, size={"client": 5, "server": 2}),
        rec("tcp.refused", 6.0, conn="c", host="x.example", port=22, protocol="tcp", reason="raw_tcp", message="no"),
    ]
    turns = build(records)
    assert [t.protocol for t in turns] == ["websocket", "tcp", "tcp.refused"]
    out = text_of(turns)
    assert "client: ping 1" in out and "server: [2 bytes of binary]" in out
    assert "TCP db.example:5432 (raw, via connect)  [db]" in out and "client: HELLO" in out
    assert "REFUSED TCP x.example:22" in out and "no WebSocket close" not in out
