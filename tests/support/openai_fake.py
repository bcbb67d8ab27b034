"""A scripted OpenAI Responses API model, for agent tests (Codex CLI and others).

`ScriptedModel.events(payload)` answers one `response.create` (WebSocket) or POST /v1/responses
(SSE) request with the Responses API's streamed events:

- a warm-up request (`generate: false`): an empty response;
- while the request's input holds no tool output yet, and the request offers a shell-like
  tool: a function call to it (`tool_command`), so the agent runs a command and calls again;
- once a tool output is in the input: a message with `final_text`, spelled out in deltas.

Every request payload is kept in `requests`, the ground truth of what the agent sent.
"""
from __future__ import annotations

import itertools
import json
import threading

SHELL_TOOLS = ("exec_command", "shell_command", "shell", "local_shell")


class _Scripted:
    """What every scripted model keeps: its script, and every payload it was sent."""

    def __init__(self, *, final_text: str = "All done: the fake model's final words.",
                 tool_command: str = "echo wiretrail-tool-ran"):
        self.final_text = final_text
        self.tool_command = tool_command
        self.requests: list[dict] = []
        self._ids = itertools.count(1)
        self._lock = threading.Lock()


class ScriptedModel(_Scripted):

    def __call__(self, payload: dict) -> list[dict]:
        return self.events(payload)

    # -- what the agent sent -----------------------------------------------------------------

    @staticmethod
    def tool_outputs(payload: dict) -> list[dict]:
        items = payload.get("input")
        return [i for i in items if isinstance(i, dict) and i.get("type") in (
            "function_call_output", "custom_tool_call_output", "local_shell_call_output")] if isinstance(items, list) else []

    @staticmethod
    def shell_tool(payload: dict) -> dict | None:
        tools = {t.get("name") or t.get("type"): t for t in payload.get("tools") or () if isinstance(t, dict)}
        for name in SHELL_TOOLS:
            if name in tools:
                return tools[name]
        return None

    # -- what it answers -------------------------------------------------------------------------

    def events(self, payload: dict) -> list[dict]:
        with self._lock:
            self.requests.append(payload)
            n = next(self._ids)
        model = payload.get("model") or "gpt-fake"
        rid = f"resp_fake_{n}"
        response = {"id": rid, "object": "response", "created_at": 1_700_000_000, "status": "in_progress",
                    "model": model, "output": []}
        if payload.get("generate") is False:  # Codex warms the connection up with one of these
            return [{"type": "response.created", "response": response},
                    {"type": "response.completed", "response": dict(response, status="completed")}]
        tool = self.shell_tool(payload)
        if tool is not None and not self.tool_outputs(payload):
            item = self._tool_call(tool, n)
            deltas: list[dict] = []
            if item["type"] == "function_call":
                deltas = [{"type": "response.function_call_arguments.delta", "item_id": item["id"],
                           "output_index": 0, "delta": item["arguments"]},
                          {"type": "response.function_call_arguments.done", "item_id": item["id"],
                           "output_index": 0, "arguments": item["arguments"]}]
        else:
            item = {"type": "message", "id": f"msg_fake_{n}", "role": "assistant", "status": "completed",
                    "content": [{"type": "output_text", "text": self.final_text, "annotations": []}]}
            words = self.final_text.split(" ")
            pieces = [w + (" " if i < len(words) - 1 else "") for i, w in enumerate(words)]
            deltas = [{"type": "response.content_part.added", "item_id": item["id"], "output_index": 0,
                       "content_index": 0, "part": {"type": "output_text", "text": "", "annotations": []}}]
            deltas += [{"type": "response.output_text.delta", "item_id": item["id"], "output_index": 0,
                        "content_index": 0, "delta": p} for p in pieces]
            deltas += [{"type": "response.output_text.done", "item_id": item["id"], "output_index": 0,
                        "content_index": 0, "text": self.final_text}]
        done = dict(response, status="completed", output=[item],
                    usage={"input_tokens": 50, "output_tokens": 10, "total_tokens": 60,
                           "input_tokens_details": {"cached_tokens": 0},
                           "output_tokens_details": {"reasoning_tokens": 0}})
        added = dict(item, status="in_progress")
        if item["type"] == "message":
            added["content"] = []
        return ([{"type": "response.created", "response": response},
                 {"type": "response.in_progress", "response": response},
                 {"type": "response.output_item.added", "output_index": 0, "item": added}]
                + deltas
                + [{"type": "response.output_item.done", "output_index": 0, "item": item},
                   {"type": "response.completed", "response": done}])

    def _tool_call(self, tool: dict, n: int) -> dict:
        name = tool.get("name") or tool.get("type")
        call_id = f"call_fake_{n}"
        if name == "local_shell":
            return {"type": "local_shell_call", "id": f"lsh_{n}", "call_id": call_id, "status": "completed",
                    "action": {"type": "exec", "command": ["bash", "-lc", self.tool_command]}}
        params = (tool.get("parameters") or {}).get("properties") or {}
        if "cmd" in params:
            args = {"cmd": self.tool_command}
        elif "command" in params and (params["command"].get("type") == "array"):
            args = {"command": ["bash", "-lc", self.tool_command]}
        else:
            args = {"command": self.tool_command}
        return {"type": "function_call", "id": f"fc_fake_{n}", "call_id": call_id, "name": name,
                "arguments": json.dumps(args), "status": "completed"}

    def sse(self, payload: dict) -> bytes:
        """The same events as an SSE body (for POST /v1/responses with stream: true)."""
        return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in self.events(payload))


