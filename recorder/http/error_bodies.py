"""Error bodies in the JSON shape the client's SDK reads.

The OpenAI SDKs read `{"error": {"message", "type", "code"}}`; the Anthropic SDKs read
`{"type": "error", "error": {"type", "message"}}`. A refusal in the wrong shape shows a
person "unknown error" instead of what to do, so the gateway answers in the caller's own.
"""
from __future__ import annotations

import json
from typing import Mapping

# Anthropic's error types (https://docs.anthropic.com/en/api/errors) for the statuses we send.
_ANTHROPIC_TYPES = {401: "authentication_error", 403: "permission_error", 407: "authentication_error",
                    503: "overloaded_error"}


def looks_like_anthropic(host: str, path: str, headers: Mapping[str, str]) -> bool:
    """True for a request an Anthropic SDK sent: it always sends anthropic-version."""
    return ("anthropic-version" in headers or "anthropic" in host.lower()
            or path.split("?", 1)[0].rstrip("/").endswith("/v1/messages"))


def api_error_body(status: int, code: str, message: str, *, anthropic: bool) -> bytes:
    if anthropic:
        body = {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    else:
        body = {"error": {"message": message, "type": "wiretrail_error", "param": None, "code": code}}
    return json.dumps(body).encode()
