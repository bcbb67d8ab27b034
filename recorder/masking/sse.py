"""Masking Server-Sent Events as they are recorded.

Raw SSE bytes arrive in chunks whose boundaries are not event boundaries. Complete
events are parsed; the text an event adds to a model's output (its "delta") is fed to
one StreamMasker per channel, so a secret sent one character per event is still seen
whole. Channels:
- OpenAI chat completions: `choices[i].delta.content` / `reasoning_content` / `refusal`,
  and each tool call's `function.arguments`; legacy completions `choices[i].text`;
- OpenAI Responses API: every `*.delta` event's `delta`, per item and content part;
- Anthropic: `content_block_delta` events' `text_delta.text`,
  `input_json_delta.partial_json` and `thinking_delta.thinking`, per content block;
- any other SSE: the `data` of events that are not JSON, as one text stream.

Each delta event is re-emitted at once with its delta replaced by the masked text that
is safe to release now. A held-back tail moves to the channel's next delta event; when
the channel ends (finish_reason, content_block_stop, a `*.done` event, [DONE], the end of
the stream) it is emitted in a copy of the channel's last delta event, just before the
event that ends it. So the recorded events carry exactly the masked text, possibly in
different pieces and with an extra event. Everything else in an event (ids, whole
messages, errors) is masked as JSON, event by event. Events that need no change are
recorded byte for byte.
"""
from __future__ import annotations

import re

import orjson

from recorder.masking.json_masking import _DEPTH_ERROR, _UNCHANGED, MAX_DEPTH, TooDeep, _walk
from recorder.masking.stream import StreamMasker

MAX_EVENT = 1024 * 1024  # an "event" that never ends is masked as a plain stream from here on
TOO_DEEP_EVENT = f"an event's JSON is nested deeper than {MAX_DEPTH} levels: masked as text, not value by value"
_EVENT_END = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE = re.compile(rb"\r\n|\r|\n")


class _Channel:
    __slots__ = ("stream", "template")

    def __init__(self, masker):
        self.stream = StreamMasker(masker)
        self.template = None  # (other_lines, obj, path, terminator) of its last delta event


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value


def _deltas(obj) -> tuple[list, list]:
    """(deltas, ends): deltas are (channel, path to the str); ends are the channel prefixes
    this event closes (a prefix closes every channel that starts with it)."""
    deltas: list = []
    ends: list = []
    if not isinstance(obj, dict):
        return deltas, ends
    t = obj.get("type")
    if t == "content_block_delta" and isinstance(obj.get("delta"), dict):
        for name in ("text", "partial_json", "thinking"):
            if isinstance(obj["delta"].get(name), str):
                deltas.append((("block", obj.get("index"), name), ("delta", name)))
        return deltas, ends
    if t == "content_block_stop":
        ends.append(("block", obj.get("index")))
        return deltas, ends
    if t in ("message_delta", "message_stop"):
        ends.append(("block",))
        return deltas, ends
    if isinstance(t, str) and t.endswith(".delta") and isinstance(obj.get("delta"), str):
        key = ("resp", obj.get("item_id"), obj.get("output_index"), obj.get("content_index"), t)
        deltas.append((key, ("delta",)))
        return deltas, ends
    if isinstance(t, str) and t.endswith(".done"):
        ends.append(("resp", obj.get("item_id"), obj.get("output_index"), obj.get("content_index")))
        return deltas, ends
    if t in ("response.completed", "response.failed", "response.incomplete"):
        ends.append(("resp",))
    choices = obj.get("choices")
    if isinstance(choices, list):
        for i, c in enumerate(choices):
            if not isinstance(c, dict):
                continue
            idx = c.get("index", i)
            d = c.get("delta")
            if isinstance(d, dict):
                for name in ("content", "reasoning_content", "reasoning", "refusal"):
                    if isinstance(d.get(name), str):
                        deltas.append((("choice", idx, name), ("choices", i, "delta", name)))
                calls = d.get("tool_calls")
                if isinstance(calls, list):
                    for j, tc in enumerate(calls):
                        fn = tc.get("function") if isinstance(tc, dict) else None
                        if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                            key = ("choice", idx, "tool", tc.get("index", j))
                            deltas.append((key, ("choices", i, "delta", "tool_calls", j, "function", "arguments")))
            elif isinstance(c.get("text"), str):
                deltas.append((("choice", idx, "text"), ("choices", i, "text")))
            if c.get("finish_reason") is not None:
                ends.append(("choice", idx))
    return deltas, ends


