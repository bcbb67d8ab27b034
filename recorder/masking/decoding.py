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
hashes is skipped: a long run is decoded a block at a time and given up as soon as it can
no longer be text, the same answer as `is_text` on the whole); the decoded bytes scanned
per call are bounded by the size of the input plus BUDGET_FLOOR (a `Budget`), so a crafted
body cannot make masking cost more than about twice a plain scan.

Speed: runs are found on a translated copy of the text (one byte per class, then
`bytes.find`), not by a regex per run; where the caller knows where encoded keywords sit
(`gate`), only the base64/hex runs that hold one are looked at; percent-encoding and
JSON-style escapes are decoded in C (`binascii.a2b_qp`, `json`), and the map from decoded
to encoded offsets is built only for a run in which a secret is found.
"""
from __future__ import annotations

import binascii
import bisect
import codecs
import json
import re

try:
    import re2 as _re2
except ImportError:  # pragma: no cover
    _re2 = None

MAX_DEPTH = 3  # nested encodings looked through (base64 of a percent-encoded URL = 2)
MIN_RUN = 16  # shorter runs cannot carry a secret worth the decode
MAX_RUN = 1 << 20  # longer runs (a base64 file) are not decoded
CONTEXT = 64  # raw bytes before a run given to the rules as left context (a name before a value)
TEXT_RATIO = 0.9  # share of printable bytes that makes a decoded run text
BLOCK = 64 * 1024  # encoded characters decoded at a time in a long run (a multiple of 4)
BUDGET_FLOOR = 64 * 1024  # decoded bytes always allowed per call, on top of the input's size


class Budget:
    """The decoded bytes one call may still scan (text, before it is scanned again)."""

    __slots__ = ("left",)

    def __init__(self, size: int):
        self.left = size + BUDGET_FLOOR

    def take(self, nbytes: int) -> bool:
        """Spend nbytes; False once the budget is spent (nothing more is decoded)."""
        self.left -= nbytes
        return self.left >= 0


def _compile(pattern: bytes):
    if _re2 is not None:
        opts = _re2.Options()
        opts.encoding = _re2.Options.Encoding.LATIN1
        opts.log_errors = False
        return _re2.compile(pattern, opts)
    return re.compile(pattern)  # pragma: no cover


_ALPHABET = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-"
# Runs of the base64 alphabet (hex is a subset) of MIN_RUN or more characters; only those with
# a digit in them are decoded: encoded text nearly always has one, identifiers and words rarely
# do. Found on the text translated to one byte per class: bytes.find is far faster than a regex
# that must report where each run starts and ends.
_CLASS = bytes(1 if c in _ALPHABET else 0 for c in range(256))
_RUN_NEEDLE = b"\x01" * MIN_RUN
_DIGIT = re.compile(rb"[0-9]")
_NONHEX = re.compile(rb"[^0-9A-Fa-f]")
_HEXDIGITS = b"0123456789abcdefABCDEF"
# A percent run: the characters around a %XX up to a space, quote or URL delimiter.
_PCT_RUN = _compile(rb"[^ \t\r\n\"'<>&=?]*%[0-9A-Fa-f]{2}[^ \t\r\n\"'<>&=?]*")
_PCT_AT = re.compile(rb"%[0-9A-Fa-f]{2}")  # Python re: its literal first byte is found fast
_PCT_LEFT = re.compile(rb"(?s).*[ \t\r\n\"'<>&=?]")  # up to the last stop before a point
_LONE_PCT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
_ESC_SOURCE = rb"\\(?:u[0-9A-Fa-f]{4}|x[0-9A-Fa-f]{2}|/)"
# An escape run: the non-space, non-quote characters around an escape; after the first
# escape, a backslash takes the next character with it (an escaped quote is part of the run).
_ESC_RUN = _compile(rb"[^ \t\r\n\"']*" + _ESC_SOURCE + rb"(?:[^ \t\r\n\"'\\]|\\[\s\S])*\\?")
_ESC_AT = re.compile(_ESC_SOURCE)
_ESC_LEFT = re.compile(rb"(?s).*[ \t\r\n\"']")
# The engine's prefilter says whether these occur: a %XX, an escape, and hex that encodes text
# (pairs 2x..7x: an encoding of an encoding shows no keyword in any form; a hash is not this).
HINTS = (rb"%[0-9A-Fa-f]{2}", _ESC_SOURCE, rb"(?:[2-7][0-9a-fA-F]){24}")
_PCT = re.compile(rb"%[0-9A-Fa-f]{2}")
_PRINTABLE = bytes(range(0x20, 0x7F)) + b"\t\n\r"
_NOT_CONTROL = bytes(range(0x20, 0x100)) + b"\t\n\r"


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


def _text_in_blocks(body: bytes, n: int, decode) -> bytes | None:
    """decode(body) when it reads as text (is_text), else None, decoded BLOCK characters at a
    time: given up as soon as no later block can make it text (binary is given up early).
    `n` is the decoded length (n >= 4); a valid UTF-8 text's control characters are its bytes
    below 0x20."""
    if len(body) <= BLOCK:
        data = decode(body)
        return data if is_text(data) else None
    limit = n * (1 - TEXT_RATIO)
    utf8 = codecs.getincrementaldecoder("utf-8")()
    bad = controls = counted = 0
    unicode_ok = True
    parts = []
    for i in range(0, len(body), BLOCK):
        piece = decode(body[i:i + BLOCK])
        parts.append(piece)
        bad += len(piece.translate(None, _PRINTABLE))
        if unicode_ok:
            try:
                utf8.decode(piece, i + BLOCK >= len(body))
            except UnicodeDecodeError:
                unicode_ok = False
        if unicode_ok and bad > limit:  # not printable enough: text only as UTF-8 with few controls
            controls += sum(len(x.translate(None, _NOT_CONTROL)) for x in parts[counted:])
            counted = len(parts)
            unicode_ok = controls <= limit
        if bad > limit and not unicode_ok:
            return None
    return b"".join(parts)


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
    """(decoded, map) of a base64 run whose decoding reads as text, else None."""
    body = run.rstrip(b"=")
    if len(body) % 4 == 1:
        return None
    if _DIGIT.search(body) is None or body.isupper() or body.islower():
        return None  # encoded text mixes cases and digits; an identifier or a word does not
    body = _b64_standard(body)
    if body is None:
        return None
    n = len(body) // 4 * 3 + max(0, len(body) % 4 - 1)
    try:
        data = _text_in_blocks(body + b"=" * (-len(body) % 4), n, binascii.a2b_base64)
    except (binascii.Error, ValueError):
        return None
    return None if data is None else (data, _Base64(len(run)))


def _b64_standard(body: bytes) -> bytes | None:
    """URL-safe base64 in the standard alphabet (a2b_base64 would skip - and _); None when
    the run mixes both alphabets."""
    if b"-" in body or b"_" in body:
        if b"+" in body or b"/" in body:
            return None
        return body.replace(b"-", b"+").replace(b"_", b"/")
    return body


def _hex(run: bytes):
    """(decoded, map) of a run of hex digits whose decoding reads as text, else None."""
    if len(run) % 2:
        run = run[:-1]
    if _DIGIT.search(run) is None:
        return None  # letters only: a word, not hex
    try:
        data = _text_in_blocks(run, len(run) // 2, binascii.unhexlify)
    except (binascii.Error, ValueError):
        return None
    return None if data is None else (data, _Linear())


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


def runs(data: bytes, base64_too: bool = True, percent: bool = True, escapes: bool = True,
         covered=None, gate=None):
    """(start, end, decoded, map) of every encoded-looking run that decodes to text. Each kind
    only when the caller's prefilter saw a sign of it (a keyword's encoded form, a %XX, an
    escape). `covered(s, e)` skips a run before it is decoded; `gate`, when given, a Gate of
    where encoded keywords start: only the base64/hex runs that hold one are decoded."""
    if len(data) < MIN_RUN:
        return
    if base64_too:
        yield from _base64_runs(data, covered, gate)
    if percent and b"%" in data:
        for s, e in _runs_at(data, _PCT_AT, _PCT_LEFT, _PCT_RUN):
            if e - s > MAX_RUN or e - s < 6 or (covered is not None and covered(s, e)):
                continue
            decoded, mapping = _percent_decoded(data[s:e])
            yield s, e, decoded, mapping
    if escapes and b"\\" in data:
        for s, e in _runs_at(data, _ESC_AT, _ESC_LEFT, _ESC_RUN):
            if e - s > MAX_RUN or (covered is not None and covered(s, e)):
                continue
            raw = data[s:e]
            decoded, mapping = _escape_decoded(raw)
            if decoded != raw:
                yield s, e, decoded, mapping


class Gate:
    """Where encoded keywords start in a text, found lazily: `next(pos)` is the first start at
    or after pos (-1: none). From `patterns` searched as asked (each search stops at its first
    match: a base64 blob is one run, found at its first form), or from sorted `positions`."""

    __slots__ = ("data", "patterns", "found", "positions")

    def __init__(self, data: bytes, patterns=(), positions=None):
        self.data, self.patterns, self.positions = data, list(patterns), positions
        self.found = [-2] * len(self.patterns)  # each pattern's last match start (-2: not searched)

    def next(self, pos: int) -> int:
        if self.positions is not None:
            i = bisect.bisect_left(self.positions, pos)
            return self.positions[i] if i < len(self.positions) else -1
        best = -1
        for k, pattern in enumerate(self.patterns):
            at = self.found[k]
            if at != -1 and at < pos:
                m = pattern.search(self.data, pos)
                at = self.found[k] = -1 if m is None else m.start()
            if at >= 0 and (best < 0 or at < best):
                best = at
        return best


def _runs_at(data: bytes, at, left, run):
    """(start, end) of each match of `run` (what finditer gives), found from the matches of
    `at` (the sign that starts it, a %XX or an escape: found fast) by going back to the last
    stop character (`left`) and matching `run` from there."""
    end = 0
    for m in at.finditer(data):
        p = m.start()
        if p < end:
            continue  # inside the run of an earlier sign
        width = 256
        while True:
            lo = max(end, p - width)
            back = left.match(data, lo, p)
            if back is not None or lo == end:
                break
            width *= 4
        s = back.end() if back is not None else lo
        got = run.match(data, s)
        if got is None:  # pragma: no cover - `at` matched inside what `run` matches
            continue
        end = got.end()
        yield s, end


def _run_bounds(classes: bytes, gate):
    """(start, end) of each run of MIN_RUN or more base64-alphabet characters (classes: the
    text translated by _CLASS); with a gate, only of the runs that hold a gate position."""
    n = len(classes)
    pos = 0
    if gate is None:
        while True:
            i = classes.find(_RUN_NEEDLE, pos)
            if i < 0:
                return
            s = classes.rfind(0, 0, i) + 1  # the run reaches back to the last byte outside it
            e = classes.find(0, i)
            pos = n if e < 0 else e
            yield s, pos
    while True:
        p = gate.next(pos)
        if p < 0:
            return
        if not classes[p]:
            pos = p + 1
            continue
        s = classes.rfind(0, 0, p) + 1
        e = classes.find(0, p)
        pos = n if e < 0 else e
        if pos - s >= MIN_RUN:
            yield s, pos


def _all_hex(run: bytes) -> bool:
    """Only hex digits in run (a base64 run shows a non-hex character within its first 64)."""
    return _NONHEX.search(run, 0, 64) is None and not run.translate(None, _HEXDIGITS)


def _base64_runs(data: bytes, covered, gate):
    classes = data.translate(_CLASS)
    for s, e in _run_bounds(classes, gate):
        if data[e:e + 1] == b"=":  # padding ends the run
            e += 2 if data[e + 1:e + 2] == b"=" else 1
        if e - s > MAX_RUN or _DIGIT.search(data, s, e) is None:
            continue  # too long, or no digit: a word or an identifier
        if covered is not None and covered(s, e):
            continue
        if data[s:s + 2] in (b"0x", b"0X"):
            s += 2
        run = data[s:e]
        got = None
        if _all_hex(run):  # hex digits only: hex, or base64 that happens to be
            got = _hex(run)
        if got is None:
            got = _b64(run)
        if got is not None:
            yield s, e, got[0], got[1]


class _LazyMap:
    """The position map of a percent or escape run, built when a secret is found in it (most
    runs hold none)."""

    __slots__ = ("raw", "build", "seg")

    def __init__(self, raw: bytes, build):
        self.raw, self.build, self.seg = raw, build, None

    def range(self, a: int, b: int) -> tuple[int, int]:
        if self.seg is None:
            self.seg = self.build(self.raw)[1]
        return self.seg.range(a, b)


def _percent_decoded(raw: bytes):
    """(decoded, map) of a percent run."""
    if _LONE_PCT.search(raw) is None and b"=" not in raw:
        # Every % starts a %XX and no "=" is there to be misread: as quoted-printable, in C.
        return binascii.a2b_qp(raw.replace(b"%", b"=")), _LazyMap(raw, _unpercent)
    return _unpercent(raw)


def _escape_decoded(raw: bytes):
    """(decoded, map) of an escape run."""
    fast = _json_unescape(raw)
    if fast is not None:
        return fast, _LazyMap(raw, unescape)
    return unescape(raw)


def _json_unescape(raw: bytes) -> bytes | None:
    """unescape(raw)[0] in C, when raw is UTF-8 and its escapes are all JSON's; None
    otherwise (\\x, \\', \\0, an unknown escape, a quote: unescape handles those)."""
    try:
        out = json.loads('"' + raw.decode("utf-8") + '"', strict=False)
    except ValueError:  # not UTF-8 (UnicodeDecodeError is a ValueError), or not JSON's escapes
        return None
    return out.encode("utf-8", "surrogatepass")


def encoded_spans(find, data: bytes, covered, depth: int, budget: Budget, base64_too: bool = True,
                  percent: bool = True, escapes: bool = True, worth=None, gate=None) -> list:
    """Spans of secrets inside encoded runs of data, in data's coordinates.

    `find(text, depth)` finds spans in a decoded text (itself recursively); `covered(s, e)`
    says a run is already inside a secret found directly; `budget` bounds the decoded bytes
    scanned; `worth(text)` says whether a decoded text is worth a scan; `gate`: see runs()."""
    from recorder.masking.engine import Span

    out = []
    if depth >= MAX_DEPTH:
        return out
    for s, e, decoded, mapping in runs(data, base64_too, percent, escapes, covered, gate):
        if not budget.take(len(decoded)):
            break
        ctx = data[max(0, s - CONTEXT):s]
        text = ctx + decoded
        if worth is not None and not worth(text):
            continue  # no keyword, encoded keyword or known secret in it: nothing to find
        for sp in find(text, depth + 1):
            if sp.end <= len(ctx):
                continue
            a, b = mapping.range(max(0, sp.start - len(ctx)), sp.end - len(ctx))
            if b > a:
                out.append(Span(s + a, s + b, sp.rule, sp.secret))
    return out


_TAIL_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/_-=%\\"


def tail_run_start(data: bytes, floor: int, has_partial) -> int:
    """Streams: where an encoded run that touches the end of data starts, when what it
    decodes to so far could hold (the start of) a secret; len(data) otherwise.
    `has_partial(decoded)` says whether rules match or partially match the decoded text."""
    n = len(data)
    lo = max(floor, n - 4096)
    i = lo + len(data[lo:n].rstrip(_TAIL_CHARS))
    if n - i < MIN_RUN:
        return n
    run = data[i:n]
    candidates = []
    if b"%" in run:
        candidates.append(_percent_decoded(run)[0])
    if b"\\" in run:
        candidates.append(_escape_decoded(run)[0])
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
