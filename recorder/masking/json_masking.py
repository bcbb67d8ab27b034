"""JSON-aware masking: find secrets in decoded string values, mask them in the raw bytes.

In raw JSON a PEM block's line breaks are `\\n` escapes and a secret can hide behind
`\\u` escapes; decoded, they are plain text again. Each string value is scanned decoded,
with its key as context (`"aws_secret_access_key": "` before it), so rules that need a name
before the secret still see one; keys are scanned too. A JSON document inside a string
(a tool result that is a file) is scanned as that string's text: the rules see through
its escaped quotes. What is found is replaced in the raw bytes, inside the string that
carries it, so everything else stays byte for byte; nothing found: the original bytes.
"""
from __future__ import annotations

import re

import orjson

from recorder.http.json_depth import DEPTH_ERROR, MAX_DEPTH, depth_exceeds
from recorder.masking.decoding import unescape

_LITERAL = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
_ASCII_ESCAPE = re.compile(rb"\\u00[0-7]", re.IGNORECASE)
_KEY, _VALUE = 1, 0

# Deeper JSON is masked as text (every string in it still goes through the rules, without its
# key as context), and the record says so: orjson writes at most 255 levels, and the
# re-encoding fallback below recurses once per level.
TOO_DEEP = f"JSON nested deeper than {MAX_DEPTH} levels: masked as text, not value by value"


def mask_json_bytes(masker, data: bytes, notes: set | None = None) -> bytes | None:
    """The masked JSON, or None when data is not JSON, or too deep to walk (the caller masks
    it as text; `notes` then gets TOO_DEEP)."""
    stripped = data.lstrip()
    if not stripped or stripped[:1] not in b'{["':
        return None
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as e:
        if notes is not None and DEPTH_ERROR.search(str(e)):
            notes.add(TOO_DEEP)
        return None
    keywords, signs = _keywords_present(masker, data)
    if keywords == () and not signs:  # no keyword, no sign of an encoded run: nothing to scan
        hits = None if depth_exceeds(value) else []
    else:
        try:
            hits = _scan(masker, value, keywords, signs)
        except _TooDeep:
            hits = None
    if hits is None:
        if notes is not None:
            notes.add(TOO_DEEP)
        return None
    if not hits:
        return data
    return _apply(masker, data, value, hits)


class _TooDeep(Exception):
    pass


def _keywords_present(masker, data: bytes) -> tuple[tuple[str, ...] | None, bool]:
    """The rule keywords that occur anywhere in the raw document, so that string values
    mentioning none of them are skipped without a call into the engine (a chat body has
    dozens of short strings), and whether the document shows a sign of an encoded run the
    engine would decode (masker.keywords_and_signs); without one, a string naming no keyword
    is skipped even when it looks encoded. None for the keywords when the raw bytes cannot
    tell: a \\u escape of an ASCII character could spell a keyword, and known secrets are
    looked for everywhere."""
    if _ASCII_ESCAPE.search(data) or masker.has_unconditional_rules:
        return None, True
    # Keywords and encoded forms hold no whitespace, quote or backslash; only an escaped quote
    # or slash differs between the raw and the decoded text.
    if b"\\" in data:
        data = data.replace(b'\\"', b'"').replace(b"\\/", b"/")
    if masker.known_secret_in(data):
        return None, True
    keywords, signs = masker.keywords_and_signs(data)
    return tuple(kw.decode("ascii") for kw in keywords), signs


def _strings(value, limit: int | None = None):
    """(kind, text, key) of every key and string value, in document order. Iterative.
    Raises _TooDeep at a container nested deeper than `limit` levels (as depth_exceeds)."""
    stack = [(_VALUE, value, "", 0)]
    while stack:
        kind, v, key, d = stack.pop()
        if isinstance(v, str):
            yield kind, v, key
        elif isinstance(v, dict):
            if limit is not None and d >= limit:
                raise _TooDeep
            items = []
            for k, x in v.items():
                items.append((_KEY, k, "", d + 1))
                items.append((_VALUE, x, k, d + 1))
            stack.extend(reversed(items))
        elif isinstance(v, list):
            if limit is not None and d >= limit:
                raise _TooDeep
            stack.extend(reversed([(_VALUE, x, key, d + 1) for x in v]))


