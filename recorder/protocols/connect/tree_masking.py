"""Masking the text inside decoded protobuf messages, across the messages of a stream.

Every text field goes through the masking rules. A streamed reply splits its text over
many messages (one delta per message, at the same field path), so a secret can start in
one message and end in the next: the texts of one field path are masked as one stream of
text (a *trail*), with the hold-back of a streamed body (docs/masking.md). A message
whose text could still be the start of a secret is held, with every message after it, until
the text that decides it arrives, for about 100 ms at most (MAX_HOLD_SECONDS), or the stream
ends; the client is never delayed, only the record. Bytes fields are masked as bytes. Last, a message is encoded again and searched
whole: a secret that crosses field boundaries (text misread as a nested message) makes
that part of the message bytes, masked as bytes.
"""
from __future__ import annotations

import base64
import time
from collections import deque

from recorder.protocols.connect import wire

CONTEXT = 512  # released text kept per trail as left context (a name before a value)
MAX_HOLD = 256 * 1024  # text held past this is released, masked as if the stream ended
MAX_HELD_MESSAGES = 256
# Text held this long is released (masked as if its stream ended) when more of its direction
# arrives; a stream that goes quiet gets capture's tick after capture.chunk_interval, which
# releases it too (RpcStream.tick). The hold waits for a delta that follows at once, not for
# the next prompt minutes later.
MAX_HOLD_SECONDS = 0.1


class _Held:
    """A message waiting for its text to be released."""

    __slots__ = ("item", "fields", "waiting")

    def __init__(self, item: dict, fields: list[wire.Field] | None):
        self.item = item  # the record entry, completed by `finish` (its "proto")
        self.fields = fields
        self.waiting = 0  # text fields not yet released


class _Trail:
    """The texts of one field path, in arrival order."""

    __slots__ = ("ctx", "pieces", "held", "since")

    def __init__(self):
        self.ctx = b""
        self.pieces: list[tuple[_Held, wire.Field, bytes]] = []
        self.held = 0
        self.since = 0.0  # time.monotonic() when the oldest held piece came

    def add(self, held: _Held, field: wire.Field) -> None:
        text = field.value.encode("utf-8", "surrogatepass")
        if not self.pieces:
            self.since = time.monotonic()
        self.pieces.append((held, field, text))
        self.held += len(text)

    def release(self, masker, final: bool) -> list[tuple[_Held, wire.Field, bytes]]:
        if not self.pieces:
            return []
        full = self.ctx + b"".join(p[2] for p in self.pieces)
        base = len(self.ctx)
        hold = len(full) if final or self.held > MAX_HOLD else masker.hold_point(full, base)
        spans = masker.find(full)
        moved = True
        while moved:  # a secret that crosses the hold point is held whole
            moved = False
            for s in spans:
                if s.start < hold < s.end:
                    hold = max(base, s.start)
                    moved = True
        out = []
        pos = base
        for held, field, text in self.pieces:
            end = pos + len(text)
            if end > hold:
                break
            out.append((held, field, masker.apply(full, spans, pos, end) if spans else text))
            pos = end
        if out:
            self.pieces = self.pieces[len(out):]
            self.held -= pos - base
            self.ctx = full[max(0, pos - CONTEXT):pos]
            self.since = time.monotonic()
        return out


class TreeMasker:
    """Masks the messages of one stream direction, in order. `add` a decoded message (or
    `add_done` an entry needing no masking), then take what is ready with `ready()`; `finish`
    releases the rest when the stream ends."""

    def __init__(self, masker):
        self.masker = masker
        self.trails: dict[str, _Trail] = {}
        self.queue: deque[_Held] = deque()
        self.dirty: set[str] = set()  # trails with text added since the last release

    @property
    def holding(self) -> int:
        return len(self.queue)

    def add(self, item: dict, fields: list[wire.Field]) -> None:
        held = _Held(item, fields)
        touched: set[str] = set()
        for path, f in wire.walk(fields):
            if f.kind == "s":
                if f.value:
                    self.trails.setdefault(path, _Trail()).add(held, f)
                    held.waiting += 1
                    touched.add(path)
            elif f.kind == "b64":
                f.value = self.masker.mask_bytes(f.value)
        self.queue.append(held)
        self.dirty |= touched  # released once per batch, in ready(): one hold decision per path, not per message

    def release_all(self) -> None:
        """Release every trail as if its stream ended here (the stream went quiet: a tick)."""
        for trail in self.trails.values():
            self._release(trail, True)
        self.dirty.clear()

    def release_stale(self) -> None:
        """Release trails whose text has been held longer than MAX_HOLD_SECONDS."""
        now = time.monotonic()
        for trail in self.trails.values():
            if trail.pieces and now - trail.since >= MAX_HOLD_SECONDS:
                self._release(trail, True)

    def add_done(self, item: dict) -> None:
        """An entry that needs no masking here (masked already, or without content): it keeps
        its place in the order."""
        self.queue.append(_Held(item, None))

    def _release(self, trail: _Trail, final: bool) -> None:
        for held, field, masked in trail.release(self.masker, final):
            field.value = masked.decode("utf-8", "replace")
            held.waiting -= 1

    def ready(self) -> list[dict]:
        force = len(self.queue) > MAX_HELD_MESSAGES
        for path in self.dirty:
            self._release(self.trails[path], force)
        self.dirty.clear()
        self.release_stale()
        out = []
        while self.queue and self.queue[0].waiting == 0:
            out.append(self._done(self.queue.popleft()))
        return out

    def finish(self) -> list[dict]:
        self.release_all()
        return self.ready()

    def _done(self, held: _Held) -> dict:
        if held.fields is not None:
            changed, whole = safety_net(self.masker, held.fields)
            if whole is None:
                held.item["proto"] = wire.to_json(held.fields)
            else:
                held.item["b64"] = base64.b64encode(whole).decode("ascii")
            if changed:
                held.item["masked_as_bytes"] = changed
        return held.item


def safety_net(masker, fields: list[wire.Field]) -> tuple[list[str], bytes | None]:
    """Search a masked message whole. A secret that crosses field boundaries turns the
    smallest nested message holding it into bytes, masked as bytes. Returns the paths so
    changed, and the whole message as masked bytes when no nested part would do."""
    if not masker.find(wire.encode(fields)):
        return [], None
    changed: list[str] = []
    _narrow(masker, fields, "", changed)
    encoded = wire.encode(fields)
    if masker.find(encoded):
        return changed + ["(whole message)"], masker.mask_bytes(encoded)
    return changed, None


def _narrow(masker, fields: list[wire.Field], prefix: str, changed: list[str]) -> None:
    for f in fields:
        if f.kind not in ("m", "x", "g"):
            continue
        path = f"{prefix}.{f.num}" if prefix else str(f.num)
        if not masker.find(wire.encode(f.value)):
            continue
        _narrow(masker, f.value, path, changed)
        if f.kind != "g" and masker.find(wire.encode(f.value)):
            masked = masker.mask_bytes(wire.encode(f.value))
            if f.kind == "x":  # it stays hex text, of the masked bytes
                f.kind, f.value = "s", masked.hex()
            else:
                f.kind, f.value = "b64", masked
            changed.append(path)
