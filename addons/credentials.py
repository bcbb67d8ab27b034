"""Credential seam: what the client sent as proxy credentials never goes upstream.

mitmproxy strips Proxy-Authorization from CONNECT, but not from plain-HTTP proxied
requests, so it is removed here. The full credential swap arrives with identity.
"""
from __future__ import annotations

from mitmproxy import http


class Credentials:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        flow.request.headers.pop("proxy-authorization", None)
