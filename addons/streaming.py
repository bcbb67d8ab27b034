"""Which bodies stream: one rule for every addon that must agree on it.

Capture tees what streams, and masking of what is forwarded wraps the same streams; if
they disagreed, a streamed body could pass one of them unseen.
"""
from __future__ import annotations

from mitmproxy import http

_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def header_values(headers: http.Headers, *names: bytes) -> list[str | None]:
    """The values of several headers (lowercase names) in one pass, folded as Headers.get
    folds them. Each Headers.get walks every field again; this runs on every request."""
    found: dict[bytes, list[bytes]] = {}
    for name, value in headers.fields:
        low = name.lower()
        if low in names:
            found.setdefault(low, []).append(value)
    return [b", ".join(found[n]).decode("utf-8", "surrogateescape") if n in found else None for n in names]


def _length(value: str | None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def request_streams(req: http.Request, threshold: int) -> bool:
    if req.stream:
        return True
    encoding, length = header_values(req.headers, b"transfer-encoding", b"content-length")
    if encoding is not None and "chunked" in encoding.lower():
        return True
    length = _length(length)
    if length is None:
        # HTTP/2 and HTTP/3 bodies need no length header; a body-carrying method may stream.
        return not req.http_version.startswith("HTTP/1") and req.method not in _BODYLESS_METHODS
    return length > threshold


def response_streams(resp: http.Response, threshold: int) -> bool:
    if resp.stream:
        return True
    if resp.status_code < 200 or resp.status_code in (204, 304):
        return False  # no body (a 101 is followed by another protocol, not by chunks)
    ctype, length = header_values(resp.headers, b"content-type", b"content-length")
    if ctype is not None and ctype.lower().startswith("text/event-stream"):
        return True
    length = _length(length)
    return length is None or length > threshold
