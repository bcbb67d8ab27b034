"""Encoded runs: base64, hex, percent-encoding and backslash escapes, decoded and scanned.

A secret can reach a body encoded: a base64 config file in a tool result, a hex dump, a
percent-encoded redirect URL, a `\\u`-escaped JSON fragment. `encoded_spans` finds runs
that look encoded, decodes each one, and scans the decoded text with the same rules
(recursively: base64 inside a JSON escape inside a URL…). A secret found inside is
reported as a span of the *encoded* text: the characters that carry it (for base64 the
whole 4-character groups, so what is left on either side still decodes). Its tag is the
HMAC of the decoded secret, so it matches the tag of the same secret seen raw.

Limits (docs/masking.md): at most MAX_DEPTH nested encodings; runs of MIN_RUN..MAX_RUN
characters; a run is scanned only when it decodes to text (binary such as images or
hashes is skipped); the decoded bytes scanned per call are bounded by the size of the
input plus BUDGET_FLOOR, so a crafted body cannot make masking cost more than twice a
plain scan.
"""
from __future__ import annotations

import binascii
import bisect
import re

try:
    import re2 as _re2
except ImportError:  # pragma: no cover
    _re2 = None

MAX_DEPTH = 3  # nested encodings looked through (base64 of a percent-encoded URL = 2)
MIN_RUN = 16  # shorter runs cannot carry a secret worth the decode
MAX_RUN = 1 << 20  # longer runs (a base64 file) are not decoded
BUDGET_FLOOR = 64 * 1024  # decoded bytes always allowed per call, on top of the input's size
CONTEXT = 64  # raw bytes before a run given to the rules as left context (a name before a value)
TEXT_RATIO = 0.9  # share of printable bytes that makes a decoded run text


def _compile(pattern: bytes):
    if _re2 is not None:
        opts = _re2.Options()
        opts.encoding = _re2.Options.Encoding.LATIN1
        opts.log_errors = False
        return _re2.compile(pattern, opts)
    return re.compile(pattern)  # pragma: no cover


# Runs of the base64 alphabet (hex is a subset) of MIN_RUN or more characters; only those with
# a digit in them are decoded: encoded text nearly always has one, identifiers and words rarely
# do. (One pattern that also demanded the digit made RE2 leave its DFA: 4 us a byte.)
_B64_RUN = _compile(rb"[A-Za-z0-9+/_\-]{%d,}={0,2}" % MIN_RUN)
_HEXCHARS_B = b"0123456789abcdefABCDEF"
_PCT_FIND = _compile(rb"%[0-9A-Fa-f]{2}")
_PCT_STOP = frozenset(b" \t\r\n\"'<>&=?")
_ESC_SOURCE = rb"\\(?:u[0-9A-Fa-f]{4}|x[0-9A-Fa-f]{2}|/)"
_ESC = _compile(_ESC_SOURCE)
# The engine's prefilter says whether these occur: a %XX, an escape, and hex that encodes text
# (pairs 2x..7x: an encoding of an encoding shows no keyword in any form; a hash is not this).
HINTS = (rb"%[0-9A-Fa-f]{2}", _ESC_SOURCE, rb"(?:[2-7][0-9a-fA-F]){24}")
_RUN_STOP = frozenset(b" \t\r\n\"'")
_PCT = re.compile(rb"%[0-9A-Fa-f]{2}")
_DIGITS = b"0123456789"
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t\n\r"


def is_text(data: bytes) -> bool:
    """Decoded bytes that read as text (mostly printable ASCII, or UTF-8 without controls)."""
    n = len(data)
    if n < 4:
        return False
    bad = len(data.translate(None, _PRINTABLE))
    if bad <= n * (1 - TEXT_RATIO):
        return True
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    controls = sum(1 for c in text if c < " " and c not in "\t\n\r")
    return controls <= n * (1 - TEXT_RATIO)


# -- position maps: a range of decoded bytes -> the range of encoded bytes that carries it --------

