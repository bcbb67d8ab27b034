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

    @classmethod
    def from_dict(cls, d: dict) -> "Rule":
        return cls(
            id=d["id"], regex=d["regex"], keywords=tuple(d.get("keywords", ())), entropy=d.get("entropy"),
            allowlist=tuple(d.get("allowlist", ())), boundary=d.get("boundary"), require=d.get("require"),
            anchored=d.get("anchored", True), long=d.get("long", False), what=d.get("what", ""), group=d.get("group", "Custom"),
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


class CompiledRule:
    __slots__ = ("rule", "id", "scan", "python", "allow", "boundary", "require", "entropy", "partial",
                 "keywords")

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
        try:  # streams need partial matches, which only the regex module finds
            self.partial = _regex.compile(source)
        except _regex.error as e:
            raise RuleError(f"rule {rule.id}: the regex does not compile for streaming: {e}") from None

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

    def accept(self, data: bytes, start: int, end: int) -> bool:
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
        return True

    def find(self, data: bytes, out: list[Span]) -> None:
        for m in self.scan.finditer(data):
            start, end = self.secret_span(m)
            if self.accept(data, start, end):
                out.append(Span(start, end, self.id, data[start:end]))


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
        self._set = None
        if _re2 is not None and self._keywords:
            opts = _re2_options()
            opts.case_sensitive = False
            s = _re2.Set.SearchSet(opts)
            for kw in self._keywords:
                s.Add(re.escape(kw))
            s.Compile()
            self._set = s
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

    def candidates(self, data: bytes) -> list[CompiledRule]:
        """The rules whose keywords occur in data (case-insensitive), in catalogue order."""
        if self._set is not None:
            hits = self._set.Match(data)
        else:
            low = data.lower()
            hits = [i for i, kw in enumerate(self._keywords) if kw in low]
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
        if self._set is not None:
            return [self._keywords[i] for i in self._set.Match(data) or ()]
        low = data.lower()
        return [kw for kw in self._keywords if kw in low]

    def known_secret_in(self, data: bytes) -> bool:
        found: list[Span] = []
        self.known.find(data, found, self)
        return bool(found)

    def find(self, data: bytes) -> list[Span]:
        """Every secret in data, non-overlapping, sorted by start."""
        found: list[Span] = []
        self.known.find(data, found, self)
        for rule in self.candidates(data):
            rule.find(data, found)
        return self._resolve(data, found)

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
        order = {KNOWN_RULE_ID: -1}
        for i, r in enumerate(self.rules):
            order.setdefault(r.id, i)
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
        secret = span.secret if span.rule != KNOWN_RULE_ID else self.known.original(span.secret)
        return mask_tag(span.rule, secret, self.key).encode("ascii")

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

    def mask_bytes(self, data: bytes, context: bytes = b"") -> bytes:
        """data with every secret replaced by its tag. `context` is text that stood before
        data (a JSON key, say): rules see it, but only secrets inside data are masked."""
        if len(data) < MIN_SECRET_TEXT and not context:
            return data
        key = (context, data) if context else data
        cacheable = len(data) >= MIN_CACHED
        if cacheable:
            hit = self._cache.get(key)
            if hit is not None:
                return hit
        full = context + data if context else data
        spans = self.find(full)
        if context:
            spans = [s for s in spans if s.end > len(context)]
        out = self.apply(full, spans, len(context)) if spans else data
        if cacheable:
            self._cache.put(key, out, _cost(key))
        return out

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
        from recorder.masking.bodies import mask_body

        return mask_body(self, data, content_type, notes=notes)

    def body_stream(self, content_type: str | None = None):
        """A stream masker for one streamed body as it is forwarded: feed(bytes) -> bytes,
        finish() -> bytes. SSE text held back may move to a later event."""
        from recorder.masking.bodies import body_stream

        return body_stream(self, content_type)

    def record_stream(self, content_type: str | None = None):
        """A stream masker for one streamed body as it is recorded: the original bytes wherever
        nothing was masked, so the record rebuilds the exact reply."""
        from recorder.masking.bodies import record_stream

        return record_stream(self, content_type)

    @property
    def cache_stats(self) -> tuple[int, int]:
        return self._cache.hits, self._cache.misses

    def clear_cache(self) -> None:
        with self._cache.lock:
            self._cache.items.clear()
            self._cache.size = 0

    # -- streaming support -------------------------------------------------------------

    def hold_point(self, data: bytes, floor: int = 0, window: int = 2048) -> int:
        """Where the text that could still grow into a secret starts: the start of the
        leftmost match (partial, or complete but touching the end) that reaches the end
        of data. len(data) when nothing can. Never below `floor`.

        Partial matches are looked for in the last `window` bytes, except for the rules
        marked `long` (PEM blocks, JWTs), which are looked for in all of data."""
        n = len(data)
        hold = n
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
            for m in r.partial.finditer(data, at, partial=True):
                if m.end() == n and m.start() < hold and m.end() > m.start():
                    hold = m.start()
        hold = min(hold, self.known.partial_start(data))
        return max(hold, floor)
