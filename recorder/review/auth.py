"""Who may read sessions: an identity token checked exactly as the gateway checks it
(recorder.auth.identity.TokenVerifier with the config's [identity]), and a group in
identity.review_groups.

The browser holds the token in an HttpOnly, SameSite=Strict cookie. It gets there by a POST
of the login form (the token never appears in a URL), or by a one-time login link that
`wiretrail serve` prints for the development identity: the link names a random nonce, not
the token; the first visit sets the cookie and redirects, and the link is dead after that.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass

from recorder.auth.identity import IdentityError, TokenVerifier, VerifiedIdentity
from recorder.config import IdentityConfig

COOKIE = "wiretrail_review"
LOGIN_LINK_TTL = 3600.0  # seconds a printed one-time login link stays usable


class ReviewRefused(Exception):
    """No access: `status` 401 (no usable identity) or 403 (not a reviewer); `message` says why
    and what to do, without any part of the token."""

    def __init__(self, status: int, reason: str, message: str):
        self.status, self.reason, self.message = status, reason, message
        super().__init__(message)


@dataclass(frozen=True)
class Reviewer:
    identity: VerifiedIdentity

    @property
    def name(self) -> str:
        return self.identity.email or self.identity.sub


class ReviewAuth:
    def __init__(self, identity: IdentityConfig, verifier: TokenVerifier, clock=time.time):
        if not identity.review_groups:
            raise ValueError("identity.review_groups is empty: nobody may review")
        self.groups = tuple(identity.review_groups)
        self.verifier = verifier
        self.clock = clock
        self._links: dict[str, tuple[str, float]] = {}  # nonce -> (token, valid until)
        self._lock = threading.Lock()

    def cached(self, token: str) -> VerifiedIdentity | None:
        """The fast path (no I/O): a token verified before and not yet expired."""
        return self.verifier.cached(token)

    def check(self, token: str | None) -> Reviewer:
        """The reviewer a token proves, or ReviewRefused. May block on a JWKS fetch (call it off the loop)."""
        if not token:
            raise ReviewRefused(401, "missing", "log in: this page shows recorded sessions to reviewers only")
        try:
            identity = self.verifier.verify(token)
        except IdentityError as e:
            raise ReviewRefused(401, e.reason, f"the identity token was not accepted: {e.message}") from None
        if not set(identity.groups) & set(self.groups):
            raise ReviewRefused(403, "forbidden", f"{identity.sub} is not a reviewer: reading sessions needs a token "
                                            f"with one of the groups in identity.review_groups "
                                            f"({', '.join(self.groups)})")
        return Reviewer(identity)

    # -- one-time login links ---------------------------------------------------------------------

    def login_link(self, token: str, ttl: float = LOGIN_LINK_TTL) -> str:
        """A nonce for /login/once/NONCE that logs in with `token`, once, within `ttl` seconds."""
        nonce = secrets.token_urlsafe(32)
        with self._lock:
            self._links[nonce] = (token, self.clock() + ttl)
        return nonce

    def redeem(self, nonce: str) -> str | None:
        """The token of a login link, which is spent now; None if unknown, used or expired."""
        with self._lock:
            now = self.clock()
            for n in [n for n, (_, until) in self._links.items() if until <= now]:
                del self._links[n]
            hit = self._links.pop(nonce, None)
        return hit[0] if hit else None
