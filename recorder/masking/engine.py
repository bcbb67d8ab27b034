"""The masking engine: finds secrets in bytes and replaces them by keyed tags.

Speed by design (docs/masking.md, scripts/bench_masker.py):
- everything runs on UTF-8 bytes, so a body is scanned as it arrived, undecodable bytes
  included, and offsets need no conversion;
- one prefilter pass (an RE2 set of every rule's keywords) says which rules can match;
  only those run, each one RE2 scan (Python `re` where RE2 is missing or a custom rule
  needs lookarounds);
- results are cached by content: agents resend the whole history on every turn.

A tag is `[MASKED:<rule-id>:<8 hex>]`, the hex an HMAC-SHA256 of the secret under the
gateway's key: the same secret gets the same tag, and the tag does not reveal it.
"""
from __future__ import annotations

import bisect
import hashlib
import hmac
import math
import re
import threading
from collections import Counter, OrderedDict
from dataclasses import dataclass, field

try:  # RE2 makes the prefilter one pass and rule scans linear; without it, Python re does both
    import re2 as _re2
except ImportError:  # pragma: no cover - exercised only where google-re2 does not install
    _re2 = None

import regex as _regex

from recorder.masking import decoding, names
from recorder.masking.alphabet import Outside, match_alphabet
from recorder.masking.catalogue import RULES as BUILTIN_RULES
from recorder.masking.known_secrets import KnownSecrets

TAG_RE = re.compile(rb"\[(?:MASKED:[a-z0-9-]+:[0-9a-f]{8}|credential:[^\]\s]{1,100})\]")
KNOWN_RULE_ID = "credential"


def mask_tag(rule_id: str, secret: bytes, key: bytes) -> str:
    digest = hmac.new(key, secret, hashlib.sha256).hexdigest()
    return f"[MASKED:{rule_id}:{digest[:8]}]"


def shannon_entropy(data: bytes) -> float:
    n = len(data)
    if not n:
        return 0.0
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values())


@dataclass(frozen=True)
class Rule:
    """One rule, as the catalogue or the config gives it (see catalogue.py for the fields)."""

    id: str
    regex: str
    keywords: tuple[str, ...] = ()
    entropy: float | None = None
    allowlist: tuple[str, ...] = ()
    boundary: str | None = None
    require: str | None = None
    anchored: bool = True
    long: bool = False  # matches can be longer than the streaming window (PEM blocks, JWTs)
    what: str = ""
    group: str = "Custom"
    names: bool = False  # the secret follows a name: names.verdict() decides whether it is a secret name

    @classmethod
    def from_dict(cls, d: dict) -> "Rule":
        return cls(
            id=d["id"], regex=d["regex"], keywords=tuple(d.get("keywords", ())), entropy=d.get("entropy"),
            allowlist=tuple(d.get("allowlist", ())), boundary=d.get("boundary"), require=d.get("require"),
            anchored=d.get("anchored", True), long=d.get("long", False), what=d.get("what", ""), group=d.get("group", "Custom"),
            names=d.get("names", False),
        )


@dataclass(frozen=True)
class Span:
    start: int
    end: int
    rule: str
    secret: bytes


class RuleError(ValueError):
    pass


def _re2_options():
    opts = _re2.Options()
    opts.encoding = _re2.Options.Encoding.LATIN1  # one byte, one character: offsets are byte offsets
    opts.log_errors = False
    return opts


def _prefix_source(regex: str) -> str | None:
    """The part of a rule's regex before its secret group, when the group is the first
    capturing group at the top level and the regex has no top-level alternation. Streams
    use it to hold back only the secret, not the name before it."""
    i, depth, in_class, cut = 0, 0, False, None
    while i < len(regex):
        c = regex[i]
        if c == "\\":
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            if regex[i + 1:i + 2] == "^":
                i += 1
            if regex[i + 1:i + 2] == "]":
                i += 1
        elif c == "(":
            if regex[i + 1:i + 2] != "?" and cut is None:
                if depth:
                    return None
                cut = i
            depth += 1
        elif c == ")":
            depth -= 1
        elif c == "|" and depth == 0:
            return None
        i += 1
    return regex[:cut] if cut else None


