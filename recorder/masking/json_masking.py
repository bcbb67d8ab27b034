"""JSON-aware masking: mask decoded string values, not raw JSON bytes.

In raw JSON a PEM block's line breaks are `\\n` escapes and a secret can hide behind
`\\u` escapes; decoded, they are plain text again. Each string value is masked with its
key as context (`"aws_secret_access_key": "` before it), so rules that need a name
before the secret still see one. Keys are masked too. Nothing changed: the original
bytes are returned, byte for byte; something masked: re-encoded with orjson.
"""
from __future__ import annotations

import re

import orjson

from recorder.json_depth import DEPTH_ERROR as _DEPTH_ERROR, MAX_DEPTH

_UNCHANGED = object()

# Deeper JSON is masked as text (every string in it still goes through the rules, without its
# key as context): the walk below recurses once per level, and orjson writes at most 255.
TOO_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels: masked as text, not value by value"


class TooDeep(ValueError):
    pass


def mask_json_bytes(masker, data: bytes, notes: set | None = None) -> bytes | None:
    """The masked JSON, or None when data is not JSON, or too deep to walk (the caller masks
    it as text; `notes` then gets TOO_DEEP)."""
    stripped = data.lstrip()
    if not stripped or stripped[:1] not in b'{["':
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if notes is not None and _DEPTH_ERROR.search(str(e)):
            notes.add(TOO_DEEP)
        return None
    keywords = _keywords_present(masker, data)
    if keywords == ():
        return data  # no rule's keyword and no known secret anywhere in the document
    try:
        masked = _walk(masker, value, "", keywords)
    except TooDeep:
        if notes is not None:
            notes.add(TOO_DEEP)
        return None
    if masked is _UNCHANGED:
        return data
    return orjson.dumps(masked)


_ASCII_ESCAPE = re.compile(rb"\\u00[0-7]", re.IGNORECASE)


def _keywords_present(masker, data: bytes) -> tuple[str, ...] | None:
    """The rule keywords that occur anywhere in the raw document, so that string values
    mentioning none of them are skipped without a call into the engine (a chat body has
    dozens of short strings). None when the raw bytes cannot tell: a \\u escape of an
    ASCII character could spell a keyword, and known secrets are looked for everywhere."""
    if _ASCII_ESCAPE.search(data) or masker.has_unconditional_rules:
        return None
    # Keywords hold no whitespace or control characters; only an escaped quote or slash
    # differs between the raw and the decoded text.
    if b"\\" in data:
        data = data.replace(b'\\"', b'"').replace(b"\\/", b"/")
    if masker.known_secret_in(data):
        return None
    return tuple(kw.decode("ascii") for kw in masker.keywords_in(data))


def _mentions(keywords, text: str) -> bool:
    low = text.casefold()  # what the engine's case-insensitive keyword match sees, or more
    return any(kw in low for kw in keywords)


def _walk(masker, value, key: str, keywords=None, depth: int = 0):
    """The value with secrets masked, or _UNCHANGED. Raises TooDeep past MAX_DEPTH levels."""
    if depth > MAX_DEPTH:
        raise TooDeep(TOO_DEEP)
    if isinstance(value, str):
        if len(value) < 6:  # shorter than any secret a rule finds
            return _UNCHANGED
        context = f'"{key}": "' if key else ""
        if keywords is not None and not _mentions(keywords, context + value):
            return _UNCHANGED
        out = masker.mask_text(value, context)
        return _UNCHANGED if out is value or out == value else out
    if isinstance(value, dict):
        changed = None
        for k, v in value.items():
            new_v = _walk(masker, v, k, keywords, depth + 1)
            new_k = masker.mask_text(k) if len(k) >= 8 and (keywords is None or _mentions(keywords, k)) else k
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
            new_v = _walk(masker, v, key, keywords, depth + 1)
            if new_v is not _UNCHANGED:
                if out is None:
                    out = list(value)
                out[i] = new_v
        return _UNCHANGED if out is None else out
    return _UNCHANGED
