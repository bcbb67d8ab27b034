"""Masking a stream: text arrives in pieces, and a secret may be split across them.

`TextChannel` decides, as text arrives, which spans of one text stream are secrets. It
holds back only what could still be (the start of) a secret: from where the secret of
the leftmost match that reaches the end would begin (a partial match, or a complete one
that could still grow; for `password = …` the value, not the name). Everything before
is released at once, with the secrets in it. Released text is never taken back.

The hold is bounded:
- in time: text held for MAX_HOLD_SECONDS (about the chunk batching interval) is released
  at the next piece or `force()`. A match that already holds its rule's keyword
  (`ghp_ab…`, `postgres://u:pa…`) can only be a secret: its secret part is masked as it
  stands (a tag of what has arrived), and the text that continues it is masked as well
  when it comes, since the released text stays in the channel as left context. A match
  that does not hold its keyword yet (a trailing `s` that could start `sk-`) is released
  as it is;
- in bytes: more than MAX_HOLD bytes held are released the same way.

`StreamMasker` is a channel over a plain byte stream: feed(bytes) returns the bytes that
are safe to record now, equal to the input except inside masked spans.
"""
from __future__ import annotations

from collections import deque

from recorder.masking.engine import Span

CONTEXT = 512  # released bytes kept as left context (a name before a value)
MAX_HOLD = 256 * 1024  # bytes held at most before a forced release
MAX_HOLD_SECONDS = 0.1  # seconds held at most (capture.chunk_interval's default) before a forced release


def _char_start(data: bytes, i: int, floor: int = 0) -> int:
    """Move i back to the start of a UTF-8 character, so held text is whole characters."""
    for _ in range(3):
        if floor < i < len(data) and data[i] & 0xC0 == 0x80:
            i -= 1
    return i


class Release:
    """What one release decided: channel offsets [start, end) are final now, with `spans`
    (channel offsets, inside [start, end)) to be masked; `data` is that text."""

    __slots__ = ("start", "end", "data", "spans")

    def __init__(self, start: int, end: int, data: bytes, spans: list[Span]):
        self.start, self.end, self.data, self.spans = start, end, data, spans


class TextChannel:
    """One stream of text, fed in pieces. Offsets count bytes from the stream's start."""

    __slots__ = ("masker", "text", "origin", "base", "arrivals")

    def __init__(self, masker):
        self.masker = masker
        self.text = b""  # the stream from offset `origin`: released left context, then held text
        self.origin = 0
        self.base = 0  # offset of the first held byte
        self.arrivals: deque = deque()  # (end offset, time) of pieces with held bytes

    @property
    def end(self) -> int:
        return self.origin + len(self.text)

    @property
    def held(self) -> int:
        return self.end - self.base

    def held_since(self):
        return self.arrivals[0][1] if self.arrivals else None

    def push(self, piece: bytes, now: float | None = None) -> None:
        if piece:
            self.text += piece
            self.arrivals.append((self.end, now))

    def due(self, now: float | None) -> bool:
        """Held longer than the time bound (or than the byte bound)."""
        if self.held > MAX_HOLD:
            return True
        since = self.held_since()
        return since is not None and now is not None and now - since >= MAX_HOLD_SECONDS

    def release(self, *, final: bool = False, force: bool = False, now: float | None = None) -> Release:
        """Decide what can be decided. `final`: the stream ended; `force`: release what is
        held now (the time bound), masking matches that can only be secrets."""
        m = self.masker
        full = self.text
        base = self.base - self.origin
        n = len(full)
        if n == base:
            return Release(self.base, self.base, b"", [])
        force = force or final or self.due(now)
        pending = m.pending(full, base)
        forced: list[Span] = []
        if force:
            hold = n
            for p in sorted(pending, key=lambda p: p.secret_start):
                if p.strong and p.secret_start < n and not any(f.end > max(p.secret_start, base) for f in forced):
                    forced.append(Span(max(p.secret_start, base), n, p.rule, full[p.secret_start:n]))
        else:
            hold = max(base, min((p.secret_start for p in pending), default=n))
            hold = _char_start(full, hold, base)
        spans = m.find(full)
        if forced:
            spans = sorted(spans + [f for f in forced if not any(s.start < f.end and f.start < s.end for s in spans)],
                           key=lambda s: s.start)
        moved = not force
        while moved:  # a secret that crosses the hold point is held whole
            moved = False
            for s in spans:
                if s.start < hold < s.end and max(base, s.start) < hold:
                    hold = max(base, s.start)
                    moved = True
        if hold <= base:
            return Release(self.base, self.base, b"", [])
        out = [Span(max(s.start, base) + self.origin, min(s.end, hold) + self.origin, s.rule, s.secret)
               for s in spans if s.end > base and s.start < hold]
        released = Release(self.base, self.origin + hold, full[base:hold], out)
        # Keep left context, reaching back to every match still open at the release point
        # (its continuation is then still recognised), within the byte bound.
        keep = hold - CONTEXT
        for p in pending:
            if p.start < hold:
                keep = min(keep, p.start)
        keep = max(0, keep, hold - MAX_HOLD)
        self.text = full[keep:]
        self.origin += keep
        self.base = released.end
        while self.arrivals and self.arrivals[0][0] <= self.base:
            self.arrivals.popleft()
        return released


class StreamMasker:
    """Masks one stream of bytes (UTF-8 text or not) fed in arbitrary pieces. The output is
    the input, byte for byte, except inside masked spans."""

    __slots__ = ("masker", "channel")

    def __init__(self, masker):
        self.masker = masker
        self.channel = TextChannel(masker)

    @property
    def held(self) -> int:
        return self.channel.held

    def feed(self, piece: bytes, now: float | None = None) -> bytes:
        self.channel.push(piece, now)
        return self._out(self.channel.release(now=now))

    def force(self, now: float | None = None) -> bytes:
        """Release what is held now (the time bound: see the module doc)."""
        return self._out(self.channel.release(force=True, now=now))

    def finish(self) -> bytes:
        return self._out(self.channel.release(final=True))

    def _out(self, r: Release) -> bytes:
        if not r.spans:
            return r.data
        return self.masker.apply(r.data, [Span(s.start - r.start, s.end - r.start, s.rule, s.secret)
                                          for s in r.spans])