class CompiledRule:
    __slots__ = ("rule", "id", "scan", "python", "allow", "boundary", "require", "entropy", "partial",
                 "keywords", "prefix", "names", "outside")

    def __init__(self, rule: Rule):
        self.rule = rule
        self.id = rule.id
        source = rule.regex.encode("utf-8")
        try:
            self.python = re.compile(source)
        except re.error as e:
            raise RuleError(f"rule {rule.id}: the regex does not compile: {e}") from None
        self.scan = self.python
        if _re2 is not None:
            try:
                self.scan = _re2.compile(source, _re2_options())
            except Exception:  # lookarounds or backreferences: Python re scans this rule
                self.scan = self.python
        self.allow = [re.compile(a.encode("utf-8")) for a in rule.allowlist]
        self.boundary = None
        if rule.boundary:
            cls = re.compile(b"[" + rule.boundary.encode() + b"]")
            self.boundary = frozenset(b for b in range(256) if cls.match(bytes([b])))
        self.require = re.compile(rule.require.encode()) if rule.require else None
        self.entropy = rule.entropy
        self.keywords = tuple(k.lower() for k in rule.keywords)
        self.names = rule.names
        try:  # streams need partial matches, which only the regex module finds
            self.partial = _regex.compile(source)
        except _regex.error as e:
            raise RuleError(f"rule {rule.id}: the regex does not compile for streaming: {e}") from None
        self.outside = Outside(match_alphabet(source))  # streams: where a match reaching the end can start
        self.prefix = None
        prefix = _prefix_source(rule.regex)
        if prefix and prefix not in ("(?i)",):
            try:
                self.prefix = _regex.compile(prefix.encode("utf-8"))
            except _regex.error:
                self.prefix = None

    def secret_span(self, m) -> tuple[int, int]:
        start, end = m.start(), m.end()
        for i, g in enumerate(m.groups(), 1):
            if g is not None:
                start, end = m.start(i), m.end(i)
                break
        text = m.string
        while end > start and text[end - 1] in b" \t\r\n":  # no secret ends in whitespace
            end -= 1
        return start, end

    def accept(self, data: bytes, start: int, end: int, at: int = 0) -> bool:
        """Whether data[start:end] is a secret; `at` is where the whole match starts."""
        if end <= start:
            return False
        if self.boundary is not None:
            if start > 0 and data[start - 1] in self.boundary:
                return False
            if end < len(data) and data[end] in self.boundary:
                return False
        secret = data[start:end]
        if self.require is not None and not self.require.search(secret):
            return False
        if self.entropy is not None and shannon_entropy(secret) < self.entropy:
            return False
        for a in self.allow:
            if a.search(secret):
                return False
        if self.names:
            if data[end:end + 1] == b"(" or names.looks_like_path(secret):
                return False  # a call (`Credentials(config)`) or where a secret is kept (`keys/gateway.key`)
            strength = names.verdict(names.name_at(data, at))
            if strength is None or (strength == "weak" and not names.weak_value_is_secret(secret)):
                return False
        return True

    def find(self, data: bytes, out: list[Span]) -> None:
        for m in self.scan.finditer(data):
            start, end = self.secret_span(m)
            if self.accept(data, start, end, m.start()):
                out.append(Span(start, end, self.id, data[start:end]))

    def secret_start(self, data: bytes, start: int) -> int:
        """Where the secret of a match growing from `start` begins (len(data): not begun yet)."""
        if self.prefix is None:
            return start
        m = self.prefix.match(data, start)
        return len(data) if m is None else m.end()

    def strong(self, data: bytes, start: int) -> bool:
        """A match from `start` to the end of data that already holds its rule's keyword
        (and, for a rule after a name, a name that holds secrets): it can only be this secret."""
        text = data[start:]
        if not self.keywords:
            return len(text) >= 8
        low = text.lower()
        if not any(k.encode() in low for k in self.keywords):
            return False
        return not self.names or names.verdict(names.name_at(data, start)) == "strong"


