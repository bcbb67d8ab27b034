"""Streams look for a partial match only after the last byte its rule cannot match
(recorder/masking/alphabet.py). That shortcut must change nothing: the pending matches are
those of a scan from the start of the window, for every rule of the catalogue, on texts that
end inside secrets of every kind."""
from __future__ import annotations

import random

import pytest

from recorder.masking import Masker
from recorder.masking.alphabet import EVERY, Outside, match_alphabet
from tests.unit import masking_corpus

MASKER = Masker(b"a" * 32, known_secrets=["gw-Zq8rT2vW9xY4bN6mQ1", "another credential value"])


def _pending(masker, data: bytes):
    return sorted((p.start, p.secret_start, p.rule, p.strong) for p in masker.pending(data))


def _texts() -> list[bytes]:
    rng = random.Random(23)
    out = []
    state = masking_corpus.rng.getstate()  # the corpus test draws from the same generator after us
    try:
        positives = masking_corpus.true_positives(per_rule=2)
    finally:
        masking_corpus.rng.setstate(state)
    for _family, _rule, carrier, _secret, text in positives:
        data = text.encode()
        for _ in range(3 if carrier == "sse" else 2):
            cut = rng.randrange(1, len(data) + 1)  # a stream's text so far ends anywhere
            out.append(data[:cut])
    return out


def test_the_alphabet_cut_finds_the_pending_matches_of_a_full_scan(monkeypatch):
    texts = _texts()
    assert len(texts) > 500
    got = [_pending(MASKER, t) for t in texts]
    reference = Masker(b"a" * 32, known_secrets=["gw-Zq8rT2vW9xY4bN6mQ1", "another credential value"])
    for rule in reference.rules:
        rule.outside = Outside(EVERY)  # scan from the window's start, as before the cut
    monkeypatch.setattr(reference.known, "_outside", Outside(EVERY))
    want = [_pending(reference, t) for t in texts]
    assert sum(1 for w in want if w) > 200  # most texts end inside something that could grow
    mismatches = [(t[-80:], g, w) for t, g, w in zip(texts, got, want) if g != w]
    assert not mismatches, mismatches[:3]


def test_a_wrong_alphabet_would_be_caught():
    """The comparison above can fail: an alphabet that leaves out a byte a match holds
    loses the match that reaches the end."""
    masker = Masker(b"a" * 32)
    text = b"config:\nexport GITHUB_TOKEN=ghp_" + b"A1b2C3d4E5" * 2
    assert any(p.rule == "github-pat" for p in masker.pending(text))
    rule = next(r for r in masker.rules if r.id == "github-pat")
    rule.outside = Outside(match_alphabet(rb"[a-z_]+"))  # no digits, no capitals
    assert not any(p.rule == "github-pat" for p in masker.pending(text))


@pytest.mark.parametrize("source, holds, lacks", [
    (rb"(ghp_[A-Za-z0-9]{36})", b"ghp_Az09", b"\n \"-"),
    (rb"(?i)bearer\s+([A-Za-z0-9._~+/\-]{16,}=*)", b"BEARERbearer \t\n=", b"\"';"),
    (rb"(?i:key)=\d+", b"KEYkey=0189", b"\n x"),
    (rb"[^;\n]+;", b";abc \"", b"\n"),
    (rb"a(?=\s)", b"a \n", b"b"),
])
def test_alphabet_of_a_regex(source, holds, lacks):
    alphabet = match_alphabet(source)
    assert all(b in alphabet for b in holds)
    assert not any(b in alphabet for b in lacks)


@pytest.mark.parametrize("source", [
    rb"a.b",            # any byte but a newline: counted as every byte
    rb"(a+)\1",         # a back reference
    rb"[[:alpha:]]+",   # the regex module reads a POSIX class, re a nested set: unsure
    rb"(?L)\w+",        # locale-dependent
    rb"[^a]",           # a negated byte: every byte but one, nothing to gain
])
def test_unsure_alphabets_are_every_byte(source):
    alphabet = match_alphabet(source)
    assert len(alphabet) >= 255
    if source != rb"[^a]":
        assert alphabet == EVERY


def test_outside_start():
    o = Outside(frozenset(b"abc"))
    assert o.start(b"xxabcab") == 2
    assert o.start(b"xxabcab", 4) == 4
    assert o.start(b"abc") == 0
    assert o.start(b"abcx") == 4
    assert Outside(EVERY).start(b"\n\n", 1) == 1
