"""wiretrail show as a transcript: one session per decoder, written with the real writer."""
from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from recorder import cli
from recorder.forensics.reader import read_session
from recorder.forensics.transcript import build
from recorder.http.sse import parse_sse
from tests.support.sessions_built import Recorder, sse


def show(path: Path, capsys, *extra) -> str:
    assert cli.main(["show", str(path), *extra]) == 0
    return capsys.readouterr().out


def show_json(path: Path, capsys) -> dict:
    assert cli.main(["show", "--json", str(path)]) == 0
    return orjson.loads(capsys.readouterr().out)


CHAT = "https://api.openai.com/v1/chat/completions"


def test_openai_chat_shows_only_new_messages_and_tool_calls(tmp_path, capsys):
    r = Recorder(tmp_path)
    turn1 = [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": "list the files"}]
    call = {"id": "call_1", "type": "function", "function": {"name": "ls", "arguments": "{\"path\": \".\"}"}}
    r.flow(CHAT, {"model": "gpt-4o", "messages": turn1, "tools": [{"type": "function", "function": {"name": "ls"}}]},
           {"model": "gpt-4o-2024", "choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [call]}, "finish_reason": "tool_calls"}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 3}})
    turn2 = turn1 + [{"role": "assistant", "content": None, "tool_calls": [call]},
                     {"role": "tool", "tool_call_id": "call_1", "content": "README.md\nsecret.txt"}]
    chunks = [
        sse({"model": "gpt-4o-2024", "choices": [{"delta": {"role": "assistant", "content": "There are "}}]}),
        sse({"model": "gpt-4o-2024", "choices": [{"delta": {"content": "two files."}}]}),
        sse({"choices": [{"delta": {}, "finish_reason": "stop"}], "usage": {"prompt_tokens": 30, "completion_tokens": 4}}),
        sse("[DONE]"),
    ]
    # Split one event across two chunks: the assembler works on the rebuilt stream.
    joined = b"".join(chunks)
    r.flow(CHAT, {"model": "gpt-4o", "messages": turn2, "stream": True}, b"", sse_chunks=[joined[:50], joined[50:]])
    path = r.close()
    out = show(path, capsys)
    assert "user-agent: agent/1.0" in out
    assert "(openai.chat, gpt-4o-2024)" in out
    assert "    system: You are a coding agent." in out
    assert out.count("system: You are a coding agent.") == 1  # shown once, not per turn
    assert out.count("user: list the files") == 1  # turn 2 resends it: not repeated
    assert '  > assistant tool call ls [call_1]: {"path": "."}' in out
    assert "tokens in 11, out 3" in out and "stop: tool_calls" in out
    assert "(2 earlier message(s) resent, not repeated)" in out
    assert "    tool result [call_1]: README.md\n" in out and "secret.txt" in out
    assert "(openai.chat, gpt-4o-2024, streamed)" in out
    assert "  > assistant: There are two files." in out
    assert "1.2 s (first byte 56 ms)" in out
    doc = show_json(path, capsys)
    second = doc["exchanges"][1]
    assert second["history_messages"] == 2 and second["streamed"] is True
    assert [m["role"] for m in second["new_messages"]] == ["tool"]
    assert second["reply"] == [{"role": "assistant", "parts": [{"type": "text", "text": "There are two files."}]}]
    assert second["usage"] == {"prompt_tokens": 30, "completion_tokens": 4}
    assert doc["identity"]["sub"] == "alice" and doc["client"] == {"ip": "10.0.0.9", "port": 50000}


def test_openai_chat_streamed_tool_call_is_assembled(tmp_path):
    r = Recorder(tmp_path)
    chunks = [
        sse({"choices": [{"delta": {"role": "assistant", "tool_calls": [{"index": 0, "id": "call_9", "function": {"name": "run", "arguments": ""}}]}}]}),
        sse({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{\"cmd\": "}}]}}]}),
        sse({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "\"rm -rf /\"}"}}]}, "finish_reason": "tool_calls"}]}),
    ]
    r.flow(CHAT, {"model": "m", "messages": [{"role": "user", "content": "go"}], "stream": True}, b"", sse_chunks=chunks)
    [turn] = build(read_session(r.close()).records)
    [msg] = turn.reply
    assert [(p.type, p.name, p.id, p.arguments) for p in msg.parts] == [("tool_call", "run", "call_9", {"cmd": "rm -rf /"})]


