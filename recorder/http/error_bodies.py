"""Error bodies in the JSON shape the client's SDK reads.

The OpenAI SDKs read `{"error": {"message", "type", "code"}}`; the Anthropic SDKs read
`{"type": "error", "error": {"type", "message"}}`; an MCP client reads a JSON-RPC error
`{"jsonrpc": "2.0", "id": null, "error": {"code", "message"}}` (the request's id is not known
when the refusal is decided, from the headers). A refusal in the wrong shape shows a person
"unknown error" instead of what to do, so the gateway answers in the caller's own.
"""
from __future__ import annotations

import json
from typing import Mapping
from urllib.parse import parse_qs, urlsplit

# Anthropic's error types (https://docs.anthropic.com/en/api/errors) for the statuses we send.
_ANTHROPIC_TYPES = {401: "authentication_error", 403: "permission_error", 407: "authentication_error",
                    503: "overloaded_error"}


def looks_like_anthropic(host: str, path: str, headers: Mapping[str, str]) -> bool:
    """True for a request an Anthropic SDK sent: it always sends anthropic-version."""
    return ("anthropic-version" in headers or "anthropic" in host.lower()
            or path.split("?", 1)[0].rstrip("/").endswith("/v1/messages"))


MCP_ERROR_CODE = -32000  # JSON-RPC's "server error": implementation-defined, no MCP meaning of its own
_MCP_HEADERS = ("mcp-session-id", "mcp-protocol-version")
_MCP_PATH_ENDS = ("/mcp", "/sse")


def looks_like_mcp(path: str, headers: Mapping[str, str]) -> bool:
    """True for a request an MCP client sent: its session or protocol header, the Streamable
    HTTP POST's Accept (JSON and SSE both), an /mcp or /sse endpoint, or an HTTP+SSE message
    POST (a session_id in the query)."""
    if any(h in headers for h in _MCP_HEADERS):
        return True
    accept = str(headers.get("accept", "")).lower()
    if "application/json" in accept and "text/event-stream" in accept:
        return True
    parts = urlsplit(path)
    if parts.path.rstrip("/").endswith(_MCP_PATH_ENDS):
        return True
    query = parse_qs(parts.query)
    return "/messages" in parts.path and bool(query.get("session_id") or query.get("sessionId"))


def mcp_error_body(status: int, code: str, message: str) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": None, "error": {
        "code": MCP_ERROR_CODE, "message": message, "data": {"status": status, "reason": code}}}).encode()


def header_text(message: str, limit: int = 500) -> str:
    """A message as a quoted-string's content in a header: printable ASCII, no quote or backslash."""
    out = "".join(c if 32 <= ord(c) < 127 and c not in '"\\' else "'" if c == '"' else " " for c in message)
    return out[:limit]


def api_error_body(status: int, code: str, message: str, *, anthropic: bool) -> bytes:
    if anthropic:
        body = {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}
    else:
        body = {"error": {"message": message, "type": "wiretrail_error", "param": None, "code": code}}
    return json.dumps(body).encode()
