"""Refusing a flow: the answer the client gets, and the note capture records.

Every addon that refuses (identity, policy, credentials, capture) goes through `refuse`,
so a refusal always has the SDK's error shape (a JSON-RPC error for an MCP client), the right
authenticate header, and a refusal note (addons/flow_state.py) from which capture records who tried. Setting
`flow.response` in `requestheaders` (or `http_connect`) means nothing goes upstream.
"""
from __future__ import annotations

from mitmproxy import http

from addons.flow_state import REFUSAL, refusal_of, set_refusal  # noqa: F401 (REFUSAL, refusal_of: parts import them from here)
from recorder.http.error_bodies import api_error_body, header_text, looks_like_anthropic, looks_like_mcp, mcp_error_body


def error_response(flow: http.HTTPFlow, status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> http.Response:
    req = flow.request
    hdrs = {"content-type": "application/json"}
    hdrs.update(headers or {})
    if looks_like_mcp(req.path or "", req.headers):
        if status == 401:  # RFC 6750, which MCP's authorization builds on: the reason in the header too
            hdrs["www-authenticate"] = (f'Bearer realm="wiretrail", error="invalid_token", '
                                        f'error_description="{header_text(message)}"')
        return http.Response.make(status, mcp_error_body(status, code, message), hdrs)
    anthropic = looks_like_anthropic(req.host or "", req.path or "", req.headers)
    return http.Response.make(status, api_error_body(status, code, message, anthropic=anthropic), hdrs)


def refuse(flow: http.HTTPFlow, status: int, reason: str, message: str, *, close: bool = False) -> None:
    """Answer `status` with `message` (for a person; never a token) and note the refusal."""
    headers: dict[str, str] = {}
    if status == 407:
        headers["proxy-authenticate"] = 'Basic realm="wiretrail", charset="UTF-8"'
    elif status == 401:
        headers["www-authenticate"] = 'Bearer realm="wiretrail"'
    elif status == 503:
        headers["retry-after"] = "5"
    if close and not (flow.request.is_http2 or flow.request.is_http3):
        headers["connection"] = "close"  # a pooled connection would keep failing (h2 has no such header)
    flow.response = error_response(flow, status, reason, f"wiretrail: {message}", headers)
    set_refusal(flow, status, reason, message)

