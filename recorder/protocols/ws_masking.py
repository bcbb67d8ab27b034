"""WebSocket messages as they are recorded: masked, exact where nothing is masked, split
secrets caught. Runs on the writer (thread or process), like every other body.

Each message is masked whole: JSON value by value, other text and binary as bytes. Text a
peer sends in pieces is also masked as one stream per channel, so a secret split across
messages is masked too. The channels: each `*.delta` event's `delta` of the Responses API
and of OpenAI Realtime (per item and content part, as recorder/masking/sse_masker.py has them for
SSE), the messages that are not JSON (one text stream), and binary messages (one byte stream).

The record keeps message boundaries and is byte for byte what crossed the wire unless
something was masked. So a server message whose end could still be the start of a secret
(what recorder/masking/stream.py would hold back) is held, with the messages after it, until
the text that decides it has arrived, the channel ends (a `*.done` or `response.completed`
event) or the WebSocket closes (`WsFlush` in its ws.close record). The held records are then
written together, each with its own `ts`; a secret that spans messages gets its tag in the
message where it starts, and the messages after it keep only what follows the secret.

Client messages are never held: each is recorded before it is forwarded, and the peer may be
waiting for it. Each is masked with the text before it (of its channel) as context; a secret
that a client splits across two messages is masked only where a part is recognisable alone.

The writer calls `held_records(rtype, ts, fields)` for every record: None for a record that
is not WebSocket's (rendered as usual), else the records to write now (maybe none).
"""
from __future__ import annotations

import base64

import orjson

from recorder.http.json_depth import depth_exceeds
from recorder.masking.json_masking import _UNCHANGED, _walk
from recorder.masking.sse_masker import _deltas, _get, _set
from recorder.masking.stream import CONTEXT, MAX_HOLD, _char_start
from recorder.store.bodies import _cut

MAX_HELD_MESSAGES = 256  # a direction holding more is settled as if its channels ended


class WsDirection:
    """One direction of one WebSocket. Made on the event loop; only the writer touches its state."""

    __slots__ = ("masker", "max_body", "hold", "ref", "pending", "channels", "held_bytes", "before")

    def __init__(self, masker=None, max_body: int = 0, hold: bool = True, before: "WsDirection | None" = None):
        self.masker = masker  # a recorder.masking.Masker, or None (recorded unmasked)
        self.max_body = max_body
        self.hold = hold  # False for the client's direction: every message is settled at once
        # The other direction, whose held messages are written before each of this one's, so the
        # file keeps the order in which they crossed (a reply's held tail before the next request).
        self.before = before
        self.ref: int | None = None  # its number on the way to a writer process
        self.pending: list[_Entry] = []  # messages held, oldest first
        self.channels: dict[tuple, _Channel] = {}
        self.held_bytes = 0

    # -- the writer's side ----------------------------------------------------------------

    def add(self, rtype: str, ts: float, fields: dict, key: str, body: "WsMessageBody") -> list[tuple]:
        out = self.before.flush() if self.before is not None else []
        entry = _Entry(rtype, ts, fields, key, body.data, body.text)
        if self.masker is not None:
            self._parse(entry)
        self.pending.append(entry)
        self.held_bytes += len(body.data)
        if (not self.hold or self.masker is None or self.held_bytes > MAX_HOLD
                or len(self.pending) > MAX_HELD_MESSAGES or self._in_sync()):
            out += self._settle()
        return out

    def flush(self) -> list[tuple]:
        return self._settle() if self.pending else []

    def _parse(self, entry: "_Entry") -> None:
        data = entry.data
        if entry.text and data[:1] in (b"{", b"["):
            try:
                obj = orjson.loads(data)
            except orjson.JSONDecodeError:
                obj = None
            if obj is not None and depth_exceeds(obj):
                obj = None  # too deep to walk (json_depth.py): masked as text, as SSE events are
            if obj is not None:
                deltas, ends = _deltas(obj)
                texts = []
                for chan, path in deltas:
                    value = _get(obj, path)
                    texts.append(value)
                    _set(obj, path, "")
                rest = _walk(self.masker, obj, "")  # ids, whole items, errors: masked as JSON
                entry.obj = obj if rest is _UNCHANGED else rest
                entry.changed = rest is not _UNCHANGED
                for (chan, path), value in zip(deltas, texts):
                    _set(entry.obj, path, value)
                    self._channel(("json",) + chan).pieces.append(
                        _Piece(entry, path, value.encode("utf-8", "surrogatepass")))
                for end in ends:
                    for chan_key, ch in self.channels.items():
                        if chan_key[1:1 + len(end)] == end:
                            ch.ended = True
                return
        self._channel(("text",) if entry.text else ("binary",)).pieces.append(_Piece(entry, None, data))

    def _channel(self, key: tuple) -> "_Channel":
        ch = self.channels.get(key)
        if ch is None:
            ch = self.channels[key] = _Channel()
        return ch

    def _in_sync(self) -> bool:
        """No channel holds text that could still grow into a secret."""
        for ch in self.channels.values():
            if not ch.pieces or ch.ended:
                continue
            full = ch.ctx + b"".join(p.data for p in ch.pieces)
            if _char_start(full, self.masker.hold_point(full, len(ch.ctx))) < len(full):
                return False
        return True

    def _settle(self) -> list[tuple]:
        if self.masker is not None:
            for ch in self.channels.values():
                if ch.pieces:
                    ch.settle(self.masker)
                ch.ended = False
        out = []
        for entry in self.pending:
            out.append(entry.record(self.max_body))
        self.pending = []
        self.held_bytes = 0
        return out


