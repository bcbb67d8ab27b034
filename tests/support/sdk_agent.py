"""A small agent loop on the openai or anthropic Python SDK, run by the SDK venv's python
(tests/support/sdk_venv.py), never imported by the tests.

    python sdk_agent.py openai|anthropic SETUP.py PROMPT [--stream]

SETUP.py is the README's lines for this SDK and mode, run as they are: they must leave a
`client`. The loop offers one tool, `shell`; when the model calls it, it runs the command and
sends the output back, then prints the model's final text. Exit 0 only if the model called the
tool and then answered.
"""
from __future__ import annotations

import json
import subprocess
import sys

TOOL = {"name": "shell", "description": "Run a shell command and return its output.",
        "parameters": {"type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}


def run(command: str) -> str:
    return subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=30).stdout


def openai_loop(client, prompt: str, stream: bool) -> str:
    messages = [{"role": "system", "content": "You are a careful agent."}, {"role": "user", "content": prompt}]
    tools = [{"type": "function", "function": TOOL}]
    called = False
    for _ in range(4):
        if stream:
            text, calls = "", {}
            for chunk in client.chat.completions.create(model="gpt-fake", messages=messages, tools=tools, stream=True):
                delta = chunk.choices[0].delta if chunk.choices else None
                if delta is None:
                    continue
                text += delta.content or ""
                for tc in delta.tool_calls or ():
                    c = calls.setdefault(tc.index, {"id": "", "name": "", "arguments": ""})
                    c["id"] = tc.id or c["id"]
                    c["name"] = (tc.function.name or "") or c["name"]
                    c["arguments"] += tc.function.arguments or ""
            tool_calls = [{"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                          for c in calls.values()]
        else:
            msg = client.chat.completions.create(model="gpt-fake", messages=messages, tools=tools).choices[0].message
            text = msg.content or ""
            tool_calls = [{"id": t.id, "type": "function", "function": {"name": t.function.name,
                                                                        "arguments": t.function.arguments}}
                          for t in msg.tool_calls or ()]
        if not tool_calls:
            assert called, "the model answered without calling the tool"
            return text
        called = True
        messages.append({"role": "assistant", "content": None, "tool_calls": tool_calls})
        for tc in tool_calls:
            out = run(json.loads(tc["function"]["arguments"])["command"])
            messages.append({"role": "tool", "tool_call_id": tc["id"], "content": out})
    raise SystemExit("the model never stopped calling tools")


def anthropic_loop(client, prompt: str, stream: bool) -> str:
    messages = [{"role": "user", "content": prompt}]
    tools = [{"name": TOOL["name"], "description": TOOL["description"], "input_schema": TOOL["parameters"]}]
    called = False
    for _ in range(4):
        kwargs = dict(model="claude-fake", max_tokens=512, system="You are a careful agent.", messages=messages,
                      tools=tools)
        if stream:
            with client.messages.stream(**kwargs) as s:
                message = s.get_final_message()
        else:
            message = client.messages.create(**kwargs)
        uses = [b for b in message.content if b.type == "tool_use"]
        if not uses:
            assert called, "the model answered without calling the tool"
            return "".join(b.text for b in message.content if b.type == "text")
        called = True
        messages.append({"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in message.content]})
        messages.append({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": u.id, "content": run(u.input["command"])} for u in uses]})
    raise SystemExit("the model never stopped calling tools")


def main() -> None:
    sdk, setup, prompt = sys.argv[1:4]
    stream = "--stream" in sys.argv[4:]
    scope: dict = {}
    with open(setup) as f:
        exec(compile(f.read(), setup, "exec"), scope)  # the README's lines, as a user runs them
    loop = openai_loop if sdk == "openai" else anthropic_loop
    print(loop(scope["client"], prompt, stream))


if __name__ == "__main__":
    main()
