"""Faithful streaming, as a property over every rule of the catalogue.

For each rule a stream carries one of its true positives, split into pieces a few characters
per event (OpenAI and Anthropic SSE, non-JSON SSE, a plain stream; LF and CRLF), between
clean text and unrelated events. The stream is fed one byte at a time (every offset is a
chunk boundary) and cut at random places. The output must be the input byte for byte,
except that the bytes carrying what the rules mask in the whole text are replaced: the
first piece of each by a tag, later pieces by nothing. No byte of a secret is written, no
event is added or lost, CRLF stays CRLF. With the time bound forcing releases at random
moments, no secret is written either, beyond the few characters of a keyword not yet
complete (docs/masking.md).
"""
from __future__ import annotations

import random
import re

import orjson
import pytest

from recorder.masking import Masker, SseMasker, StreamMasker
from recorder.masking.catalogue import RULES
from tests.unit.masking_fakes import j
from tests.unit.test_masking_rules import CASES

KNOWN = j("gw-upstream-", "Qz7Rk2Lm9Xc4Vb8N")
MASKER = Masker(b"f" * 32, known_secrets=[KNOWN])
TAG = re.compile(rb"\[MASKED:[a-z0-9-]+:[0-9a-f]{8}\]")
FILLER = ("Here is what I found in the repository, have a look", "That is all for now, nothing else.")
FORMATS = ("openai", "anthropic", "text", "plain")


def samples() -> list[tuple[str, str, str]]:
    """(rule id, text, secret) for every rule, and the gateway's own credential."""
    out = []
    for rule in RULES:
        tps = CASES[rule["id"]][0]
        text, secret = next((t, s) for t, s in tps if s is not None) if any(s for _, s in tps) else tps[0]
        out.append((rule["id"], text, secret or text))
    out.append(("credential", f"the key is {KNOWN} here", KNOWN))
    return out


SAMPLES = samples()


def _pieces(text: str, rng: random.Random, sizes=(1, 4)) -> list[str]:
    out, i = [], 0
    while i < len(text):
        n = rng.randint(*sizes)
        out.append(text[i:i + n])
        i += n
    return out


def build(fmt: str, text: str, rng: random.Random, eol: bytes) -> tuple[bytes, list[int]]:
    """The raw stream and, for each character of text, the stream range that carries it."""
    raw = bytearray()
    where: list[tuple[int, int]] = []

    def noise():
        if rng.random() < 0.3:
            raw.extend(rng.choice([b": keep-alive" + eol + eol, b"event: ping" + eol + b'data: {"type":"ping"}' + eol + eol]))

    if fmt == "plain":
        data = text.replace("\n", "\r\n" if eol == b"\r\n" else "\n")
        pos = 0
        for ch in text:
            enc = ("\r\n" if ch == "\n" and eol == b"\r\n" else ch).encode()
            where.append((pos, pos + len(enc)))
            pos += len(enc)
        return data.encode(), where
    pieces = _pieces(text, rng)
    if fmt == "text":  # a piece that reads as JSON would be a JSON event, not text: join it to the one before
        merged: list[str] = []
        for p in pieces:
            if merged and p.lstrip()[:1] in ("{", "["):
                merged[-1] += p
            else:
                merged.append(p)
        pieces = merged
    for piece in pieces:
        noise()
        if fmt == "text":
            lines = piece.split("\n")
            raw.extend(b"data: ")
            for k, line in enumerate(lines):
                if k:
                    start = len(raw)
                    raw.extend(eol + b"data: ")
                    where.append((start, len(raw)))
                for ch in line:
                    start = len(raw)
                    raw.extend(ch.encode())
                    where.append((start, len(raw)))
            raw.extend(eol + eol)
            continue
        if fmt == "openai":
            head = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"'
            tail = b'"},"finish_reason":null}]}' + eol + eol
        else:
            head = (b"event: content_block_delta" + eol +
                    b'data: {"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"')
            tail = b'"}}' + eol + eol
        raw.extend(head)
        for ch in piece:
            start = len(raw)
            raw.extend(orjson.dumps(ch)[1:-1])
            where.append((start, len(raw)))
        raw.extend(tail)
    noise()
    if fmt == "openai":
        raw.extend(b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}' + eol + eol + b"data: [DONE]" + eol + eol)
    elif fmt == "anthropic":
        raw.extend(b"event: content_block_stop" + eol + b'data: {"type":"content_block_stop","index":0}' + eol + eol)
    return bytes(raw), where


def masked_positions(text: str, where) -> tuple[set[int], list[tuple[int, int]]]:
    """The stream bytes that carry what the rules mask in the whole text, and the text spans."""
    data = text.encode()
    spans = MASKER.find(data)
    # character offsets of the byte spans
    chars = [len(data[:s.start].decode("utf-8", "ignore")) for s in spans], \
        [len(data[:s.end].decode("utf-8", "ignore")) for s in spans]
    positions: set[int] = set()
    for a, b in zip(*chars):
        for c in range(a, b):
            positions.update(range(*where[c]))
    return positions, list(zip(*chars))


def masker_for(fmt: str):
    return StreamMasker(MASKER) if fmt == "plain" else SseMasker(MASKER)


def feed(fmt: str, raw: bytes, cuts, force_at=(), rng=None) -> bytes:
    m = masker_for(fmt)
    out = []
    prev = 0
    for c in list(cuts) + [len(raw)]:
        out.append(m.feed(raw[prev:c]))  # no clock: only force() releases early
        prev = c
        if c in force_at:
            out.append(m.force())
    out.append(m.finish())
    return b"".join(out)