def test_openai_responses_json_and_stream(tmp_path, capsys):
    r = Recorder(tmp_path)
    url = "https://api.openai.com/v1/responses"
    r.flow(url, {"model": "gpt-5", "instructions": "Be brief.", "input": "what is 2+2?"},
           {"model": "gpt-5", "status": "completed", "usage": {"input_tokens": 9, "output_tokens": 2},
            "output": [{"type": "reasoning", "summary": [{"type": "summary_text", "text": "simple sum"}]},
                       {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "4"}]}]})
    final = {"model": "gpt-5", "status": "completed", "usage": {"input_tokens": 20, "output_tokens": 5},
             "output": [{"type": "function_call", "name": "calc", "call_id": "fc_1", "arguments": "{\"x\": 1}"}]}
    events = [
        sse({"type": "response.created", "response": {"model": "gpt-5"}}, "response.created"),
        sse({"type": "response.function_call_arguments.delta", "delta": "{\"x\""}, "response.function_call_arguments.delta"),
        sse({"type": "response.completed", "response": final}, "response.completed"),
    ]
    r.flow(url, {"model": "gpt-5", "previous_response_id": "resp_1", "stream": True,
                 "input": [{"type": "function_call_output", "call_id": "fc_0", "output": "ok"}]}, b"", sse_chunks=events)
    path = r.close()
    out = show(path, capsys)
    assert "(openai.responses, gpt-5)" in out
    assert "system: Be brief." in out and "user: what is 2+2?" in out
    assert "  > assistant thinking: simple sum" in out and "  > assistant: 4" in out
    assert "tokens in 9, out 2" in out
    assert "tool result [fc_0]: ok" in out
    assert '  > assistant tool call calc [fc_1]: {"x": 1}' in out
    assert "note: continues response resp_1" in out


