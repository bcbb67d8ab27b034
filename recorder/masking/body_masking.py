"""Which masker a body gets: SSE as events, JSON value by value, the rest as bytes."""
from __future__ import annotations

from recorder.http.sse import is_event_stream
from recorder.masking.json_masking import mask_json_bytes
from recorder.masking.sse_masker import SseMasker
from recorder.masking.stream import StreamMasker


def mask_body(masker, data: bytes, content_type: str | None = None, *, exact: bool = True,
              notes: set | None = None) -> bytes:
    """A whole body masked: the original bytes except inside masked spans (`exact` is kept
    for callers of the time when what was forwarded could differ; every output is exact now).
    `notes` gets why a part that looked like JSON was masked as text instead."""
    if not data:
        return data
    if is_event_stream(content_type):
        s = SseMasker(masker)
        out = s.feed(data) + s.finish()
        if notes is not None:
            notes |= s.notes
        return out
    masked = mask_json_bytes(masker, data, notes)
    if masked is not None:
        return masked
    return masker.mask_bytes(data)


def stream_masker(masker, content_type: str | None = None):
    """A masker for one streamed body: feed(bytes, now) -> bytes, force(now) -> bytes (the
    time bound), finish() -> bytes. Its output is the input except inside masked spans."""
    return SseMasker(masker) if is_event_stream(content_type) else StreamMasker(masker)