class Pending:
    """A match that reaches the end of a stream's text and could still grow."""

    __slots__ = ("start", "secret_start", "rule", "strong")

    def __init__(self, start: int, secret_start: int, rule: str, strong: bool):
        self.start, self.secret_start, self.rule, self.strong = start, secret_start, rule, strong


@dataclass
class _Cache:
    """A bounded LRU of masked results, keyed by content (bytes hash and compare)."""

    max_bytes: int
    size: int = 0
    items: OrderedDict = field(default_factory=OrderedDict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    hits: int = 0
    misses: int = 0

    def get(self, key):
        with self.lock:
            value = self.items.get(key)
            if value is None:
                self.misses += 1
                return None
            self.items.move_to_end(key)
            self.hits += 1
            return value

    def put(self, key, value: bytes, cost: int) -> None:
        if cost > self.max_bytes // 4:
            return
        with self.lock:
            if key in self.items:
                return
            self.items[key] = value
            self.size += cost
            while self.size > self.max_bytes and self.items:
                old_key, old = self.items.popitem(last=False)
                self.size -= _cost(old_key)


def _cost(key) -> int:
    return (len(key[0]) + len(key[1]) if isinstance(key, tuple) else len(key)) * 2 + 100


def _forms_pattern(forms: list[bytes]):
    """One pattern that finds any of the forms (RE2), or the forms themselves without RE2."""
    if not forms:
        return None
    if _re2 is None:
        return forms
    opts = _re2_options()
    opts.max_mem = 64 << 20  # an alternation of a few thousand literals: room for its DFA
    return _re2.compile(b"|".join(re.escape(f) for f in forms), opts)


_HEX_TEXT = (_re2.compile(decoding.HINTS[2], _re2_options()) if _re2 is not None
             else re.compile(decoding.HINTS[2]))
# Signs that decoding could find something where no keyword shows (may_decode): any run
# long enough (when every run is decoded), a %XX, an escape, hex that encodes text.
_ANY_RUN = rb"[A-Za-z0-9+/_\-]{%d}" % decoding.MIN_RUN
_EVERY_SIGNS = (_re2.compile(b"|".join((_ANY_RUN,) + decoding.HINTS), _re2_options()) if _re2 is not None
                else re.compile(b"|".join((_ANY_RUN,) + decoding.HINTS)))


SHORT_TEXT = 4096  # texts up to this size get the prefilter that also looks for encoded forms
MIN_SECRET_TEXT = 6  # no rule matches fewer bytes than this (known secrets are 8 or more)
# Short texts are cached too: JSON keys such as "prompt_tokens" name a rule keyword, so
# each costs a regex run, and they recur in every reply.
MIN_CACHED = MIN_SECRET_TEXT


class Masker:
    """Masks secrets in bytes and text. Thread-safe; one per gateway is enough.

    `key` keys the tags' HMAC. `rules` are extra rules (config); `builtin` adds the
    catalogue; `allowlist` lists exact values never masked; `known_secrets` are values
    masked wherever they appear, raw, base64- or URL-encoded (rule id "credential").
    """

    def __init__(self, key: bytes, *, rules=(), builtin: bool = True, allowlist=(), known_secrets=(),
                 cache_bytes: int = 64 * 1024 * 1024):
        self.key = key
        specs = [Rule.from_dict(d) for d in BUILTIN_RULES] if builtin else []
        specs += [r if isinstance(r, Rule) else Rule.from_dict(r) for r in rules]
        self.rules = [CompiledRule(r) for r in specs]
        self.allowlist = frozenset(a.encode("utf-8") if isinstance(a, str) else a for a in allowlist)
        self.known = KnownSecrets(known_secrets)
        self._cache = _Cache(cache_bytes)
        self._tags: dict[tuple, bytes] = {}  # (rule, secret) -> tag: a resent history's secrets are tagged again
        self._order = {KNOWN_RULE_ID: -1}
        for i, r in enumerate(self.rules):
            self._order.setdefault(r.id, i)
        self._always: list[CompiledRule] = [r for r in self.rules if not r.keywords]
        # keyword -> rules; the prefilter maps each keyword found back to its rules
        self._keywords: list[bytes] = []
        self._kw_rules: list[list[CompiledRule]] = []
        index: dict[bytes, int] = {}
        for r in self.rules:
            for kw in r.keywords:
                b = kw.encode("utf-8")
                if b not in index:
                    index[b] = len(self._keywords)
                    self._keywords.append(b)
                    self._kw_rules.append([])
                self._kw_rules[index[b]].append(r)
        # Encoded forms of the keywords (base64 or hex): only a text that holds one has its
        # base64/hex runs decoded (decoding.py), unless a rule has no keyword. One alternation,
        # searched apart from the prefilter: it stops at the first form (a random base64 blob
        # holds one within a few KiB), where a set of thousands of forms reads every byte and
        # its DFA grows large on base64 text.
        self._encoded = sorted({f for kw in self._keywords for f in decoding.keyword_forms(kw)} - set(self._keywords))
        self._forms = _forms_pattern(self._encoded)
        self._signs = None  # a keyword's encoded form or a decoding hint (may_decode)
        if _re2 is not None:
            opts = _re2_options()
            opts.max_mem = 64 << 20
            self._signs = _re2.compile(b"|".join([re.escape(f) for f in self._encoded] + list(decoding.HINTS)), opts)
        self._set = None
        if _re2 is not None and self._keywords:
            s = _re2.Set.SearchSet(_re2_options())
            for kw in self._keywords:
                s.Add(b"(?i)" + re.escape(kw))
            for pattern in decoding.HINTS:  # a %XX, a \\u escape, hex that encodes text
                s.Add(pattern)
            s.Compile()
            self._set = s
        # The same with the keywords' encoded forms as one more pattern: for a short text, one
        # pass also says whether decoding has work (a long one searches the forms apart, lazily).
        self._set_small = None
        self._last_hits: tuple = (None, ())  # (text, its prefilter hits): see _prefilter
        if self._set is not None and self._encoded:
            opts = _re2_options()
            opts.max_mem = 64 << 20
            s = _re2.Set.SearchSet(opts)
            for kw in self._keywords:
                s.Add(b"(?i)" + re.escape(kw))
            for pattern in decoding.HINTS:
                s.Add(pattern)
            s.Add(b"|".join(re.escape(f) for f in self._encoded))
            s.Compile()
            self._set_small = s
        # streaming: rules whose keyword comes after the match start get a partial check always
        self._unanchored = [r for r in self.rules if not r.rule.anchored]
        self._long = {r for r in self.rules if r.rule.long}
        # proper prefixes of keywords -> rules: a stream ending in "gh" may be starting "ghp_"
        self._kw_prefixes: dict[bytes, set] = {}
        for r in self.rules:
            for k in r.keywords:
                kb = k.encode()
                for i in range(1, len(kb)):
                    self._kw_prefixes.setdefault(kb[:i], set()).add(r)
        self._max_prefix = max((len(p) for p in self._kw_prefixes), default=0)

    @classmethod
    def from_config(cls, masking, key: bytes, known_secrets=()) -> "Masker":
        """A masker for a config.MaskingConfig."""
        rules = [Rule(id=r.id, regex=r.regex, keywords=tuple(getattr(r, "keywords", ())),
                      entropy=getattr(r, "entropy", None), allowlist=tuple(getattr(r, "allowlist", ())))
                 for r in masking.rules]
        masker = cls(key, rules=rules, builtin=masking.builtin, allowlist=masking.allowlist,
                     known_secrets=known_secrets)
        # What rebuilds it in another process (the writer process gets this, not the compiled rules).
        masker.spec = (masking, key, tuple(known_secrets))
        return masker

    # -- finding ----------------------------------------------------------------------

    def _prefilter(self, data: bytes) -> tuple[int, ...] | list[int]:
        """Indexes of the keywords that occur in data, then (from len(keywords) on) of the
        decoding HINTS that do; for a short text, then also whether a keyword's encoded form
        does (_forms_in)."""
        if self._set_small is not None and len(data) <= SHORT_TEXT:
            # A stream asks twice about the same text (what could still grow, then what is
            # found): the last short text's hits are kept. One tuple, swapped whole: thread-safe.
            last = self._last_hits
            if last[0] is data:
                return last[1]
            hits = tuple(self._set_small.Match(data) or ())
            if type(data) is bytes:  # immutable: the same object is the same text
                self._last_hits = (data, hits)
            return hits
        if self._set is not None:
            return self._set.Match(data) or []
        low = data.lower()
        n = len(self._keywords)
        return [i for i, kw in enumerate(self._keywords) if kw in low] + \
            [n + i for i, p in enumerate(decoding.HINTS) if re.search(p, data)]

    def has_encoded_keyword(self, data: bytes) -> bool:
        """Whether a keyword occurs base64- or hex-encoded in data (one of its forms)."""
        if self._forms is None:
            return False
        if isinstance(self._forms, list):  # no RE2: one substring search per form
            return any(f in data for f in self._forms)
        return self._forms.search(data) is not None

    def encoded_keywords_gate(self, data: bytes, hex_text: bool) -> decoding.Gate:
        """Where keywords' encoded forms start in data (with `hex_text`, also 48+ hex digits
        that encode text: an encoding of an encoding), found as decoding asks."""
        if isinstance(self._forms, list):  # no RE2: every position at once, by substring search
            at = []
            for f in self._forms:
                i = data.find(f)
                while i >= 0:
                    at.append(i)
                    i = data.find(f, i + 1)
            if hex_text:
                at += [m.start() for m in _HEX_TEXT.finditer(data)]
            return decoding.Gate(data, positions=sorted(at))
        patterns = [self._forms] if self._forms is not None else []
        return decoding.Gate(data, patterns + [_HEX_TEXT] if hex_text else patterns)

    def candidates(self, data: bytes, hits: list[int] | None = None) -> list[CompiledRule]:
        """The rules whose keywords occur in data (case-insensitive), in catalogue order."""
        if hits is None:
            hits = self._prefilter(data)
        n = len(self._keywords)
        hits = [i for i in hits if i < n]
        if not hits:
            return list(self._always)
        chosen = set(self._always)
        for i in hits:
            chosen.update(self._kw_rules[i])
        return [r for r in self.rules if r in chosen]

    @property
    def has_unconditional_rules(self) -> bool:
        """Rules without keywords run on every text: no keyword prefilter can skip anything."""
        return bool(self._always)

    def keywords_in(self, data: bytes) -> list[bytes]:
        """The rule keywords (lowercase) that occur in data, case-insensitively."""
        n = len(self._keywords)
        return [self._keywords[i] for i in self._prefilter(data) if i < n]

    def _forms_in(self, data: bytes, hits: list[int]) -> bool | None:
        """Whether a keyword's encoded form occurs in data, when the prefilter's hits say
        (a short text); None when they do not."""
        if self._set_small is not None and len(data) <= SHORT_TEXT:
            return len(self._keywords) + len(decoding.HINTS) in hits
        return None

    def may_decode(self, data: bytes) -> bool:
        """Whether decoding could find a secret in data where no keyword shows: data holds a
        keyword's encoded form, a %XX, an escape or hex that encodes text; when every run is
        decoded (a rule has no keyword, or there are known secrets), any run long enough."""
        if self._always or self.known:
            return _EVERY_SIGNS.search(data) is not None
        if self._signs is None:  # no RE2
            return self.has_encoded_keyword(data) or any(re.search(p, data) for p in decoding.HINTS)
        return self._signs.search(data) is not None

    def keywords_and_signs(self, data: bytes) -> tuple[list[bytes], bool]:
        """The rule keywords (lowercase) that occur in data, and whether data shows a sign of
        an encoded run that decoding would look into: a %XX, an escape, hex that encodes text,
        a keyword's encoded form (always, when every base64/hex run is decoded)."""
        hits = self._prefilter(data)
        n = len(self._keywords)
        every, hex_text, pct, esc = self.decode_hints(hits)
        forms = self._forms_in(data, hits)
        signs = every or hex_text or pct or esc or (self.has_encoded_keyword(data) if forms is None else forms)
        return [self._keywords[i] for i in hits if i < n], signs

    def known_secret_in(self, data: bytes) -> bool:
        found: list[Span] = []
        self.known.find(data, found, self)
        return bool(found)

    def find(self, data: bytes, budget: decoding.Budget | None = None) -> list[Span]:
        """Every secret in data, non-overlapping, sorted by start: found directly, or inside
        encoded runs (recorder/masking/decoding.py), reported where the encoded text carries it.
        `budget` bounds (and counts) the decoding work; by default one sized for data."""
        return self._find(data, 0, decoding.Budget(len(data)) if budget is None else budget)

    def find_direct(self, data: bytes, hits: list[int] | None = None) -> list[Span]:
        """Every secret the rules find in data as it is (no decoding)."""
        found: list[Span] = []
        self.known.find(data, found, self)
        for rule in self.candidates(data, hits):
            rule.find(data, found)
        return self._resolve(data, found)

    def decode_hints(self, hits: list[int]) -> tuple[bool, bool, bool, bool]:
        """From the prefilter's hits: whether every base64/hex run is to be decoded (a rule
        has no keyword, or there are known secrets: nothing shows where they sit), whether
        there is hex that encodes text, a %XX, a \\u escape."""
        n = len(self._keywords)
        return bool(self._always or self.known), n + 2 in hits, n in hits, n + 1 in hits

    def _find(self, data: bytes, depth: int, budget: decoding.Budget) -> list[Span]:
        hits = self._prefilter(data)
        chosen = self.find_direct(data, hits)
        if len(data) < decoding.MIN_RUN:
            return chosen
        every, hex_text, pct, esc = self.decode_hints(hits)
        # Base64/hex runs are decoded where they hold a keyword's encoded form or hex that
        # encodes text (`gate`), or all of them when `every`.
        if every:
            gate, b64 = None, True
        elif not hex_text and self._forms_in(data, hits) is False:
            gate, b64 = None, False  # a short text without an encoded form: nothing to decode
        else:
            gate = self.encoded_keywords_gate(data, hex_text)
            b64 = gate.next(0) >= 0
        if not (b64 or pct or esc):
            return chosen
        starts = [c.start for c in chosen]

        def covered(s, e):  # chosen is sorted and does not overlap: one bisect
            i = bisect.bisect_right(starts, s) - 1
            return i >= 0 and e <= chosen[i].end

        extra = decoding.encoded_spans(lambda text, d: self._find(text, d, budget), data, covered, depth, budget,
                                       b64, pct, esc, self._worth_decoding, gate)
        if extra:
            chosen = self._merge(chosen, self._resolve(data, extra))
        return chosen

    @staticmethod
    def _merge(chosen: list[Span], extra: list[Span]) -> list[Span]:
        """Secrets found decoded added to those found directly. One that reaches further
        than a direct one it overlaps (a PEM block whose rest is behind \\u escapes) widens it
        into one span; one inside a direct secret adds nothing."""
        for x in extra:
            lo = bisect.bisect_left([c.end for c in chosen], x.start + 1)
            over = []
            i = lo
            while i < len(chosen) and chosen[i].start < x.end:
                over.append(chosen[i])
                i += 1
            if any(c.start <= x.start and x.end <= c.end for c in over):
                continue
            start, end = min([x.start] + [c.start for c in over]), max([x.end] + [c.end for c in over])
            chosen = chosen[:lo] + [Span(start, end, x.rule, x.secret)] + chosen[i:]
        return chosen

    def _worth_decoding(self, text: bytes) -> bool:
        """Decoded text is scanned only when the prefilter sees something in it, or it holds
        a keyword's encoded form (an encoding of an encoding)."""
        if self._always or self.known:
            return True
        hits = self._prefilter(text)
        return bool(hits) or (self._forms_in(text, hits) is None and self.has_encoded_keyword(text))

    def _resolve(self, data: bytes, found: list[Span]) -> list[Span]:
        if not found:
            return found
        if self.allowlist:
            found = [s for s in found if s.secret not in self.allowlist]
        if b"[MASKED:" in data or b"[credential:" in data:
            # Already-masked tags stay as they are (re-masking must not mangle them).
            tags = [(m.start(), m.end()) for m in TAG_RE.finditer(data)]
            found = [s for s in found if not any(a < s.end and s.start < b for a, b in tags)]
        # Where secrets overlap, the earlier rule wins (known secrets first, then the catalogue's
        # narrow rules before the generic ones), and within a rule the longer secret.
        order = self._order
        found.sort(key=lambda s: (order.get(s.rule, 1 << 30), -(s.end - s.start), s.start))
        starts: list[int] = []
        chosen: list[Span] = []
        for s in found:
            i = bisect.bisect_left(starts, s.start)
            if i > 0 and chosen[i - 1].end > s.start:
                continue
            if i < len(chosen) and chosen[i].start < s.end:
                continue
            starts.insert(i, s.start)
            chosen.insert(i, s)
        return chosen

    # -- masking ----------------------------------------------------------------------

    def tag(self, span: Span) -> bytes:
        key = (span.rule, span.secret)
        tag = self._tags.get(key)
        if tag is None:
            secret = span.secret if span.rule != KNOWN_RULE_ID else self.known.original(span.secret)
            tag = mask_tag(span.rule, secret, self.key).encode("ascii")
            if len(self._tags) > 4096:
                self._tags.clear()
            self._tags[key] = tag
        return tag

    def apply(self, data: bytes, spans: list[Span], start: int = 0, end: int | None = None) -> bytes:
        """data[start:end] with the spans inside it replaced by their tags."""
        end = len(data) if end is None else end
        parts = []
        pos = start
        for s in spans:
            if s.end <= start or s.start >= end:
                continue
            a = max(s.start, start)
            parts.append(data[pos:a])
            parts.append(self.tag(s))
            pos = min(s.end, end)
        parts.append(data[pos:end])
        return b"".join(parts)

    def spans(self, data: bytes, context: bytes = b"") -> list[Span]:
        """The secrets in data (offsets into data), cached by content. `context` is text that
        stood before data (a JSON key, say): rules see it, but only secrets reaching into
        data are returned (one that starts in the context is cut at data's start)."""
        if len(data) < MIN_SECRET_TEXT and not context:
            return []
        key = (context, data) if context else data
        cacheable = len(data) >= MIN_CACHED
        if cacheable:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
        if context:
            n = len(context)
            found = [Span(max(0, s.start - n), s.end - n, s.rule, s.secret)
                     for s in self.find(context + data) if s.end > n]
        else:
            found = self.find(data)
        if cacheable:
            self._cache.put(key, found, _cost(key))
        return found

    def mask_bytes(self, data: bytes, context: bytes = b"") -> bytes:
        """data with every secret replaced by its tag. `context` is text that stood before
        data (a JSON key, say): rules see it, but only secrets inside data are masked."""
        found = self.spans(data, context)
        return self.apply(data, found) if found else data

    def mask_text(self, text: str, context: str = "") -> str:
        data = text.encode("utf-8", "surrogatepass")
        out = self.mask_bytes(data, context.encode("utf-8", "surrogatepass") if context else b"")
        return text if out is data or out == data else out.decode("utf-8", "surrogatepass")

    def mask_json(self, data: bytes) -> bytes | None:
        from recorder.masking.json_masking import mask_json_bytes

        return mask_json_bytes(self, data)

    def mask_body(self, data: bytes, content_type: str | None = None, notes: set | None = None) -> bytes:
        """A whole body: SSE as a stream, JSON value by value, anything else as bytes. `notes`
        gets why a part that looked like JSON was masked as text (too deep to walk)."""
        from recorder.masking.body_masking import mask_body

        return mask_body(self, data, content_type, notes=notes)

    def stream(self, content_type: str | None = None):
        """A stream masker for one streamed body (recorder/masking/body_masking.py)."""
        from recorder.masking.body_masking import stream_masker

        return stream_masker(self, content_type)

    @property
    def cache_stats(self) -> tuple[int, int]:
        return self._cache.hits, self._cache.misses

    def clear_cache(self) -> None:
        with self._cache.lock:
            self._cache.items.clear()
            self._cache.size = 0

    # -- streaming support -------------------------------------------------------------

    def pending(self, data: bytes, floor: int = 0, window: int = 2048) -> list[Pending]:
        """The matches that reach the end of data and could still grow: partial matches, and
        complete ones that touch the end. Partial matches are looked for in the last `window`
        bytes, except for the rules marked `long` (PEM blocks, JWTs), looked for in all of
        data. Each says where its secret starts (after a name such as `password = `, which
        need not be held) and whether it already holds its rule's keyword (`strong`)."""
        n = len(data)
        out: list[Pending] = []
        tail_at = max(0, n - window)
        tail = data[tail_at:]
        rules = set(self._unanchored) | set(self._always) | set(self.candidates(tail))
        low = tail[-self._max_prefix:].lower()
        for i in range(len(low)):
            more = self._kw_prefixes.get(low[i:])
            if more:
                rules |= more
        if tail_at:
            rules -= self._long
            rules |= self._long & set(self.candidates(data))
        for r in rules:
            at = 0 if (tail_at and r in self._long) else tail_at
            # A match that reaches the end (or, for a long rule, could: see below) holds only
            # bytes its regex can match: it starts after the last other byte (alphabet.py).
            at = r.outside.start(data, at)
            if at >= n:
                continue  # only an empty match is left, and that is no match
            for m in r.partial.finditer(data, at, partial=True):
                if m.end() == m.start():
                    continue
                if m.end() != n:
                    # A complete match of a long rule that stopped short can still grow when the
                    # few bytes after it continue it (a PEM body, then the dashes of its END line).
                    rest = data[m.end():n]
                    if (r not in self._long or len(rest) > 64 or b'"' in rest or b"\n" in rest
                            or r.partial.fullmatch(data, m.start(), partial=True) is None):
                        continue
                    secret = r.secret_span(m)[0]
                elif m.partial:
                    secret = r.secret_start(data, m.start())
                else:
                    secret = r.secret_span(m)[0]
                if secret < n:
                    out.append(Pending(m.start(), secret, r.id, r.strong(data, m.start())))
        known = self.known.partial_start(data)
        if known < n:
            out.append(Pending(known, known, KNOWN_RULE_ID, n - known >= 4))
        enc = decoding.tail_run_start(data, floor, self._could_hold)
        if enc < n:
            out.append(Pending(enc, enc, "encoded", False))
        return out

    def _could_hold(self, decoded: bytes) -> bool:
        if self.find_direct(decoded):
            return True
        n = len(decoded)
        for r in self.rules:
            for m in r.partial.finditer(decoded, max(0, n - 256), partial=True):
                if m.end() == n and m.end() > m.start():
                    return True
        return self.known.partial_start(decoded) < n

    def hold_point(self, data: bytes, floor: int = 0, window: int = 2048) -> int:
        """Where the text that could still grow into a secret starts (len(data) when nothing
        can); never below `floor`."""
        hold = min((p.secret_start for p in self.pending(data, floor, window)), default=len(data))
        return max(hold, floor)
