"""Masking SSE for the record: the original bytes wherever nothing was masked.

SseMasker (sse.py) masks the delta-text stream and may move held-back text to a later
event: right for what a client receives (nothing waits longer than the hold-back), but it
changes the bytes even when there was no secret, and the record must rebuild the exact
reply. RecordSseMasker runs an SseMasker as a shadow and keeps the original events
beside it. At every sync point (the shadow holds nothing back and no event is half read)
the events since the last one are settled: if the shadow masked nothing in them (it adds
no mask tag), the original bytes are written; otherwise the shadow's masked events are.
A secret split across events is therefore never written in pieces, and an event is held
only until the shadow has decided about the text it carries.
"""
from __future__ import annotations

from recorder.masking.sse import SseMasker

_TAG = b"[MASKED:"


class RecordSseMasker:
    """feed(bytes) -> bytes to record so far; finish() -> the rest."""

    def __init__(self, masker):
        self.shadow = SseMasker(masker)
        self.original: list[bytes] = []  # input since the last sync point
        self.masked: list[bytes] = []  # the shadow's output since the last sync point

    @property
    def notes(self) -> set[str]:
        return self.shadow.notes

    @property
    def held(self) -> int:
        return sum(map(len, self.original))

    def feed(self, data: bytes) -> bytes:
        if data:
            self.original.append(data)
        self.masked.append(self.shadow.feed(data))
        return self._settle() if self._in_sync() else b""

    def finish(self) -> bytes:
        self.masked.append(self.shadow.finish())
        return self._settle()

    def _in_sync(self) -> bool:
        s = self.shadow
        if s.raw is not None:
            return s.raw.held == 0
        return not s.buf and all(ch.stream.held == 0 for ch in s.channels.values())

    def _settle(self) -> bytes:
        original, masked = b"".join(self.original), b"".join(self.masked)
        self.original, self.masked = [], []
        return masked if masked.count(_TAG) > original.count(_TAG) else original
