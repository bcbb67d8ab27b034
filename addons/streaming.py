"""Which bodies stream: one rule for every addon that must agree on it.

Capture tees what streams, and masking of what is forwarded wraps the same streams; if
they disagreed, a streamed body could pass one of them unseen.
"""
from __future__ import annotations

from mitmproxy import http

_BODYLESS_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS", "TRACE", "CONNECT"})


def content_length(headers: http.Headers) -> int | None:
    try:
        return int(headers["content-length"])
    except (KeyError, ValueError):
        return None


def request_streams(req: http.Request, threshold: int) -> bool:
    if req.stream or "chunked" in req.headers.get("transfer-encoding", "").lower():
        return True
    length = content_length(req.headers)
    if length is None:
        # HTTP/2 and HTTP/3 bodies need no length header; a body-carrying method may stream.
        return not req.http_version.startswith("HTTP/1") and req.method not in _BODYLESS_METHODS
    return length > threshold


def response_streams(resp: http.Response, threshold: int) -> bool:
    if resp.stream or resp.headers.get("content-type", "").lower().startswith("text/event-stream"):
        return True
    length = content_length(resp.headers)
    return length is None or length > threshold
