"""Masking Server-Sent Events as they flow: the output is the input, byte for byte, except
inside masked spans. No event is added, none is moved or rewritten, CRLF stays CRLF.

Raw SSE bytes arrive in chunks whose boundaries are not event boundaries, and a model's
output arrives a few characters per event, so a secret can be spread over many events.
The stream is therefore read two ways at once:
- the **raw view**: the bytes as they are, one text stream (recorder/masking/stream.py).
  It finds every secret that stands whole in the bytes (in any field of an event, in
  comments, ids, non-JSON data), wherever the chunks were cut;
- **channels**: the text each event adds to a model's output, joined per channel, so a
  secret sent one character per event is seen whole:
  - OpenAI chat completions: `choices[i].delta.content` / `reasoning_content` / `reasoning`
    / `refusal`, each tool call's `function.arguments`; legacy `choices[i].text`;
  - OpenAI Responses API: every `*.delta` event's `delta`, per item and content part;
  - Anthropic: `content_block_delta` events' `text_delta.text`,
    `input_json_delta.partial_json` and `thinking_delta.thinking`, per content block;
  - any other SSE: the `data` of events that are not JSON, as one text stream.
  Each piece of channel text remembers which bytes of the stream carry it (inside the JSON
  string, escapes included). A secret found in a channel is masked in those bytes: its
  first piece becomes the tag, the pieces in later events become empty strings, and the
  bytes between (the rest of each event) stay as they were.

Bytes are held back only while they could still be (the start of) a secret: from the
first held byte of the raw view or of any channel, or, in an event that has not ended
yet, from the JSON string that may carry channel text (the data itself for non-JSON
events). Holds are bounded in time and bytes as stream.py says; an event cut inside its
channel text waits for its end (up to MAX_EVENT bytes).
"""
from __future__ import annotations

import re

import orjson

from recorder.http.json_depth import DEPTH_ERROR, MAX_DEPTH, depth_exceeds
from recorder.masking.decoding import SegMap, unescape
from recorder.masking.stream import TextChannel

MAX_EVENT = 1024 * 1024  # an "event" longer than this without its end gets no channel text
TOO_DEEP_EVENT = f"an event's JSON is nested deeper than {MAX_DEPTH} levels: masked as text, not value by value"
_LINE_END = re.compile(rb"\r\n|\r|\n")
_LITERAL = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_DELTA_FIELDS = (b"content", b"text", b"partial_json", b"thinking", b"arguments", b"delta",
                 b"reasoning_content", b"reasoning", b"refusal")
_DELTA_KEY = re.compile(rb'"(?:' + b"|".join(_DELTA_FIELDS) + rb')"\s*:\s*(")')


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


def string_count(value) -> int:
    """How many string literals (keys and string values) a parsed JSON value holds. Recursive:
    only for values within MAX_DEPTH."""
    if isinstance(value, str):
        return 1
    n = 0
    if isinstance(value, dict):
        n = len(value)
        value = value.values()
    elif not isinstance(value, list):
        return 0
    for v in value:
        if isinstance(v, str):
            n += 1
        elif isinstance(v, (dict, list)):
            n += string_count(v)
    return n


def string_index(obj, path) -> int:
    """The position, in document order, of the string literal at `path` among all of obj's
    string literals (a key counts before its value): the strings before it, counted."""
    i = 0
    for p in path:
        if isinstance(obj, dict):
            for k, v in obj.items():
                i += 1  # the key
                if k == p:
                    break
                i += 1 if isinstance(v, str) else string_count(v)
        else:
            for v in obj[:p]:
                i += 1 if isinstance(v, str) else string_count(v)
        obj = obj[p]
    return i


class Literals:
    """The string literals of valid JSON text: how many, and where the text inside the
    quotes of the i-th one is (start, end)."""

    __slots__ = ("data", "spans", "count")

    def __init__(self, data: bytes):
        self.data = data
        if b"\\" in data:
            self.spans = [(m.start() + 1, m.end() - 1) for m in _LITERAL.finditer(data)]
            self.count = len(self.spans)
        else:  # no escape: every quote opens or closes a literal
            self.spans = None
            self.count = data.count(b'"') // 2

    def __getitem__(self, i: int) -> tuple[int, int]:
        if self.spans is not None:
            return self.spans[i]
        parts = self.data.split(b'"', 2 * i + 2)  # 2i quotes before its opening one
        start = sum(map(len, parts[:2 * i + 1])) + 2 * i + 1
        return start, start + len(parts[2 * i + 1])


