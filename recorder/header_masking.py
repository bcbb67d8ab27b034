"""Credential headers never reach an artifact as values.

Until the masking engine lands, the values of known credential headers are replaced
by `[MASKED:<header>:<8 hex>]`, the DESIGN.md marker: a keyed hash, so the same
credential gets the same tag without being revealed.
"""
from __future__ import annotations

import hashlib
import hmac

CREDENTIAL_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "cookie",
        "set-cookie",
    }
)


def mask_tag(rule_id: str, secret: str, key: bytes) -> str:
    digest = hmac.new(key, secret.encode("utf-8", "surrogateescape"), hashlib.sha256).hexdigest()
    return f"[MASKED:{rule_id}:{digest[:8]}]"


def recordable_headers(items, key: bytes) -> list[list[str]]:
    """Headers as [[name, value], ...] with credential values masked. Order and case kept."""
    out = []
    for name, value in items:
        if name.lower() in CREDENTIAL_HEADERS:
            value = mask_tag(name.lower(), value, key)
        out.append([name, value])
    return out
