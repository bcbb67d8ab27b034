"""Headers as they are recorded: credential values never reach an artifact.

- A credential header the gateway injected is recorded as a marker naming the
  connection, `[credential:<name>]` (DESIGN.md), never its value.
- Any other credential header (the client's own, before it is stripped; cookies) is
  replaced whole by `[MASKED:<header>:<8 hex>]`: a keyed hash, so the same credential
  gets the same tag without being revealed.
- Every other value goes through the masking engine when a Masker is given (a token in
  a custom header, a password in a Referer URL), and so does every name (a header called
  `x-ghp_…` carries its secret in the name).
"""
from __future__ import annotations

from recorder.auth.credentials import MASKED_HEADERS
from recorder.masking.engine import mask_tag as _mask_tag_bytes


def mask_tag(rule_id: str, secret: str, key: bytes) -> str:
    return _mask_tag_bytes(rule_id, secret.encode("utf-8", "surrogateescape"), key)


def credential_marker(connection: str) -> str:
    return f"[credential:{connection}]"


def recordable_headers(items, key: bytes, injected: dict[str, str] | None = None, masker=None) -> list[list[str]]:
    """Headers as [[name, value], ...] with credentials masked. Order and case kept.

    `injected` maps a lowercase header name the gateway injected to its connection's name.
    `masker` (a recorder.masking.Masker) masks secrets in the other values."""
    out = []
    for name, value in items:
        low = name.lower()
        if injected and low in injected:
            value = credential_marker(injected[low])
        elif low in MASKED_HEADERS:
            value = mask_tag(low, value, key)
        elif masker is not None and value:
            value = masker.mask_text(value)
        if masker is not None:
            name = masker.mask_text(name)
        out.append([name, value])
    return out
