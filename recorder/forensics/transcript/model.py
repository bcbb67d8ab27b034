"""What a decoder makes of one exchange: a Turn of messages and a reply."""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from recorder.forensics.exchange import Exchange
from recorder.http import json_depth


@dataclass
class Part:
    type: str  # "text", "thinking", "tool_call", "tool_result", "image", "other"
    text: str = ""
    name: str | None = None  # tool name
    id: str | None = None  # tool call id
    arguments: Any = None  # tool call arguments (parsed JSON when it parses)
    is_error: bool | None = None

    def to_json(self) -> dict:
        out: dict = {"type": self.type}
        for key in ("text", "name", "id", "arguments", "is_error"):
            value = getattr(self, key)
            if value not in (None, ""):
                out[key] = value
        return out


@dataclass
class Message:
    role: str
    parts: list[Part] = field(default_factory=list)

    def fingerprint(self) -> str:
        """Equal for the same message resent in a later turn."""
        data = json.dumps([self.role, [p.to_json() for p in self.parts]], sort_keys=True, default=str)
        return hashlib.sha256(data.encode()).hexdigest()

    def to_json(self) -> dict:
        return {"role": self.role, "parts": [p.to_json() for p in self.parts]}


@dataclass
class Turn:
    exchange: Exchange
    protocol: str  # "openai.chat", "openai.responses", "anthropic.messages", "mcp", "http"
    model: str | None = None
    system: str | None = None
    messages: list[Message] = field(default_factory=list)  # as the request carried them (history included)
    reply: list[Message] = field(default_factory=list)
    usage: dict = field(default_factory=dict)
    stop_reason: str | None = None
    streamed: bool = False
    notes: list[str] = field(default_factory=list)
    # Messages resend the history: turns with the same key form one conversation.
    # None: this protocol has no history (MCP, generic).
    conversation: str | None = None
    new_messages: list[Message] | None = None  # filled by conversation.mark_new
    history_note: str | None = None
    ts: float | None = None  # when this turn's request was made, where that is not the exchange's start (WebSocket)
    # The tools offered to the model (or listed by an MCP server): name -> the definition as
    # canonical JSON, so that a reviewer can see a tool appear, vanish or change between turns.
    tools: dict[str, str] | None = None


def text_of(value) -> str:
    """Text from a string or a list of content parts (any of the APIs' shapes)."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        out = []
        for item in value:
            if isinstance(item, str):
                out.append(item)
            elif isinstance(item, dict):
                t = item.get("text")
                if isinstance(t, str):
                    out.append(t)
                elif isinstance(item.get("content"), (str, list)):
                    out.append(text_of(item["content"]))
        return "\n".join(out)
    if isinstance(value, dict) and isinstance(value.get("text"), str):
        return value["text"]
    return json.dumps(value, ensure_ascii=False)


def tool_table(tools, name_of) -> dict[str, str]:
    """name -> canonical JSON of each tool definition in a request's (or reply's) tool list."""
    out: dict[str, str] = {}
    for tool in tools if isinstance(tools, list) else ():
        if isinstance(tool, dict):
            name = str(name_of(tool))
            out[name if name not in out else f"{name} ({len(out) + 1})"] = json.dumps(
                tool, ensure_ascii=False, sort_keys=True, indent=1)
    return out


def parse_json_args(value):
    """Tool arguments are often a JSON string: parse it when it parses (and is not too deep)."""
    if isinstance(value, str):
        parsed = json_depth.loads(value)
        return value if parsed is None else parsed
    return value


def load_json(data: bytes):
    """The body as JSON, or None: not JSON, or nested too deep to walk (shown as text)."""
    return json_depth.loads(data)