def assert_faithful(raw: bytes, out: bytes, masked: set[int]) -> None:
    """out is raw with the masked bytes replaced (first piece of a run by a tag, others by nothing)."""
    i = o = 0
    n, m = len(raw), len(out)
    while i < n or o < m:
        t = TAG.match(out, o)
        if t is not None:
            assert i < n and i in masked, f"a tag at output {o} where input {i} is not masked: {raw[i:i + 40]!r}"
            o = t.end()
            while i < n and i in masked:
                i += 1
            continue
        if i < n and i in masked:
            i += 1  # carried by a tag written earlier (a secret spread over several events)
            continue
        assert i < n and o < m and raw[i] == out[o], (
            f"output differs from the input at input {i} / output {o}: {raw[max(0, i - 30):i + 30]!r} vs "
            f"{out[max(0, o - 30):o + 30]!r}")
        i += 1
        o += 1


def _stream(rule_id, text, secret, fmt, seed):
    rng = random.Random(f"{rule_id}-{fmt}-{seed}")
    eol = b"\r\n" if rng.random() < 0.5 else b"\n"
    full = f"{FILLER[0]}: {text} {FILLER[1]}"
    raw, where = build(fmt, full, rng, eol)
    masked, spans = masked_positions(full, where)
    at = full.index(secret)
    assert any(a <= at and at + len(secret) <= b for a, b in spans), f"{rule_id}: the whole text does not mask {secret!r}"
    return rng, raw, masked


@pytest.mark.parametrize("rule_id, text, secret", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_every_rule_streams_faithfully_split_at_every_offset(rule_id, text, secret):
    for k, fmt in enumerate(FORMATS):
        rng, raw, masked = _stream(rule_id, text, secret, fmt, 0)
        runs = [sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, rng.randint(1, 40)))) for _ in range(6)]
        if (k + sum(map(ord, rule_id))) % 2 == 0 or fmt == "plain":
            runs.append(range(1, len(raw)))  # one byte at a time: every offset is a chunk boundary
        for cuts in runs:
            out = feed(fmt, raw, cuts)
            assert secret.encode() not in out
            assert_faithful(raw, out, masked)
            if fmt != "plain":
                blank = b"\r\n\r\n" if b"\r\n" in raw else b"\n\n"
                assert out.count(blank) == raw.count(blank)  # no event added, none lost


def test_two_pieces_at_every_offset():
    # The harshest two-piece splits, on the plain stream and on SSE, for a few rule shapes.
    for rule_id, text, secret in [s for s in SAMPLES if s[0] in ("github-pat", "url-password", "generic-secret",
                                                                  "private-key", "credential")]:
        for fmt in ("plain", "text") if rule_id == "github-pat" else ("plain",):
            _, raw, masked = _stream(rule_id, text, secret, fmt, 1)
            for cut in range(1, len(raw)):
                out = feed(fmt, raw, [cut])
                assert_faithful(raw, out, masked)


@pytest.mark.parametrize("rule_id, text, secret", SAMPLES, ids=[s[0] for s in SAMPLES])
def test_forced_releases_never_write_a_secret(rule_id, text, secret):
    # The time bound releases held text at random moments: matches that already hold their
    # keyword are masked as they stand, so at most the first characters of a keyword get out.
    for fmt in FORMATS:
        rng, raw, _ = _stream(rule_id, text, secret, fmt, 2)
        for _ in range(4):
            cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, 30)))
            out = feed(fmt, raw, cuts, force_at=set(rng.sample(cuts, 10)))
            assert secret.encode() not in out
            core = re.sub(rb"-----(?:BEGIN|END)[A-Z ]*-----", b"\x00", secret.encode())  # PEM markers are public
            leaked = max(_longest_secret_run(out, part) for part in core.split(b"\x00"))
            assert leaked <= 6, f"{leaked} characters of the secret written in a row: {out!r}"


def _longest_secret_run(out: bytes, secret: bytes) -> int:
    """The longest substring of the secret (5 or more bytes) that appears in the output's text."""
    best = 0
    for length in range(5, len(secret) + 1):
        if any(secret[i:i + length] in out for i in range(0, len(secret) - length + 1)):
            best = length
        else:
            break
    return best


def test_a_clean_stream_is_released_at_once_and_kept_exactly():
    rng = random.Random(3)
    text = "The build passed; the tests ran in 41 seconds and the report is attached. " * 3
    for fmt in FORMATS:
        raw, _ = build(fmt, text, rng, b"\r\n")
        m = masker_for(fmt)
        out = b""
        for i in range(0, len(raw), 37):
            out += m.feed(raw[i:i + 37], i / 1000)
            # Whatever could still be a secret is at most a few bytes (a word that may grow);
            # in SSE, at most the event that has not ended yet.
            assert m.held <= (8 if fmt == "plain" else 200), (fmt, m.held)
        assert out + m.finish() == raw


def test_the_hold_is_bounded_in_time():
    # "...ghp_ab" could still become a token: held. Once the bound has passed it is released
    # (masked, since it already holds its keyword), without waiting for the stream's end.
    m = StreamMasker(MASKER)
    assert m.feed(b"token ghp_ab", 0.0) == b"token "
    assert m.feed(b"c", 0.05) == b""  # still within the bound
    out = m.feed(b"d", 0.2)
    assert out.startswith(b"[MASKED:github-pat:") and m.held == 0
    # A weak partial (a trailing "sk" that might start "sk-") is released as it is.
    m = StreamMasker(MASKER)
    out = m.feed(b"the answer is sk", 0.0)
    assert m.held and out + m.feed(b"", 0.2) == b"the answer is sk" and m.held == 0
