"""A scripted Anthropic Messages API model, for agent tests (Claude Code, the Anthropic SDK).

`ScriptedClaude.answer(payload)` answers one POST /v1/messages:

- while the conversation holds no tool result yet, and the request offers a shell-like tool
  (Claude Code's `Bash`, or any tool named in `SHELL_TOOLS`): a thinking block, a short text and a
  `tool_use` of that tool running `tool_command`, with stop_reason "tool_use", so the agent runs
  the command and calls again with its result;
- once a tool result is in the last user turn: `final_text`, spelled out in deltas;
- a request that offers no tool (Claude Code's side calls: titles, quota checks): a short text.

With `"stream": true` the answer is the Messages API's SSE events, else one JSON message.
Every request payload is kept in `requests`: the ground truth of what the agent sent.
"""
from __future__ import annotations

import itertools
import json
import threading

SHELL_TOOLS = ("Bash", "bash", "shell", "run_shell")
SIDE_TEXT = "wiretrail fake side answer"


def sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class ScriptedClaude:
    def __init__(self, *, final_text: str = "All done: the fake Claude's final words.",
                 tool_command: str = "echo wiretrail-tool-ran", thinking: str = "I should look at the files first."):
        self.final_text = final_text
        self.tool_command = tool_command
        self.thinking = thinking
        self.requests: list[dict] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()

    # -- what the agent sent -------------------------------------------------------------------

    @staticmethod
    def tool_results(payload: dict) -> list[dict]:
        """The tool_result blocks of the request's last user message."""
        messages = payload.get("messages") or []
        last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
        content = last.get("content") if last.get("role") == "user" else None
        return [b for b in content if isinstance(b, dict) and b.get("type") == "tool_result"] \
            if isinstance(content, list) else []

    @staticmethod
    def shell_tool(payload: dict) -> dict | None:
        tools = {t.get("name"): t for t in payload.get("tools") or () if isinstance(t, dict)}
        return next((tools[n] for n in SHELL_TOOLS if n in tools), None)

    def agent_requests(self) -> list[dict]:
        """The requests that offered the shell tool: the agent's own turns, not its side calls."""
        with self._lock:
            return [p for p in self.requests if self.shell_tool(p) is not None]

    # -- what it answers -----------------------------------------------------------------------

    def blocks(self, payload: dict) -> tuple[list[dict], str]:
        """The content blocks of the answer and its stop reason."""
        tool = self.shell_tool(payload)
        if tool is None:
            return [{"type": "text", "text": SIDE_TEXT}], "end_turn"
        if not self.tool_results(payload):
            n = next(self._ids)
            props = (tool.get("input_schema") or {}).get("properties") or {}
            args = {"command": self.tool_command}
            if "description" in props:
                args["description"] = "List the files"
            return [{"type": "thinking", "thinking": self.thinking, "signature": "ZmFrZS1zaWduYXR1cmU="},
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": f"toolu_fake_{n}", "name": tool["name"], "input": args}], "tool_use"
        return [{"type": "text", "text": self.final_text}], "end_turn"

    def answer(self, payload: dict) -> tuple[str, object]:
        """("sse", [event bytes]) for a streamed request, else ("json", message dict)."""
        with self._lock:
            self.requests.append(payload)
            n = next(self._ids)
        blocks, stop = self.blocks(payload)
        model = payload.get("model") or "claude-fake"
        usage = {"input_tokens": 40, "output_tokens": 12, "cache_creation_input_tokens": 0,
                 "cache_read_input_tokens": 0}
        message = {"id": f"msg_fake_{n}", "type": "message", "role": "assistant", "model": model,
                   "content": blocks, "stop_reason": stop, "stop_sequence": None, "usage": usage}
        if not payload.get("stream"):
            return "json", message
        events = [sse("message_start", {"type": "message_start", "message": dict(
            message, content=[], stop_reason=None, usage=dict(usage, output_tokens=1))})]
        for i, block in enumerate(blocks):
            events += _block_events(i, block)
        events += [sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
                                         "usage": {"output_tokens": usage["output_tokens"]}}),
                   sse("message_stop", {"type": "message_stop"})]
        return "sse", events


def _block_events(i: int, block: dict) -> list[bytes]:
    kind = block["type"]
    if kind == "text":
        start, deltas = {"type": "text", "text": ""}, [
            {"type": "text_delta", "text": w} for w in _words(block["text"])]
    elif kind == "thinking":
        start, deltas = {"type": "thinking", "thinking": ""}, [
            {"type": "thinking_delta", "thinking": w} for w in _words(block["thinking"])] + [
            {"type": "signature_delta", "signature": block["signature"]}]
    else:  # tool_use: the input arrives as JSON text in pieces
        start = dict(block, input={})
        text = json.dumps(block["input"])
        deltas = [{"type": "input_json_delta", "partial_json": text[j:j + 16]} for j in range(0, len(text), 16)]
    return ([sse("content_block_start", {"type": "content_block_start", "index": i, "content_block": start})]
            + [sse("content_block_delta", {"type": "content_block_delta", "index": i, "delta": d}) for d in deltas]
            + [sse("content_block_stop", {"type": "content_block_stop", "index": i})])


def _words(text: str) -> list[str]:
    words = text.split(" ")
    return [w + (" " if k < len(words) - 1 else "") for k, w in enumerate(words)]
