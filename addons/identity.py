"""Identity seam. Until JWT identity lands, every flow is recorded as anonymous and
marked unauthenticated, so nobody mistakes these sessions for verified ones."""
from __future__ import annotations

from mitmproxy import http

METADATA_KEY = "wiretrail.identity"

ANONYMOUS = {
    "sub": "anonymous",
    "email": None,
    "groups": [],
    "iss": None,
    "method": "none",
    "authenticated": False,
}


class Identity:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        flow.metadata[METADATA_KEY] = ("anonymous", ANONYMOUS)


def identity_of(flow: http.HTTPFlow) -> tuple[str, dict]:
    """The (session key, identity record) that the identity addon decided for this flow."""
    return flow.metadata.get(METADATA_KEY) or ("anonymous", ANONYMOUS)