class _Channel:
    __slots__ = ("ctx", "pieces", "ended")

    def __init__(self):
        self.ctx = b""  # the last CONTEXT bytes settled before, unmasked: rules see a name before a value
        self.pieces: list[_Piece] = []
        self.ended = False

    def settle(self, masker) -> None:
        """Mask the pieces as one text (after ctx) and give each its share; a secret's tag goes
        to the piece where the secret starts."""
        base = len(self.ctx)
        full = self.ctx + b"".join(p.data for p in self.pieces)
        spans = [s for s in masker.find(full) if s.end > base]
        if spans:
            pos = base
            for piece in self.pieces:
                start, end = pos, pos + len(piece.data)
                pos = end
                out, at, changed = [], start, False
                for s in spans:
                    if s.end <= start or s.start >= end:
                        continue
                    changed = True
                    if s.start >= start:
                        out.append(full[at:s.start])
                        out.append(masker.tag(s))
                    at = max(at, min(s.end, end))
                if changed:
                    out.append(full[at:end])
                    piece.set(b"".join(out))
        self.ctx = full[max(0, len(full) - CONTEXT):]
        self.pieces = []


class _Piece:
    __slots__ = ("entry", "path", "data")

    def __init__(self, entry, path, data: bytes):
        self.entry, self.path, self.data = entry, path, data

    def set(self, masked: bytes) -> None:
        entry = self.entry
        entry.changed = True
        if self.path is None:
            entry.masked = masked
        else:
            _set(entry.obj, self.path, masked.decode("utf-8", "surrogatepass"))


class _Entry:
    __slots__ = ("rtype", "ts", "fields", "key", "data", "text", "obj", "masked", "changed")

    def __init__(self, rtype, ts, fields, key, data: bytes, text: bool):
        self.rtype, self.ts, self.fields, self.key = rtype, ts, fields, key
        self.data, self.text = data, text
        self.obj = None  # the parsed JSON message, masked in place
        self.masked: bytes | None = None  # a text or binary message, masked
        self.changed = False

    def record(self, max_body: int) -> tuple:
        data = self.data
        if self.changed:
            data = orjson.dumps(self.obj) if self.obj is not None else self.masked
        size = len(self.data)
        data, truncated = _cut(data, max_body, 0)
        if self.text:
            body = {"text": data.decode("utf-8", "replace"), "size": size}
            if truncated:
                body["truncated"] = True
        else:
            body = _binary_body(data, size, truncated)
        fields = dict(self.fields)
        fields[self.key] = body
        return (self.rtype, self.ts, fields)


def _binary_body(data: bytes, size: int, truncated: bool) -> dict:
    body = {"b64": base64.b64encode(data).decode("ascii"), "size": size}
    if truncated:
        body["truncated"] = True
    return body


class WsMessageBody:
    """The body of a ws.message record, as it crossed the wire; the writer masks and renders it."""

    __slots__ = ("data", "text", "direction")

    def __init__(self, data: bytes, text: bool, direction: WsDirection):
        self.data = data
        self.text = text
        self.direction = direction


class WsFlush:
    """In a ws.close record: the messages its directions still hold are written before it."""

    __slots__ = ("directions",)

    def __init__(self, *directions: WsDirection):
        self.directions = directions


def held_records(rtype: str, ts: float, fields: dict) -> list[tuple] | None:
    """None for an ordinary record; else the (rtype, ts, fields) records to write now."""
    for key, value in fields.items():
        t = type(value)
        if t is WsMessageBody:
            return value.direction.add(rtype, ts, fields, key, value)
        if t is WsFlush:
            out = []
            for direction in value.directions:
                out += direction.flush()
            rest = {k: v for k, v in fields.items() if k != key}
            return out + [(rtype, ts, rest)]
    return None