def strings_in(obj, literals: Literals) -> int:
    """How many string literals obj (parsed from the text of `literals`) holds."""
    if literals.spans is None:
        # Without escapes in the text no string holds a quote, so none is escaped in orjson's.
        return orjson.dumps(obj).count(b'"') // 2
    return string_count(obj)


class _Piece:
    """Channel text [start, end) and the stream bytes that carry it."""

    __slots__ = ("start", "end", "to_raw")

    def __init__(self, start: int, end: int, to_raw):
        self.start, self.end, self.to_raw = start, end, to_raw  # to_raw(a, b) -> absolute raw range


class _Channel:
    __slots__ = ("text", "pieces")

    def __init__(self, masker):
        self.text = TextChannel(masker)
        self.pieces: list[_Piece] = []

    def raw_hold(self) -> int | None:
        """The stream offset of its first held byte, or None when it holds nothing."""
        if not self.text.held:
            return None
        base = self.text.base
        for p in self.pieces:
            if p.end > base:
                return p.to_raw(max(base, p.start) - p.start, p.end - p.start)[0]
        return None


def _shifted(seg: SegMap, offset: int):
    def to_raw(a, b):
        x, y = seg.range(a, b)
        return offset + x, offset + y
    return to_raw


class SseMasker:
    """feed(bytes) -> the bytes that are safe now; finish() -> the rest; force() releases
    what the time bound allows. `held` is the number of bytes not yet returned."""

    def __init__(self, masker):
        self.masker = masker
        self.buf = bytearray()  # input from stream offset `origin`: the current event, and what is not returned
        self.origin = 0
        self.base = 0  # what is returned ends here
        self.scan = 0  # where the next unparsed line starts
        self.event_start = 0
        self.lines: list[tuple[int, int]] = []  # (start, end) of the current event's complete lines
        self.big = False  # the current event passed MAX_EVENT without ending
        self.raw = TextChannel(masker)
        self.channels: dict[tuple, _Channel] = {}
        self.fed: dict[tuple, _Channel] = {}  # channels given text since their last release
        self.edits: list[list] = []  # [start, end, replacement] (stream offsets), sorted, not yet returned
        self.notes: set[str] = set()  # why an event that looked like JSON was masked as text

    @property
    def end(self) -> int:
        return self.origin + len(self.buf)

    @property
    def held(self) -> int:
        return self.end - self.base

    def _bytes(self, a: int, b: int) -> bytes:
        return bytes(self.buf[a - self.origin:b - self.origin])

    # -- input -------------------------------------------------------------------------

    def feed(self, data: bytes, now: float | None = None) -> bytes:
        if data:
            self.buf += data
            self.raw.push(data, now)
        self._parse(now, final=False)
        self._release_fed(now)
        self._take(self.raw.release(now=now), None)
        for ch in self.channels.values():
            if ch.text.held and ch.text.due(now):
                self._take(ch.text.release(force=True), ch)
        return self._emit(self._limit())

    def force(self, now: float | None = None) -> bytes:
        """Release what is held now, as the time bound does (stream.py)."""
        self._take(self.raw.release(force=True, now=now), None)
        for ch in self.channels.values():
            if ch.text.held:
                self._take(ch.text.release(force=True), ch)
        return self._emit(self._limit())

    def finish(self) -> bytes:
        self._parse(None, final=True)
        self.fed.clear()  # every channel's text is released below
        for ch in self.channels.values():
            self._take(ch.text.release(final=True), ch)
        self._take(self.raw.release(final=True), None)
        return self._emit(self.end)

    # -- events ------------------------------------------------------------------------

    def _parse(self, now, final: bool) -> None:
        buf, base = self.buf, self.origin
        end = self.end
        pos = self.scan
        while True:
            m = _LINE_END.search(buf, pos - base)
            if m is None:
                break
            if m.group() == b"\r" and m.end() == len(buf) and not final:
                break  # a CR at the end may be the first half of CRLF
            start, stop = pos, base + m.start()
            pos = base + m.end()
            if start == stop:
                self._event(now, pos)
                self.event_start = pos
                self.lines = []
                self.big = False
            elif not self.big:
                self.lines.append((start, stop))
        self.scan = pos
        if final and pos < end:
            self.lines.append((pos, end))
            self.scan = end
            self._event(now, end)
            self.lines = []
            self.event_start = end
        elif end - self.event_start > MAX_EVENT:
            self.big = True
            self.lines = []

    def _event(self, now, end: int) -> None:
        if self.big or not self.lines:
            return
        values = []
        buf, origin = self.buf, self.origin
        for s, e in self.lines:
            if buf.startswith(b"data:", s - origin, e - origin):
                v = s + 5 + (1 if buf[s - origin + 5:s - origin + 6] == b" " else 0)
                values.append((v, e))
        if not values:
            return
        if len(values) == 1:  # most events: one data line
            v, e = values[0]
            data = self._bytes(v, e)
            data_map = SegMap([0, e - v], [v, e], [True])
        else:
            data = b"\n".join(self._bytes(v, e) for v, e in values)
            dec, raw, exact = [], [], []
            d = 0
            for i, (v, e) in enumerate(values):
                if i:
                    dec.append(d)
                    raw.append(values[i - 1][1])
                    exact.append(False)
                    d += 1
                dec.append(d)
                raw.append(v)
                exact.append(True)
                d += e - v
            dec.append(d)
            raw.append(values[-1][1])
            data_map = SegMap(dec, raw, exact)
        stripped = data.strip()
        if stripped == b"[DONE]":
            self._end_channels([("",)], skip=())
            return
        if stripped[:1] in (b"{", b"["):
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError as e:
                if DEPTH_ERROR.search(str(e)):
                    self.notes.add(TOO_DEEP_EVENT)
                obj = None
            # Nesting deeper than MAX_DEPTH takes more than MAX_DEPTH brackets: most events have a few.
            if obj is not None and data.count(b"{") + data.count(b"[") > MAX_DEPTH and depth_exceeds(obj):
                self.notes.add(TOO_DEEP_EVENT)
                obj = None
            if obj is not None:
                self._json_event(now, obj, data, data_map)
                return
        self._push(("",), data, lambda a, b: data_map.range(a, b), now, ended=False)

    def _json_event(self, now, obj, data: bytes, data_map: SegMap) -> None:
        deltas, ends = _deltas(obj)
        keys = {k for k, _ in deltas}
        self._end_channels(ends, skip=keys)
        if not deltas:
            return
        literals = Literals(data)
        if strings_in(obj, literals) != literals.count:
            return  # duplicate keys: the positions cannot be told; the raw view still masks the event

        def ended(key) -> bool:
            return any(key[: len(e)] == e for e in ends)

        for key, path in deltas:
            s, e = literals[string_index(obj, path)]
            value = _get(obj, path).encode("utf-8", "surrogatepass")
            raw = data[s:e]
            if b"\\" in raw:
                decoded, seg = unescape(raw)
                if decoded != value:
                    continue

                def to_raw(a, b, seg=seg, s=s):
                    x, y = seg.range(a, b)
                    return data_map.range(s + x, s + y)
            else:
                if raw != value:
                    continue

                def to_raw(a, b, s=s):
                    return data_map.range(s + a, s + b)
            self._push(key, value, to_raw, now, ended=ended(key))

    def _push(self, key, text: bytes, to_raw, now, ended: bool) -> None:
        ch = self.channels.get(key)
        if ch is None:
            ch = self.channels[key] = _Channel(self.masker)
        if text:
            start = ch.text.end
            ch.pieces.append(_Piece(start, start + len(text), to_raw))
            ch.text.push(text, now)
        if ended:
            self.fed.pop(key, None)
            self._take(ch.text.release(final=True, now=now), ch)
        else:
            # Decided once per fed batch, not once per event: each decision scans the
            # channel's text and its left context again (a model sends a few characters
            # per event, dozens of events per batch).
            self.fed[key] = ch

    def _release_fed(self, now) -> None:
        for ch in self.fed.values():
            self._take(ch.text.release(now=now), ch)
        self.fed.clear()

    def _end_channels(self, ends, skip) -> None:
        for e in ends:
            for key, ch in self.channels.items():
                if key in skip or (e != ("",) and key[: len(e)] != e):
                    continue
                if ch.text.held:
                    self._take(ch.text.release(final=True), ch)

    # -- decisions -> edits -------------------------------------------------------------

    def _take(self, r, ch: _Channel | None) -> None:
        if ch is None:  # the raw view: channel offsets are stream offsets
            for s in r.spans:
                self._edit(s.start, s.end, self.masker.tag(s))
            return
        for s in r.spans:
            tag = self.masker.tag(s)
            first = True
            for p in ch.pieces:
                a, b = max(s.start, p.start), min(s.end, p.end)
                if a >= b:
                    continue
                x, y = p.to_raw(a - p.start, b - p.start)
                self._edit(x, y, tag if first else b"")
                first = False
        base = ch.text.base
        ch.pieces = [p for p in ch.pieces if p.end > base]

    def _edit(self, start: int, end: int, replacement: bytes) -> None:
        """Replace stream bytes [start, end). Overlapping edits merge into one that covers
        both, with the tag of the first of them that has one."""
        start = max(start, self.base)
        if end <= start:
            return
        group = [e for e in self.edits if e[0] < end and start < e[1]]
        if group:
            group.append([start, end, replacement])
            group.sort()
            start, end = group[0][0], max(e[1] for e in group)
            replacement = next((e[2] for e in group if e[2]), b"")
            self.edits = [e for e in self.edits if not (e[0] < end and start < e[1])]
        self.edits.append([start, end, replacement])
        self.edits.sort()

    # -- output ------------------------------------------------------------------------

    def _limit(self) -> int:
        limit = self.raw.base
        for ch in self.channels.values():
            at = ch.raw_hold()
            if at is not None:
                limit = min(limit, at)
        return min(limit, self._event_hold())

    def _event_hold(self) -> int:
        """In the event not yet ended: where channel text may begin."""
        end = self.end
        if self.big or self.event_start >= end:
            return end
        lines = self.lines + ([(self.scan, end)] if self.scan < end else [])
        for s, e in lines:
            line = self._bytes(s, e)
            if not line.startswith(b"data:"):
                if b"data:".startswith(line) and e == end:
                    return s  # the line may still become a data line
                continue
            v = s + 5 + (1 if line[5:6] == b" " else 0)
            rest = self._bytes(v, end)
            head = rest.lstrip()
            if head[:1] not in (b"{", b"["):
                return v  # non-JSON data (or not yet known) is channel text
            m = _DELTA_KEY.search(rest)
            if m is not None:
                return v + m.start(1)
            last = 0
            for lit in _LITERAL.finditer(rest):
                last = lit.end()
            q = rest.find(b'"', last)
            return v + q if q >= 0 else end
        return end

    def _emit(self, limit: int) -> bytes:
        limit = min(limit, self.end)
        for e in self.edits:
            if e[0] < limit < e[1]:
                limit = e[0]
        if limit <= self.base:
            return b""
        out = []
        pos = self.base
        rest = []
        for e in self.edits:
            if e[1] <= limit:
                out.append(self._bytes(pos, e[0]))
                out.append(e[2])
                pos = e[1]
            else:
                rest.append(e)
        out.append(self._bytes(pos, limit))
        self.edits = rest
        self.base = limit
        keep = self.base if self.big else min(self.base, self.event_start)  # an event is kept until parsed
        if keep > self.origin:
            del self.buf[:keep - self.origin]
            self.origin = keep
        return b"".join(out)


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj


def _set(obj, path, value):
    for p in path[:-1]:
        obj = obj[p]
    obj[path[-1]] = value
