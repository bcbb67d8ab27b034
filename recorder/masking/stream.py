"""Masking a stream: text arrives in pieces, and a secret may be split across them.

`StreamMasker.feed(piece)` returns what is safe to emit now and holds back only the
shortest tail that could still complete a secret: from the start of the leftmost match
that reaches the end of what has arrived (a partial match, or a complete one that could
still grow). `finish()` releases the rest, masked. Released text is never taken back, so
nothing released can be the start of a secret that a later piece completes.

The cost is latency for the held tail only: ordinary prose is released at once, a
trailing "sk-" or "password = " waits for the characters that decide it.
"""
from __future__ import annotations

CONTEXT = 512  # released bytes kept to give rules their left context (a name before a value)
MAX_HOLD = 256 * 1024  # a tail held longer than this is released, masked as if the stream ended


def _char_start(data: bytes, i: int) -> int:
    """Move i back to the start of a UTF-8 character, so held text is whole characters."""
    for _ in range(3):
        if 0 < i < len(data) and data[i] & 0xC0 == 0x80:
            i -= 1
    return i


class StreamMasker:
    """Masks one stream of bytes (UTF-8 text or not) fed in arbitrary pieces."""

    __slots__ = ("masker", "ctx", "pending", "released")

    def __init__(self, masker):
        self.masker = masker
        self.ctx = b""  # the last CONTEXT released bytes, unmasked
        self.pending = b""
        self.released = 0

    @property
    def held(self) -> int:
        return len(self.pending)

    def feed(self, piece: bytes) -> bytes:
        if piece:
            self.pending += piece
        return self._release(final=len(self.pending) > MAX_HOLD)

    def finish(self) -> bytes:
        return self._release(final=True)

    def _release(self, final: bool) -> bytes:
        if not self.pending:
            return b""
        m = self.masker
        full = self.ctx + self.pending
        base = len(self.ctx)
        n = len(full)
        if final:
            hold = n
        else:
            hold = _char_start(full, m.hold_point(full, base))
        spans = m.find(full)
        # A secret that crosses the hold point is held whole.
        moved = True
        while moved:
            moved = False
            for s in spans:
                if s.start < hold < s.end:
                    hold = max(base, s.start)
                    moved = True
        if hold <= base:
            return b""
        out = m.apply(full, spans, base, hold)
        self.ctx = full[max(0, hold - CONTEXT):hold]
        self.pending = full[hold:]
        self.released += hold - base
        return out
