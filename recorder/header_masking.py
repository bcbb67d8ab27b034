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


def recordable_headers(items, key: bytes, injected: dict[str, str] | None = None) -> list[list[str]]:
    """Headers as [[name, value], ...] with credential values masked. Order and case kept.

    `injected` maps a header the gateway injected to its connection name: it is recorded
    as the marker `[credential:<name>]`, never as a value.
    """
    out = []
    for name, value in items:
        lower = name.lower()
        if injected and lower in injected:
            value = f"[credential:{injected[lower]}]"
        elif lower in CREDENTIAL_HEADERS:
            value = mask_tag(lower, value, key)
        out.append([name, value])
    return out