class SegMap:
    """Decoded offsets to encoded offsets, piecewise. Segment i covers decoded
    [dec[i], dec[i+1]) and encoded [raw[i], raw[i+1]); an exact segment maps byte for byte,
    any other one (an escape, a %XX) only as a whole."""

    __slots__ = ("dec", "raw", "exact")

    def __init__(self, dec: list[int], raw: list[int], exact: list[bool]):
        self.dec, self.raw, self.exact = dec, raw, exact  # dec/raw have one more entry (the ends)

    def range(self, a: int, b: int) -> tuple[int, int]:
        dec, raw, exact = self.dec, self.raw, self.exact
        i = max(0, bisect.bisect_right(dec, a) - 1)
        i = min(i, len(exact) - 1)
        start = raw[i] + (a - dec[i]) if exact[i] else raw[i]
        j = max(0, bisect.bisect_left(dec, b) - 1)
        j = min(j, len(exact) - 1)
        end = raw[j] + (b - dec[j]) if exact[j] else raw[j + 1]
        return start, max(start, end)


class _Linear:
    """Hex: decoded byte i is encoded by characters 2i, 2i+1."""

    __slots__ = ()

    @staticmethod
    def range(a: int, b: int) -> tuple[int, int]:
        return 2 * a, 2 * b


class _Base64:
    """Decoded bytes [3k, 3k+3) are encoded by characters [4k, 4k+4): a secret takes its groups whole."""

    __slots__ = ("length",)

    def __init__(self, length: int):
        self.length = length  # characters in the run, padding included

    def range(self, a: int, b: int) -> tuple[int, int]:
        return 4 * (a // 3), min(self.length, 4 * (-(-b // 3)))


# -- decoders -----------------------------------------------------------------------------------

_ESCAPES = {ord("n"): b"\n", ord("r"): b"\r", ord("t"): b"\t", ord("b"): b"\b", ord("f"): b"\f",
            ord("/"): b"/", ord("\\"): b"\\", ord('"'): b'"', ord("'"): b"'", ord("0"): b"\0"}
_HEXCHARS = frozenset(b"0123456789abcdefABCDEF")


def unescape(raw: bytes) -> tuple[bytes, SegMap]:
    """Backslash escapes undone (JSON's, plus \\xXX and \\'), with the position map.
    An unknown escape is kept as it is."""
    out = bytearray()
    dec, rawpos, exact = [], [], []
    i, n = 0, len(raw)
    lit = 0  # start of the current literal stretch

    def literal(upto):
        if upto > lit:
            dec.append(len(out))
            rawpos.append(lit)
            exact.append(True)
            out.extend(raw[lit:upto])

    while True:
        j = raw.find(b"\\", i)
        if j < 0 or j + 1 >= n:
            break
        c = raw[j + 1]
        piece = None
        width = 2
        if c in _ESCAPES:
            piece = _ESCAPES[c]
        elif c == ord("u") and j + 6 <= n and all(x in _HEXCHARS for x in raw[j + 2:j + 6]):
            cp = int(raw[j + 2:j + 6], 16)
            width = 6
            if 0xD800 <= cp < 0xDC00 and raw[j + 6:j + 8] == b"\\u" and j + 12 <= n \
                    and all(x in _HEXCHARS for x in raw[j + 8:j + 12]):
                low = int(raw[j + 8:j + 12], 16)
                if 0xDC00 <= low < 0xE000:
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00)
                    width = 12
            piece = chr(cp).encode("utf-8", "surrogatepass")
        elif c == ord("x") and j + 4 <= n and all(x in _HEXCHARS for x in raw[j + 2:j + 4]):
            piece = bytes([int(raw[j + 2:j + 4], 16)])
            width = 4
        if piece is None:
            i = j + 2
            continue
        literal(j)
        dec.append(len(out))
        rawpos.append(j)
        exact.append(False)
        out.extend(piece)
        i = lit = j + width
    literal(n)
    dec.append(len(out))
    rawpos.append(n)
    if not exact:  # empty input
        dec, rawpos, exact = [0, 0], [0, 0], [True]
    return bytes(out), SegMap(dec, rawpos, exact)


