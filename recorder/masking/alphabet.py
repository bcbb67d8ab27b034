"""Which bytes a rule's match can hold, so a stream need not look for matches where none can be.

A match that reaches the end of a stream's text holds only bytes of its rule's alphabet, so it
starts after the last byte outside it (an SSE stream's last newline, for most rules). Looking
for such matches (partial matching, which only the slow regex module does) can then start
there instead of up to 2 KiB back. The alphabet is read from the regex's parse tree, and is a
superset whenever anything is not certain: `.`, back references, locale flags, or syntax the
`re` parser reads differently from the regex module (it warns about those) count as every byte.
"""
from __future__ import annotations

import re
import warnings

import regex as _regex

try:
    from re import _constants as _c, _parser as _p
except ImportError:  # pragma: no cover - Python before 3.11
    import sre_constants as _c  # type: ignore[no-redef]
    import sre_parse as _p  # type: ignore[no-redef]

EVERY = frozenset(range(256))
_CATEGORIES = {
    _c.CATEGORY_DIGIT: rb"\d", _c.CATEGORY_NOT_DIGIT: rb"\D", _c.CATEGORY_SPACE: rb"\s",
    _c.CATEGORY_NOT_SPACE: rb"\S", _c.CATEGORY_WORD: rb"\w", _c.CATEGORY_NOT_WORD: rb"\W",
}
_category_cache: dict = {}


def _category(cat) -> frozenset[int]:
    """The bytes a class escape matches in either engine (where they differ, both count)."""
    got = _category_cache.get(cat)
    if got is None:
        escape = _CATEGORIES.get(cat)
        if escape is None:
            got = EVERY
        else:
            a, b = re.compile(escape), _regex.compile(escape)
            got = frozenset(x for x in range(256) if a.fullmatch(bytes([x])) or b.fullmatch(bytes([x])))
        _category_cache[cat] = got
    return got


def _cased(chars: set[int]) -> set[int]:
    return chars | {ord(bytes([x]).swapcase()) for x in chars if 65 <= x <= 90 or 97 <= x <= 122}


def _class(items, fold: bool) -> frozenset[int]:
    chars: set[int] = set()
    negate = False
    for op, av in items:
        if op is _c.NEGATE:
            negate = True
        elif op is _c.LITERAL:
            chars.add(av)
        elif op is _c.RANGE:
            chars.update(range(av[0], av[1] + 1))
        elif op is _c.CATEGORY:
            chars |= _category(av)
        else:
            return EVERY
    if fold:
        chars = _cased(chars)
    return EVERY - chars if negate else frozenset(chars)


def _walk(pattern, fold: bool) -> frozenset[int]:
    out: set[int] = set()
    for op, av in pattern:
        if op is _c.LITERAL:
            out |= _cased({av}) if fold else {av}
        elif op is _c.IN:
            out |= _class(av, fold)
        elif op in (_c.MAX_REPEAT, _c.MIN_REPEAT, getattr(_c, "POSSESSIVE_REPEAT", None)):
            out |= _walk(av[2], fold)
        elif op is _c.SUBPATTERN:
            add = av[1]
            if add & (_c.SRE_FLAG_LOCALE | _c.SRE_FLAG_UNICODE):
                return EVERY
            out |= _walk(av[3], fold or bool(add & _c.SRE_FLAG_IGNORECASE))
        elif op is _c.BRANCH:
            for alt in av[1]:
                out |= _walk(alt, fold)
        elif op in (_c.ASSERT, _c.ASSERT_NOT):
            out |= _walk(av[1], fold)  # not part of a match; counted to stay on the safe side
        elif op is getattr(_c, "ATOMIC_GROUP", None):
            out |= _walk(av, fold)
        elif op is _c.GROUPREF_EXISTS:
            out |= _walk(av[1], fold)
            if av[2] is not None:
                out |= _walk(av[2], fold)
        elif op is _c.AT:
            continue
        else:  # ANY, NOT_LITERAL, group references, anything new: every byte
            return EVERY
        if len(out) == 256:
            return EVERY
    return frozenset(out)


def match_alphabet(source: bytes) -> frozenset[int]:
    """The bytes a match of the regex `source` can hold (a superset; EVERY when unsure)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            parsed = _p.parse(source)
    except (re.error, Warning, RecursionError):
        return EVERY
    flags = parsed.state.flags
    if flags & (_c.SRE_FLAG_LOCALE | _c.SRE_FLAG_UNICODE):
        return EVERY
    return _walk(parsed, bool(flags & _c.SRE_FLAG_IGNORECASE))


class Outside:
    """Finds the last byte outside an alphabet: a match that reaches the end starts after it."""

    __slots__ = ("table", "every")

    def __init__(self, alphabet: frozenset[int]):
        self.every = alphabet == EVERY
        # bytes of the alphabet become 0, the others 1: rfind(1) after one translate (C speed)
        self.table = bytes(0 if x in alphabet else 1 for x in range(256))

    def start(self, data: bytes, at: int = 0) -> int:
        """Where a match that holds only alphabet bytes and ends at len(data) can start at the
        earliest, from `at` on: just after the last byte outside the alphabet."""
        if self.every:
            return at
        return at + data[at:].translate(self.table).rfind(1) + 1
