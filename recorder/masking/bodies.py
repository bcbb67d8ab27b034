"""Which masker a body gets: SSE as events, JSON value by value, the rest as bytes."""
from __future__ import annotations

from recorder.masking.json_masking import mask_json_bytes
from recorder.masking.sse import SseMasker
from recorder.masking.sse_record import RecordSseMasker
from recorder.masking.stream import StreamMasker


def is_event_stream(content_type: str | None) -> bool:
    return bool(content_type) and "text/event-stream" in content_type.lower()


def mask_body(masker, data: bytes, content_type: str | None = None, *, exact: bool = True,
              notes: set | None = None) -> bytes:
    """A whole body masked. `exact`: SSE keeps its original bytes wherever nothing was masked
    (the record); otherwise held text may move between events (what a client receives).
    `notes` gets why a part that looked like JSON was masked as text instead."""
    if not data:
        return data
    if is_event_stream(content_type):
        s = RecordSseMasker(masker) if exact else SseMasker(masker)
        out = s.feed(data) + s.finish()
        if notes is not None:
            notes |= s.notes
        return out
    masked = mask_json_bytes(masker, data, notes)
    if masked is not None:
        return masked
    return masker.mask_bytes(data)


def body_stream(masker, content_type: str | None = None):
    """A streaming masker for what is forwarded: released text is never held longer than needed."""
    return SseMasker(masker) if is_event_stream(content_type) else StreamMasker(masker)


def record_stream(masker, content_type: str | None = None):
    """A streaming masker for the record: the original bytes wherever nothing was masked."""
    return RecordSseMasker(masker) if is_event_stream(content_type) else StreamMasker(masker)