def test_codex_responses_items_developer_messages_and_unknown_items(tmp_path, capsys):
    """Codex: instructions as developer messages, items of its own types, function-call outputs."""
    r = Recorder(tmp_path)
    url = "https://api.openai.com/v1/responses"
    r.flow(url, {"model": "gpt-5.1-codex", "tools": [{"type": "function", "name": "exec_command"}], "input": [
        {"type": "message", "role": "developer", "content": [{"type": "input_text", "text": "Sandbox: none."}]},
        {"type": "additional_tools", "tools": [{"name": "mcp__fs__read"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "list files"}]},
        {"type": "function_call", "name": "exec_command", "call_id": "c1", "arguments": "{\"cmd\": \"ls\"}"},
        {"type": "function_call_output", "call_id": "c1", "output": "a.txt"}]},
        {"model": "gpt-5.1-codex", "status": "completed",
         "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "one file"}]}]})
    out = show(r.close(), capsys)
    assert "system: Sandbox: none." in out, out  # shown by default
    assert "[additional_tools]:" in out and "mcp__fs__read" in out, out
    assert "assistant: [additional_tools]" not in out
    assert "    tool result [c1]: a.txt" in out and "tool tool result" not in out
    assert "note: tools offered: exec_command" in out


def test_anthropic_stream_with_thinking_and_tool_use(tmp_path, capsys):
    r = Recorder(tmp_path)
    url = "https://api.anthropic.com/v1/messages"
    first = [{"role": "user", "content": "fix the bug"}]
    events = [
        sse({"type": "message_start", "message": {"model": "claude-x", "role": "assistant", "usage": {"input_tokens": 100, "output_tokens": 1}}}, "message_start"),
        sse({"type": "content_block_start", "index": 0, "content_block": {"type": "thinking", "thinking": ""}}, "content_block_start"),
        sse({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "Look at "}}, "content_block_delta"),
        sse({"type": "content_block_delta", "index": 0, "delta": {"type": "thinking_delta", "thinking": "main.py"}}, "content_block_delta"),
        sse({"type": "content_block_start", "index": 1, "content_block": {"type": "text", "text": ""}}, "content_block_start"),
        sse({"type": "content_block_delta", "index": 1, "delta": {"type": "text_delta", "text": "Reading it."}}, "content_block_delta"),
        sse({"type": "content_block_start", "index": 2, "content_block": {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {}}}, "content_block_start"),
        sse({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "{\"file\": "}}, "content_block_delta"),
        sse({"type": "content_block_delta", "index": 2, "delta": {"type": "input_json_delta", "partial_json": "\"main.py\"}"}}, "content_block_delta"),
        sse({"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 42}}, "message_delta"),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    r.flow(url, {"model": "claude-x", "system": [{"type": "text", "text": "You are Claude Code."}], "messages": first, "stream": True}, b"", sse_chunks=events)
    second = first + [
        {"role": "assistant", "content": [{"type": "thinking", "thinking": "Look at main.py", "signature": "sig"},
                                          {"type": "text", "text": "Reading it."},
                                          {"type": "tool_use", "id": "toolu_1", "name": "read", "input": {"file": "main.py"}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_1", "content": "print(1/0)", "is_error": False}]},
    ]
    r.flow(url, {"model": "claude-x", "messages": second},
           {"type": "message", "role": "assistant", "model": "claude-x", "content": [{"type": "text", "text": "Found it: division by zero."}],
            "stop_reason": "end_turn", "usage": {"input_tokens": 150, "output_tokens": 9, "cache_read_input_tokens": 100}})
    path = r.close()
    out = show(path, capsys)
    assert "(anthropic.messages, claude-x, streamed)" in out
    assert "system: You are Claude Code." in out
    assert "  > assistant thinking: Look at main.py" in out
    assert "  > assistant: Reading it." in out
    assert '  > assistant tool call read [toolu_1]: {"file": "main.py"}' in out
    assert "tokens in 100, out 42" in out and "stop: tool_use" in out
    # Turn 2: the echoed assistant message matches the assembled reply: only the tool result is new.
    assert out.count("fix the bug") == 1
    assert "(2 earlier message(s) resent, not repeated)" in out
    assert "user tool result [toolu_1]: print(1/0)" in out
    assert "  > assistant: Found it: division by zero." in out
    assert "tokens in 150, out 9, cache read 100" in out


def test_mcp_tools_call_json_and_sse(tmp_path, capsys):
    r = Recorder(tmp_path)
    url = "https://mcp.example.com/mcp"
    r.flow(url, {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"clientInfo": {"name": "claude-code", "version": "2.0"}}},
           {"jsonrpc": "2.0", "id": 1, "result": {"serverInfo": {"name": "db"}}})
    r.flow(url, {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "query", "arguments": {"sql": "DROP TABLE users"}}},
           {"jsonrpc": "2.0", "id": 2, "result": {"content": [{"type": "text", "text": "table dropped"}], "isError": False}})
    r.flow(url, {"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": "query", "arguments": {"sql": "SELECT 1"}}}, b"",
           sse_chunks=[sse({"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}),
                       sse({"jsonrpc": "2.0", "id": 3, "error": {"code": -32000, "message": "permission denied"}})])
    path = r.close()
    out = show(path, capsys)
    # One MCP session over three exchanges, read as a tool-call log (recorder/protocols/mcp).
    assert "[1] 00:00:01.000  MCP session (Streamable HTTP) https://mcp.example.com/mcp  [llm]" in out
    assert "    client claude-code 2.0 (capabilities: none)" in out
    assert '  00:00:02.000  tool call query [2] {"sql": "DROP TABLE users"}  (100 ms)\n' in out
    assert "                  result: table dropped" in out
    assert "                  error -32000 server error: permission denied" in out
    assert "notification notifications/progress" in out
    doc = show_json(path, capsys)
    assert [e["protocol"] for e in doc["exchanges"]] == ["mcp", "mcp", "mcp"]
    assert {e["mcp_session"] for e in doc["exchanges"]} == {0}
    calls = [e for e in doc["mcp"][0]["log"] if e.get("tool") == "query"]
    assert [c["arguments"] for c in calls] == [{"sql": "DROP TABLE users"}, {"sql": "SELECT 1"}]
    assert calls[1]["error"] == {"code": -32000, "message": "permission denied"}


def test_generic_refused_tunnel_and_signatures(tmp_path, capsys):
    r = Recorder(tmp_path)
    r.flow("https://example.com/upload", None, b"\x00\x01binary", method="GET", stream_request=[b"ab", b"cd"])
    r.raw("auth.refused", {"flow": "refused-1", "method": "POST", "url": "https://api.openai.com/v1/chat/completions",
                            "status": 403, "reason": "policy", "message": "group engineering required"})
    r.raw("tunnel", {"host": "github.com", "port": 443})
    r.raw("checkpoint", {"key": "k1", "sig": "AAAA"})
    path = r.close()
    out = show(path, capsys)
    assert "GET https://example.com/upload -> 200  (http)" in out
    assert "client: abcd" in out  # the streamed request body, rebuilt from its chunks
    assert "REFUSED POST https://api.openai.com/v1/chat/completions -> 403" in out
    assert "policy: group engineering required" in out
    assert "TUNNEL github.com:443 (not intercepted, not recorded)" in out
    assert "signed    1 checkpoint(s), no seal" in out
    assert "closed    " in out and "reason shutdown" in out
    doc = show_json(path, capsys)
    kinds = [e["kind"] for e in doc["exchanges"]]
    assert kinds == ["http", "auth.refused", "tunnel"]
    assert doc["exchanges"][1]["status"] == 403 and doc["checkpoints"] == 1


def test_decoder_failure_falls_back_to_raw(tmp_path, capsys):
    r = Recorder(tmp_path)
    r.flow(CHAT, b"not json at all", b"<html>bad gateway</html>", status=502)
    out = show(r.close(), capsys)
    assert "not readable as openai.chat; shown raw" in out
    assert "client: not json at all" in out and "server: <html>bad gateway</html>" in out


def test_long_text_is_cut_unless_full(tmp_path, capsys):
    r = Recorder(tmp_path)
    r.flow(CHAT, {"model": "m", "messages": [{"role": "user", "content": "a" * 3000 + "END"}]}, {"choices": []})
    path = r.close()
    assert "END" not in show(path, capsys)
    assert "a" * 3000 + "END" in show(path, capsys, "--full")


def test_colour_only_on_request_or_terminal(tmp_path, capsys, monkeypatch):
    r = Recorder(tmp_path)
    r.flow(CHAT, {"model": "m", "messages": [{"role": "user", "content": "hi"}]}, {"choices": []})
    path = r.close()
    assert "\x1b[" not in show(path, capsys)
    assert "\x1b[32muser:\x1b[0m hi" in show(path, capsys, "--color", "always")
    from recorder.commands.show import use_colour

    class Tty:
        def isatty(self):
            return True

    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_colour("auto", Tty()) is True
    monkeypatch.setenv("NO_COLOR", "1")
    assert use_colour("auto", Tty()) is False


@pytest.mark.parametrize("body,count", [(b"data: a\n\ndata: b\r\n\r\n", 2), (b": comment\ndata: x\ndata: y\n\n", 1), (b"data: cut", 1)])
def test_sse_parser(body, count):
    events = parse_sse(body)
    assert len(events) == count
    if count == 1 and b"y" in body:
        assert events[0].data == "x\ny"


def test_rewritten_history_is_flagged_and_shown(tmp_path, capsys):
    """A client that edits the history it resends (compaction, or tampering on the client
    side) does not get the edit hidden as 'already shown'."""
    r = Recorder(tmp_path)
    turn1 = [{"role": "user", "content": "step one"}, {"role": "assistant", "content": "ok"}, {"role": "user", "content": "step two"}]
    r.flow(CHAT, {"model": "m", "messages": turn1}, {"choices": [{"message": {"role": "assistant", "content": "done"}}]})
    turn2 = [turn1[0], {"role": "assistant", "content": "I never said that"}, turn1[2],
             {"role": "assistant", "content": "done"}, {"role": "user", "content": "step three"}]
    r.flow(CHAT, {"model": "m", "messages": turn2}, {"choices": [{"message": {"role": "assistant", "content": "fine"}}]})
    out = show(r.close(), capsys)
    assert "note: the resent history differs from the previous turn's from message 2 on" in out
    assert "assistant: I never said that" in out
    assert "(1 earlier message(s) resent, not repeated)" in out