class SseMasker:
    """feed(bytes) -> masked SSE bytes for the complete events so far; finish() -> the rest."""

    def __init__(self, masker):
        self.masker = masker
        self.buf = b""
        self.channels: dict[tuple, _Channel] = {}
        self.raw: StreamMasker | None = None  # set when the input stopped looking like SSE
        self.notes: set[str] = set()  # why an event that looked like JSON was masked as text

    def feed(self, data: bytes) -> bytes:
        if self.raw is not None:
            return self.raw.feed(data)
        self.buf += data
        out = []
        pos = 0
        for m in _EVENT_END.finditer(self.buf):
            out.append(self._event(self.buf[pos:m.start()], m.group()))
            pos = m.end()
        self.buf = self.buf[pos:]
        if len(self.buf) > MAX_EVENT:
            out.append(self._flush(("",)))
            self.raw = StreamMasker(self.masker)
            out.append(self.raw.feed(self.buf))
            self.buf = b""
        return b"".join(out)

    def finish(self) -> bytes:
        if self.raw is not None:
            return self.raw.finish()
        out = []
        if self.buf:
            out.append(self._event(self.buf, b""))
            self.buf = b""
        out.append(self._flush(("",)))
        return b"".join(out)

    # -- one event -----------------------------------------------------------------------

    def _event(self, raw: bytes, end: bytes) -> bytes:
        lines = _LINE.split(raw)
        data_parts = []
        other = []  # (index, masked line) of every non-data line
        first_data = None
        changed = False
        for i, line in enumerate(lines):
            if line.startswith(b"data:"):
                value = line[5:]
                if value.startswith(b" "):
                    value = value[1:]
                data_parts.append(value)
                if first_data is None:
                    first_data = len(other)
            else:
                masked = self.masker.mask_bytes(line) if line else line
                changed |= masked != line
                other.append(masked)
        if first_data is None:  # no data: comments, event names, ids
            return (b"\n".join(other) + end) if changed else raw + end
        data = b"\n".join(data_parts)
        if data.strip() == b"[DONE]":
            return self._flush(("",)) + (b"\n".join(other[:first_data] + [b"data: [DONE]"] + other[first_data:]) + end
                                          if changed else raw + end)
        obj = None
        if data[:1] in (b"{", b"["):
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError as e:
                if _DEPTH_ERROR.search(str(e)):
                    self.notes.add(TOO_DEEP_EVENT)
                obj = None
        if obj is None:
            return self._text_event(other, first_data, data, raw, end, changed)
        deltas, ends = _deltas(obj)

        def ended(key) -> bool:
            return any(key[: len(e)] == e for e in ends)

        # Channels this event ends without a delta of their own: their tails go just before it.
        prefix = b"".join(self._flush(e, skip={k for k, _ in deltas}) for e in ends)
        originals = []
        for key, path in deltas:
            originals.append(_get(obj, path))
            _set(obj, path, "")
        try:
            rest = _walk(self.masker, obj, "")  # ids, whole messages, errors: masked as JSON
        except TooDeep:
            self.notes.add(TOO_DEEP_EVENT)
            return prefix + self._text_event(other, first_data, data, raw, end, changed)
        if rest is not _UNCHANGED:
            obj = rest
            changed = True
        for (key, path), text in zip(deltas, originals):
            ch = self.channels.get(key)
            if ch is None:
                ch = self.channels[key] = _Channel(self.masker)
            released = ch.stream.feed(text.encode("utf-8", "surrogatepass"))
            if ended(key):
                released += ch.stream.finish()
            released = released.decode("utf-8", "surrogatepass")
            _set(obj, path, released)
            changed |= released != text
            ch.template = (other, first_data, path, end or b"\n\n", obj)
        body = raw + end if not changed else self._render(other, first_data, orjson.dumps(obj), end)
        return prefix + body

    def _text_event(self, other, first_data, data, raw, end, changed) -> bytes:
        ch = self.channels.get(("",))
        if ch is None:
            ch = self.channels[("",)] = _Channel(self.masker)
        released = ch.stream.feed(data)
        ch.template = (other, first_data, None, end or b"\n\n", None)
        if released == data and not changed:
            return raw + end
        return self._render(other, first_data, released, end)

    @staticmethod
    def _render(other, first_data, data: bytes, end: bytes) -> bytes:
        data_lines = [b"data: " + part for part in data.split(b"\n")] if data else [b"data:"]
        return b"\n".join(other[:first_data] + data_lines + other[first_data:]) + end

    def _flush(self, prefix: tuple, skip=()) -> bytes:
        """Release the held tail of every channel whose key starts with prefix (("",) = all)."""
        out = []
        for key, ch in self.channels.items():
            if key in skip or (prefix != ("",) and key[: len(prefix)] != prefix):
                continue
            tail = ch.stream.finish()
            if not tail or ch.template is None:
                continue
            other, first_data, path, end, obj = ch.template
            if path is None:
                out.append(self._render(other, first_data, tail, end))
            else:
                copy = orjson.loads(orjson.dumps(obj))
                _set(copy, path, tail.decode("utf-8", "surrogatepass"))
                # the copy carries only this channel's text
                for k2, p2 in _deltas(copy)[0]:
                    if p2 != path:
                        _set(copy, p2, "")
                out.append(self._render(other, first_data, orjson.dumps(copy), end))
        return b"".join(out)
