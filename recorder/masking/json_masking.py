"""JSON-aware masking: mask decoded string values, not raw JSON bytes.

In raw JSON a PEM block's line breaks are `\\n` escapes and a secret can hide behind
`\\u` escapes; decoded, they are plain text again. Each string value is masked with its
key as context (`"aws_secret_access_key": "` before it), so rules that need a name
before the secret still see one. Keys are masked too. Nothing changed: the original
bytes are returned, byte for byte; something masked: re-encoded with orjson.
"""
from __future__ import annotations

import orjson

_UNCHANGED = object()


def mask_json_bytes(masker, data: bytes) -> bytes | None:
    """The masked JSON, or None when data is not JSON (the caller masks it as text)."""
    stripped = data.lstrip()
    if not stripped or stripped[:1] not in b'{["':
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    masked = _walk(masker, value, "")
    if masked is _UNCHANGED:
        return data
    return orjson.dumps(masked)


def _walk(masker, value, key: str):
    if isinstance(value, str):
        if len(value) < 6:  # shorter than any secret a rule finds
            return _UNCHANGED
        out = masker.mask_text(value, f'"{key}": "' if key else "")
        return _UNCHANGED if out is value or out == value else out
    if isinstance(value, dict):
        changed = None
        for k, v in value.items():
            new_v = _walk(masker, v, k)
            new_k = masker.mask_text(k) if len(k) >= 8 else k
            if new_v is not _UNCHANGED or new_k != k:
                if changed is None:
                    changed = {}
                changed[k] = (new_k, v if new_v is _UNCHANGED else new_v)
        if changed is None:
            return _UNCHANGED
        return {changed[k][0] if k in changed else k: changed[k][1] if k in changed else v for k, v in value.items()}
    if isinstance(value, list):
        out = None
        for i, v in enumerate(value):
            new_v = _walk(masker, v, key)
            if new_v is not _UNCHANGED:
                if out is None:
                    out = list(value)
                out[i] = new_v
        return _UNCHANGED if out is None else out
    return _UNCHANGED