def _unpercent(raw: bytes) -> tuple[bytes, SegMap]:
    out = bytearray()
    dec, rawpos, exact = [], [], []
    pos = 0
    for m in _PCT.finditer(raw):
        if m.start() > pos:
            dec.append(len(out))
            rawpos.append(pos)
            exact.append(True)
            out.extend(raw[pos:m.start()])
        dec.append(len(out))
        rawpos.append(m.start())
        exact.append(False)
        out.append(int(raw[m.start() + 1:m.end()], 16))
        pos = m.end()
    if pos < len(raw):
        dec.append(len(out))
        rawpos.append(pos)
        exact.append(True)
        out.extend(raw[pos:])
    dec.append(len(out))
    rawpos.append(len(raw))
    return bytes(out), SegMap(dec, rawpos, exact)


def _b64(run: bytes):
    body = run.rstrip(b"=")
    if len(body) % 4 == 1:
        return None
    if len(body.translate(None, _DIGITS)) == len(body) or body.isupper() or body.islower():
        return None  # encoded text mixes cases and digits; an identifier or a word does not
    urlsafe = b"-" in body or b"_" in body
    if urlsafe:
        if b"+" in body or b"/" in body:
            return None
        body = body.replace(b"-", b"+").replace(b"_", b"/")
    try:
        data = binascii.a2b_base64(body + b"=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return None
    return data, _Base64(len(run))


def _hex(run: bytes):
    if len(run) % 2:
        run = run[:-1]
    if len(run.translate(None, _DIGITS)) == len(run):
        return None  # letters only: a word, not hex
    try:
        return bytes.fromhex(run.decode("ascii")), _Linear()
    except ValueError:
        return None


_SYMBOLS = b"=:\"'_-. /"
_NEIGHBOURS = b"=:\"'_-. /abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def _b64_form(text: bytes, k: int) -> bytes:
    """The base64 characters that only `text` decides when it starts k bytes into a 3-byte group."""
    enc = binascii.b2a_base64(b"\0" * k + text + b"\0\0", newline=False)
    return enc[-(-8 * k // 6):(8 * (k + len(text))) // 6]


def keyword_forms(keyword: bytes) -> set[bytes]:
    """How a keyword reads base64- or hex-encoded: each case variant (lower, upper, title, and
    the last letter upper, as in eyJ), at each of the three base64 alignments, standard and
    URL-safe, and as hex. A form under 4 characters says too little (base64 of "key" at one
    alignment is "tle"): the keyword with a neighbour (`key=`, `_key`…) stands in for it."""
    text = keyword.decode("latin-1").lower()
    variants = {text, text.upper(), text[:1].upper() + text[1:], text[:-1] + text[-1:].upper()}  # eyJ
    forms: set[bytes] = set()
    for v in variants:
        b = v.encode("latin-1")
        forms.add(b.hex().encode())
        for k in (0, 1, 2):
            left = _NEIGHBOURS if not b[:1].isalnum() else _SYMBOLS  # `postgres://`, but `api_key`, `x-api-key`
            candidates = [b] if len(_b64_form(b, k)) >= 4 else \
                [b + bytes([c]) for c in _NEIGHBOURS] + [bytes([c]) + b for c in left]
            for ext in candidates:
                f = _b64_form(ext, k)
                if len(f) >= 4:
                    forms.add(f)
                    forms.add(f.replace(b"+", b"-").replace(b"/", b"_"))
    return forms


def runs(data: bytes, base64_too: bool = True, percent: bool = True, escapes: bool = True):
    """(start, end, decoded, map) of every encoded-looking run that decodes to text. Each kind
    only when the caller's prefilter saw a sign of it (a keyword's encoded form, a %XX, an escape)."""
    if len(data) < MIN_RUN:
        return
    for m in (_B64_RUN.finditer(data) if base64_too else ()):
        s, e = m.start(), m.end()
        if e - s > MAX_RUN:
            continue
        run = data[s:e]
        if len(run.translate(None, _DIGITS)) == len(run):
            continue  # no digit: a word or an identifier
        if run[:2] in (b"0x", b"0X"):
            s, run = s + 2, run[2:]
        if not run.translate(None, _HEXCHARS_B):  # hex digits only: hex, or base64 that happens to be
            got = _hex(run)
            if got is not None and is_text(got[0]):
                yield s, s + len(run), got[0], got[1]
                continue
        got = _b64(run)
        if got is not None and is_text(got[0]):
            yield s, s + len(run), got[0], got[1]
    if percent and b"%" in data:
        end = 0
        for m in _PCT_FIND.finditer(data):
            if m.start() < end:
                continue  # inside the run of an earlier %XX
            s, e = _run_around(data, m.start(), _PCT_STOP)
            end = e
            if e - s > MAX_RUN or e - s < 6:
                continue
            decoded, seg = _unpercent(data[s:e])
            yield s, e, decoded, seg
    if escapes and b"\\" in data:
        end = 0
        for m in _ESC.finditer(data):
            if m.start() < end:
                continue  # inside the run of an earlier escape
            s, e = _escape_run(data, m.start())
            end = e
            if e - s > MAX_RUN:
                continue
            decoded, seg = unescape(data[s:e])
            if decoded != data[s:e]:
                yield s, e, decoded, seg


def _run_around(data: bytes, at: int, stop) -> tuple[int, int]:
    """The run of characters not in `stop` around position `at` (at most MAX_RUN each way)."""
    s = at
    while s > 0 and data[s - 1] not in stop and at - s < MAX_RUN:
        s -= 1
    e, n = at, len(data)
    while e < n and data[e] not in stop and e - at < MAX_RUN:
        e += 1
    return s, e


def _escape_run(data: bytes, at: int) -> tuple[int, int]:
    """The run of non-space, non-quote characters around an escape at `at` (an escaped quote
    is part of it)."""
    s = at
    while s > 0 and data[s - 1] not in _RUN_STOP and at - s < MAX_RUN:
        s -= 1
    e, n = at, len(data)
    while e < n and e - at < MAX_RUN:
        c = data[e]
        if c == 0x5C:  # a backslash takes the next character with it
            e += 2
            continue
        if c in _RUN_STOP:
            break
        e += 1
    return s, min(e, n)


def encoded_spans(find, data: bytes, covered, depth: int, budget: list[int], base64_too: bool = True,
                  percent: bool = True, escapes: bool = True, worth=None) -> list:
    """Spans of secrets inside encoded runs of data, in data's coordinates.

    `find(text, depth)` finds spans in a decoded text (itself recursively); `covered(s, e)`
    says a run is already inside a secret found directly; `budget` is a one-item list of
    the decoded bytes still allowed."""
    from recorder.masking.engine import Span

    out = []
    if depth >= MAX_DEPTH:
        return out
    for s, e, decoded, mapping in runs(data, base64_too, percent, escapes):
        if covered(s, e):
            continue
        budget[0] -= len(decoded)
        if budget[0] < 0:
            break
        ctx = data[max(0, s - CONTEXT):s]
        if worth is not None and not worth(ctx + decoded):
            continue  # no keyword, encoded keyword or known secret in it: nothing to find
        for sp in find(ctx + decoded, depth + 1):
            if sp.end <= len(ctx):
                continue
            a, b = mapping.range(max(0, sp.start - len(ctx)), sp.end - len(ctx))
            if b > a:
                out.append(Span(s + a, s + b, sp.rule, sp.secret))
    return out


def tail_run_start(data: bytes, floor: int, has_partial) -> int:
    """Streams: where an encoded run that touches the end of data starts, when what it
    decodes to so far could hold (the start of) a secret; len(data) otherwise.
    `has_partial(decoded)` says whether rules match or partially match the decoded text."""
    n = len(data)
    i = n
    lo = max(floor, n - 4096)
    while i > lo and (data[i - 1:i].isalnum() or data[i - 1] in b"+/_-=%\\"):
        i -= 1
    if n - i < MIN_RUN:
        return n
    run = data[i:n]
    candidates = []
    if b"%" in run:
        candidates.append(_unpercent(run)[0])
    if b"\\" in run:
        candidates.append(unescape(run)[0])
    got = _b64(run[: len(run.rstrip(b"=")) // 4 * 4])
    if got is not None:
        candidates.append(got[0])
    got = _hex(run)
    if got is not None:
        candidates.append(got[0])
    for decoded in candidates:
        if is_text(decoded) and has_partial(decoded):
            return i
    return n