def _scan(masker, value, keywords, signs: bool = True, limit: int | None = MAX_DEPTH) -> list:
    """(index of the string in document order, its bytes, spans) of each string with secrets.
    Raises _TooDeep for JSON nested deeper than `limit` levels (the walk recurses: at most
    `limit` levels; without a limit, _strings walks iteratively)."""
    hits = []

    def check(i: int, kind: int, text: str, key: str) -> None:
        if len(text) < (8 if kind == _KEY else 6):
            return
        context = f'"{key}": "' if key else ""
        raw = None
        if keywords is not None:
            low = (context + text).casefold()  # what the engine's case-insensitive match sees, or more
            if not any(kw in low for kw in keywords):
                if not signs:
                    return
                raw = text.encode("utf-8", "surrogatepass")
                if not masker.may_decode(raw):
                    return
        if raw is None:
            raw = text.encode("utf-8", "surrogatepass")
        spans = masker.spans(raw, context.encode("utf-8", "surrogatepass") if context else b"")
        if spans:
            hits.append((i, raw, spans))

    if limit is None:
        for i, (kind, text, key) in enumerate(_strings(value)):
            check(i, kind, text, key)
        return hits
    count = 0

    def visit(v, key: str, depth: int) -> None:
        nonlocal count
        if isinstance(v, str):
            check(count, _VALUE, v, key)
            count += 1
        elif isinstance(v, dict):
            if depth >= limit:
                raise _TooDeep
            for k, x in v.items():
                check(count, _KEY, k, "")
                count += 1
                visit(x, k, depth + 1)
        elif isinstance(v, list):
            if depth >= limit:
                raise _TooDeep
            for x in v:
                visit(x, key, depth + 1)

    visit(value, "", 0)
    return hits


def _apply(masker, data: bytes, value, hits) -> bytes:
    literals = _literals(data)
    edits = []
    count = sum(1 for _ in _strings(value))
    if count == len(literals):
        for i, text, spans in hits:
            s, e = literals[i]
            raw = data[s:e]
            if raw == text:
                for sp in spans:
                    edits.append((s + sp.start, s + sp.end, masker.tag(sp)))
                continue
            decoded, seg = unescape(raw)
            if decoded != text:
                edits = None
                break
            for sp in spans:
                a, b = seg.range(sp.start, sp.end)
                edits.append((s + a, s + b, masker.tag(sp)))
    else:
        edits = None
    if edits is None:
        return _reencoded(masker, value, hits)  # positions unknown (duplicate keys): re-encode
    out = []
    pos = 0
    for a, b, tag in sorted(edits):
        if a < pos:
            continue
        out.append(data[pos:a])
        out.append(tag)
        pos = b
    out.append(data[pos:])
    return b"".join(out)


def _literals(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of the text of every string literal in a valid JSON document, as
    _LITERAL.finditer finds them, by a search for quotes: a quote inside a literal is escaped
    when an odd number of backslashes stands before it; outside one, there is no backslash."""
    out = []
    start = -1
    i = data.find(b'"')
    while i >= 0:
        if start >= 0 and data[i - 1] == 0x5C:  # a backslash before it: count them
            j = i - 1
            while data[j] == 0x5C:
                j -= 1
            if (i - 1 - j) % 2:
                i = data.find(b'"', i + 1)
                continue
        if start < 0:
            start = i
        else:
            out.append((start + 1, i))
            start = -1
        i = data.find(b'"', i + 1)
    return out


def _reencoded(masker, value, hits) -> bytes:
    return orjson.dumps(_rebuild(masker, value, hits))


def _rebuild(masker, value, hits):
    """A copy of the parsed document with the strings of `hits` masked."""
    masked = {i: masker.apply(text, spans).decode("utf-8", "surrogatepass") for i, text, spans in hits}
    counter = iter(range(1 << 62))

    def walk(v):
        if isinstance(v, str):
            i = next(counter)
            return masked.get(i, v)
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                nk = walk(k)
                out[nk] = walk(x)
            return out
        if isinstance(v, list):
            return [walk(x) for x in v]
        return v

    return walk(value)


_UNCHANGED = object()


def _walk(masker, value, key: str = ""):
    """A masked copy of a parsed JSON value, or _UNCHANGED: for callers that re-encode the
    document themselves (recorder/protocols/ws_masking.py)."""
    hits = _scan(masker, value, None, limit=None)
    return _rebuild(masker, value, hits) if hits else _UNCHANGED
