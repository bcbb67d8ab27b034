"""Recursive decoding's shortcuts give the answers of the slow way (recorder/masking/decoding.py).

Long runs are judged a block at a time, runs are found from their signs, and base64/hex runs
are decoded only where an encoded keyword sits: each shortcut is checked against what it
stands for, and against the encoded secrets it must still find."""
from __future__ import annotations

import base64
import binascii
import os
import random

import pytest

from recorder.masking import Masker, decoding
from tests.unit.masking_fakes import GITHUB_PAT

MASKER = Masker(b"d" * 32)
KNOWN = Masker(b"d" * 32, known_secrets=["sk-" + "Q7" * 20])


def _prose(n: int, rng: random.Random) -> bytes:
    words = "the config value path file reads writes a of to and with for".split()
    return " ".join(rng.choice(words) for _ in range(n // 4)).encode()[:n]


def test_a_long_run_is_judged_as_text_exactly_as_is_text_judges_the_whole(monkeypatch):
    monkeypatch.setattr(decoding, "BLOCK", 64)  # many blocks: UTF-8 characters cut at their edges
    rng = random.Random(9)
    pieces = [lambda: os.urandom(rng.randrange(1, 50)), lambda: b"hello world " * rng.randrange(1, 20),
              lambda: "h\u00e9llo w\u00f6rld \u2713 \u65e5\u672c".encode() * rng.randrange(1, 10),
              lambda: b"\x01\x02" * rng.randrange(1, 5), lambda: b"\x7f\x80"]
    seen = {True: 0, False: 0}
    for _ in range(3000):
        data = b"".join(rng.choice(pieces)() for _ in range(rng.randrange(1, 12)))
        if len(data) < 4:
            continue
        expected = data if decoding.is_text(data) else None
        seen[expected is not None] += 1
        assert decoding._text_in_blocks(data.hex().encode(), len(data), binascii.unhexlify) == expected
        body = base64.b64encode(data)
        assert decoding._text_in_blocks(body, len(data), binascii.a2b_base64) == expected
    assert min(seen.values()) > 300  # both answers were exercised


def test_runs_found_from_their_signs_are_the_runs_the_run_patterns_find():
    rng = random.Random(5)
    alphabet = [b"a"] * 40 + [b" ", b"\n", b'"', b"'", b"<", b"&", b"=", b"?", b"Z", b"0", b"%41", b"%4", b"%",
                              b"\\", b"\\u0041", b"\\x41", b"\\/", b"\\\\", b'\\"', b"\\n"]
    for _ in range(5000):
        data = b"".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 800)))
        for at, left, run in ((decoding._PCT_AT, decoding._PCT_LEFT, decoding._PCT_RUN),
                              (decoding._ESC_AT, decoding._ESC_LEFT, decoding._ESC_RUN)):
            assert list(decoding._runs_at(data, at, left, run)) == [(m.start(), m.end()) for m in run.finditer(data)]


@pytest.mark.parametrize("masker", [MASKER, KNOWN], ids=["catalogue", "known-secrets"])
@pytest.mark.parametrize("size", [2_000, 150_000, 600_000])
def test_a_secret_at_the_end_of_a_long_encoded_text_is_masked(masker, size):
    """Base64 in 76-character lines (MIME, PEM), base64 in one run, and hex: the secret sits at
    the end of a long text, so neither a sample of the run nor a budget spent on the lines
    before it may stop decoding."""
    rng = random.Random(size)
    text = _prose(size, rng) + b"\nGITHUB_TOKEN=" + GITHUB_PAT.encode() + b"\n"
    one = base64.b64encode(text)
    lines = b"\n".join(one[i:i + 76] for i in range(0, len(one), 76))
    for encoded in (one, lines, text.hex().encode()):
        if len(encoded) > decoding.MAX_RUN:
            continue
        out = masker.mask_bytes(b"attachment: " + encoded + b"\n")
        assert b"[MASKED:" in out, (size, encoded[:20])


def test_a_long_run_whose_start_and_samples_are_binary_is_still_decoded_when_the_whole_is_text():
    """Binary where a sampler would look (the start, a third, two thirds, the end), text in
    between with the secret: the run reads as text as a whole, so it is decoded."""
    rng = random.Random(3)
    n = 40_000
    data = bytearray(_prose(n, rng))
    secret = b"\nGITHUB_TOKEN=" + GITHUB_PAT.encode() + b"\n"
    data[n - 600:n - 600 + len(secret)] = secret
    for at in (0, n // 3 - 40, 2 * n // 3 - 40, n - 340):
        data[at:at + 340] = os.urandom(340)
    data = bytes(data)
    assert decoding.is_text(data)
    assert b"[MASKED:" in MASKER.mask_bytes(b"blob " + base64.b64encode(data))
    assert b"[MASKED:" in MASKER.mask_bytes(b"blob " + data.hex().encode())


def test_random_base64_and_hex_blobs_are_left_as_they_are():
    blob = base64.b64encode(os.urandom(300_000))
    lines = b"\n".join(blob[i:i + 76] for i in range(0, len(blob), 76))
    for masker in (MASKER, KNOWN):
        for body in (blob, lines, os.urandom(200_000).hex().encode()):
            assert masker.mask_bytes(body) == body


def test_json_literals_found_by_quote_search_are_those_the_literal_pattern_finds():
    import json

    import orjson

    from recorder.masking import json_masking

    rng = random.Random(1)
    chars = ["a", '"', "\\", "\\\\", '\\"', "\u00e9", "\n", "\u2028", " ", "x"]

    def text():
        return "".join(rng.choice(chars) for _ in range(rng.randrange(0, 12)))

    for _ in range(3000):
        doc = {text(): [text(), {text(): text()}, 1, None] for _ in range(rng.randrange(1, 5))}
        for raw in (json.dumps(doc).encode(), json.dumps(doc, ensure_ascii=False).encode(), orjson.dumps(doc),
                    json.dumps(doc, indent=1).encode()):
            expected = [(m.start() + 1, m.end() - 1) for m in json_masking._LITERAL.finditer(raw)]
            assert json_masking._literals(raw) == expected


def test_a_short_texts_prefilter_says_whether_an_encoded_keyword_is_there_as_the_form_search_does():
    """Short texts get one prefilter pass that also looks for the keywords' encoded forms; it
    must agree with the search of the forms that long texts get."""
    rng = random.Random(4)
    forms = MASKER._encoded
    seen = {True: 0, False: 0}
    for _ in range(3000):
        text = bytearray(os.urandom(rng.randrange(0, 300)).hex().encode() if rng.random() < 0.3
                         else base64.b64encode(os.urandom(rng.randrange(0, 300))))
        if rng.random() < 0.5:
            at = rng.randrange(0, len(text) + 1)
            text[at:at] = rng.choice(forms)
        text = bytes(text)
        told = MASKER._forms_in(text, MASKER._prefilter(text))
        if len(text) <= 4096:
            assert told is not None
        if told is not None:
            assert told == MASKER.has_encoded_keyword(text)
            seen[told] += 1
    assert min(seen.values()) > 300