class ScriptedChat(_Scripted):
    """A scripted Chat Completions model (POST /v1/chat/completions), for SDK agent loops.

    While no `tool` message is in the request and it offers a function named in SHELL_TOOLS: a
    tool call to it running `tool_command`; then `final_text`. `answer(payload)` is the route
    tests/support/upstream.py's FakeUpstream(models=...) serves: SSE chunks with "stream": true,
    else one JSON completion. Every payload is kept in `requests`.
    """

    @staticmethod
    def tool_messages(payload: dict) -> list[dict]:
        return [m for m in payload.get("messages") or () if isinstance(m, dict) and m.get("role") == "tool"]

    @staticmethod
    def shell_tool(payload: dict) -> str | None:
        names = [(t.get("function") or {}).get("name") for t in payload.get("tools") or () if isinstance(t, dict)]
        return next((n for n in SHELL_TOOLS if n in names), None)

    def answer(self, payload: dict) -> tuple[str, object]:
        with self._lock:
            self.requests.append(payload)
            n = next(self._ids)
        model = payload.get("model") or "gpt-fake"
        tool = self.shell_tool(payload)
        base = {"id": f"chatcmpl-fake-{n}", "created": 1_700_000_000, "model": model}
        usage = {"prompt_tokens": 30, "completion_tokens": 8, "total_tokens": 38}
        if tool is not None and not self.tool_messages(payload):
            call = {"id": f"call_fake_{n}", "type": "function",
                    "function": {"name": tool, "arguments": json.dumps({"command": self.tool_command})}}
            message, finish = {"role": "assistant", "content": None, "tool_calls": [call]}, "tool_calls"
        else:
            message, finish = {"role": "assistant", "content": self.final_text}, "stop"
        if not payload.get("stream"):
            return "json", dict(base, object="chat.completion", usage=usage, choices=[
                {"index": 0, "message": message, "finish_reason": finish, "logprobs": None}])

        def chunk(delta: dict, finish_reason=None) -> bytes:
            body = dict(base, object="chat.completion.chunk",
                        choices=[{"index": 0, "delta": delta, "finish_reason": finish_reason}])
            return f"data: {json.dumps(body)}\n\n".encode()

        events = [chunk({"role": "assistant", "content": ""})]
        if finish == "tool_calls":
            call = message["tool_calls"][0]
            args = call["function"]["arguments"]
            events.append(chunk({"tool_calls": [{"index": 0, "id": call["id"], "type": "function",
                                                 "function": {"name": call["function"]["name"], "arguments": ""}}]}))
            events += [chunk({"tool_calls": [{"index": 0, "function": {"arguments": args[i:i + 12]}}]})
                       for i in range(0, len(args), 12)]
        else:
            words = self.final_text.split(" ")
            events += [chunk({"content": w + (" " if i < len(words) - 1 else "")}) for i, w in enumerate(words)]
        events += [chunk({}, finish), b"data: [DONE]\n\n"]
        return "sse", events
