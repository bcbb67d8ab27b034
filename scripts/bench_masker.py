"""Masker throughput on prompt-like text (code and prose with a few secrets), one core.

    .venv/bin/python scripts/bench_masker.py [--mb 4] [--rounds 5]

Reports MB/s for the whole catalogue, recursive decoding on: cold (every text new, nothing
cached), warm (the same texts again: what an agent resending its history costs), streamed (a StreamMasker fed
64 KiB pieces, as a streamed request body is), cold again on texts where some planted
secrets are base64- or hex-encoded (so decoding has work) and, where it is installed,
detect-secrets' scanner on the same corpus as a reference ratio (`pip install detect-secrets`).
"""
from __future__ import annotations

import argparse
import base64
import os
import random
import string
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recorder.masking import Masker, StreamMasker  # noqa: E402


def _rand(alphabet: str, n: int, rng: random.Random) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def corpus(size: int, seed: int = 7, encoded: bool = False) -> list[bytes]:
    """Distinct ~64 KiB texts (so nothing repeats across texts) that add up to `size` bytes.
    `encoded`: some of the planted secrets are base64- or hex-encoded (decoding has work)."""
    rng = random.Random(seed)
    # The masking sources and docs/masking.md are left out: they name every rule's keywords,
    # which no prompt does (that worst case costs about a quarter of the throughput).
    code = "".join(p.read_text() for p in sorted((ROOT / "recorder").rglob("*.py")) if "masking" not in p.parts)
    prose = "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "masking.md")
    base = (code + "\n" + prose).encode()
    alnum = string.ascii_letters + string.digits
    secrets = [
        lambda: "ghp" + "_" + _rand(alnum, 36, rng),
        lambda: "AKIA" + _rand("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16, rng),
        lambda: "postgres://app:" + _rand(alnum, 14, rng) + "@db.internal:5432/app",
        lambda: 'api_key = "' + _rand(alnum, 32, rng) + '"',
        lambda: "sk-" + "proj-" + _rand(alnum, 48, rng),
    ]
    if encoded:  # recursive decoding has to find these (recorder/masking/decoding.py)
        secrets += [
            lambda: base64.b64encode(("GITHUB_TOKEN=ghp" + "_" + _rand(alnum, 36, rng) + "\n").encode()).decode(),
            lambda: ("password=" + _rand(alnum, 20, rng)).encode().hex(),
        ]
    texts = []
    total = 0
    piece = 64 * 1024
    while total < size:
        start = rng.randrange(0, len(base) - piece)
        chunk = bytearray(base[start:start + piece])
        chunk[:0] = f"turn {len(texts)} {rng.random()}\n".encode()  # unique: defeats the cache
        for _ in range(2):
            at = rng.randrange(0, len(chunk))
            chunk[at:at] = (" " + rng.choice(secrets)() + " ").encode()
        texts.append(bytes(chunk))
        total += len(chunk)
    return texts


def rate(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e6


def measure(mb: float, rounds: int) -> dict:
    """The figures as a dict: MB/s cold, warm and streamed, and what was masked."""
    texts = corpus(int(mb * 1e6))
    nbytes = sum(map(len, texts))
    masker = Masker(os.urandom(32))
    best_cold = best_warm = best_stream = float("inf")
    for _ in range(rounds):
        masker.clear_cache()
        t = time.process_time()
        for x in texts:
            masker.mask_bytes(x)
        best_cold = min(best_cold, time.process_time() - t)
        t = time.process_time()
        for x in texts:
            masker.mask_bytes(x)
        best_warm = min(best_warm, time.process_time() - t)
        t = time.process_time()
        s = StreamMasker(masker)
        for x in texts:
            s.feed(x)
        s.finish()
        best_stream = min(best_stream, time.process_time() - t)
    masked = sum(masker.mask_bytes(x).count(b"[MASKED:") for x in texts)
    enc = corpus(int(mb * 1e6), encoded=True)
    best_enc = float("inf")
    for _ in range(rounds):
        masker.clear_cache()
        t = time.process_time()
        for x in enc:
            masker.mask_bytes(x)
        best_enc = min(best_enc, time.process_time() - t)
    return {"texts": texts, "nbytes": nbytes, "masked": masked, "rules": len(masker.rules),
            "cold": rate(nbytes, best_cold), "warm": rate(nbytes, best_warm), "stream": rate(nbytes, best_stream),
            "encoded": rate(sum(map(len, enc)), best_enc)}


def bench(mb: float, rounds: int) -> None:
    r = measure(mb, rounds)
    texts, nbytes = r["texts"], r["nbytes"]
    print(f"corpus: {nbytes / 1e6:.1f} MB in {len(texts)} texts, {r['masked']} secrets masked, {r['rules']} rules")
    print(f"cold (no cache)    {r['cold']:8.1f} MB/s")
    print(f"warm (cache hits)  {r['warm']:8.1f} MB/s")
    print(f"streamed, 64 KiB   {r['stream']:8.1f} MB/s")
    print(f"cold, with encoded {r['encoded']:8.1f} MB/s  (some planted secrets base64/hex: decoding has work)")
    try:
        from detect_secrets.core.scan import scan_line
        from detect_secrets.settings import default_settings
    except ImportError:
        print("detect-secrets: not installed, no reference ratio (pip install detect-secrets)")
        return
    lines = [line for x in texts[: max(1, len(texts) // 8)] for line in x.decode().splitlines()]
    sub = sum(len(line) + 1 for line in lines)
    with default_settings():
        t = time.process_time()
        for line in lines:
            list(scan_line(line))
        ds = time.process_time() - t
    print(f"detect-secrets     {rate(sub, ds):8.1f} MB/s  (masker cold is {r['cold'] / rate(sub, ds):.0f}x)")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=4.0, help="corpus size in MB (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="best of this many rounds (default 3)")
    a = ap.parse_args()
    bench(a.mb, a.rounds)
