"""Server-Sent Events: which bodies are event streams, and the events of a whole stream.

The one SSE parser: transcripts, replay and export read recorded streams with it, MCP reads
streams fed in pieces with `SSEParser` (each event timed by the chunk that completed it), and
masking (recorder/masking/sse_masker.py, which masks a stream as it flows) picks its masker
with `is_event_stream`.

Follows the WHATWG event-stream rules that matter here: events end at a blank line,
`data:` lines join with newlines, one optional space after the colon is dropped,
lines starting with a colon are comments, CRLF/CR/LF all end a line.
"""
from __future__ import annotations

import codecs
from dataclasses import dataclass

from recorder.http import json_depth


@dataclass
class SSEEvent:
    event: str  # "message" when the stream names none
    data: str
    id: str | None = None

    def json(self):
        """The data parsed as JSON, or None ("[DONE]", not JSON, or nested too deep)."""
        return json_depth.loads(self.data)


def is_event_stream(content_type: str | None) -> bool:
    """The Content-Type says the body is an event stream."""
    return bool(content_type) and "text/event-stream" in content_type.lower()


def is_sse(content_type: str | None, body: bytes) -> bool:
    """An event stream by its Content-Type, or by how a body without one starts."""
    if is_event_stream(content_type):
        return True
    head = body[:64].lstrip()
    return head.startswith((b"data:", b"event:"))


def parse_sse(body: bytes | str) -> list[SSEEvent]:
    text = body.decode("utf-8", errors="replace") if isinstance(body, bytes) else body
    events: list[SSEEvent] = []
    data: list[str] = []
    event = ""
    ev_id = None
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if line == "":
            if data:
                events.append(SSEEvent(event or "message", "\n".join(data), ev_id))
            data, event = [], ""
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "data":
            data.append(value)
        elif name == "event":
            event = value
        elif name == "id":
            ev_id = value
    if data:  # a stream cut before its final blank line still has its last event
        events.append(SSEEvent(event or "message", "\n".join(data), ev_id))
    return events


class SSEParser:
    """The events of a stream fed in pieces (recorded chunks, a live response): `feed` returns
    the events its piece completed, an event being complete at its blank line. Each event is
    read by parse_sse, so its `id` is the one it named itself (None if none), which is what
    tells a resent event (Last-Event-ID) from a new one."""

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""  # the text after the last complete event, its line ends as LF
        self._cr = False  # the piece before ended in CR, which may be half a CRLF
        self._scanned = 0  # how much of _held is known to hold no blank line

    def feed(self, data: bytes, final: bool = False) -> list[SSEEvent]:
        text = self._decoder.decode(data, final)
        if self._cr:
            text, self._cr = "\r" + text, False
        if text.endswith("\r") and not final:
            text, self._cr = text[:-1], True
        held = self._held + text.replace("\r\n", "\n").replace("\r", "\n")
        if final:
            done, self._held = held, ""
        else:
            end = held.rfind("\n\n", self._scanned)
            if end < 0:
                self._held, self._scanned = held, max(0, len(held) - 1)
                return []
            done, self._held = held[:end], held[end + 2:]
        self._scanned = 0
        return [ev for block in done.split("\n\n") for ev in parse_sse(block)]
