"""Masker throughput on prompt-like text (code and prose with a few secrets), one core.

    .venv/bin/python scripts/bench_masker.py [--mb 4] [--rounds 5]
    .venv/bin/python scripts/bench_masker.py --bodies [--rounds 9] [--tree DIR]

Reports MB/s for the whole catalogue, recursive decoding on: cold (every text new, nothing
cached), warm (the same texts again: what an agent resending its history costs), streamed (a StreamMasker fed
64 KiB pieces, as a streamed request body is), cold again on texts where some planted
secrets are base64- or hex-encoded (so decoding has work) and, where it is installed,
detect-secrets' scanner on the same corpus as a reference ratio (`pip install detect-secrets`).

--bodies: milliseconds of CPU to mask one large body of each kind (1 MiB of hex, of base64,
of text, of JSON, ...) and a batch of small JSON replies, through `mask_body` as the writer
does, cache cleared before each; median of the rounds; with the catalogue alone and with two
known secrets added (the gateway always has its credentials as known secrets). `--tree DIR` imports the masker from
another checkout (an older commit, `git archive <commit> recorder | tar -x -C DIR`) to compare.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import random
import statistics
import string
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = ROOT
if "--tree" in sys.argv[:-1]:  # before the import below: the masker of another checkout
    TREE = Path(sys.argv[sys.argv.index("--tree") + 1]).resolve()
sys.path.insert(0, str(TREE))

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


MIB = 1 << 20


def bodies(seed: int = 11) -> list[tuple[str, str, list[bytes]]]:
    """(name, content type, bodies) of the large-body benchmark: each kind 1 MiB in all."""
    rng = random.Random(seed)
    noise = rng.randbytes(MIB)
    code = "".join(p.read_text() for p in sorted((ROOT / "recorder").rglob("*.py")) if "masking" not in p.parts)
    prose = "".join(p.read_text() for p in sorted((ROOT / "docs").glob("*.md")) if p.name != "masking.md")
    text = ((code + "\n" + prose) * 4).encode()[:MIB]
    text = text[:MIB // 2] + b' api_key = "' + "".join(rng.choice(string.ascii_letters) for _ in range(32)).encode() \
        + b'" ' + text[MIB // 2:]
    text = text[:MIB]
    b64 = base64.b64encode(noise)[:MIB]
    lines = b"\n".join(b64[i:i + 76] for i in range(0, MIB, 77))[:MIB]
    messages, size = [], 0
    while size < MIB - 2048:
        at = rng.randrange(0, len(text) - 4096)
        content = text[at:at + rng.randrange(256, 4096)].decode("utf-8", "replace")
        messages.append({"role": rng.choice(["user", "assistant"]), "content": content})
        size += len(content) + 40
    chat = json.dumps({"model": "m", "messages": messages}).encode()
    image = json.dumps({"model": "m", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is in this picture?"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64," + b64[:MIB - 200].decode()}}]}]}).encode()
    small = []
    for i in range(1000):
        at = rng.randrange(0, len(text) - 1024)
        small.append(json.dumps({"id": f"chatcmpl-{rng.getrandbits(64):x}", "object": "chat.completion",
                                 "choices": [{"index": 0, "message": {"role": "assistant", "content": text[
                                     at:at + rng.randrange(200, 900)].decode("utf-8", "replace")}}],
                                 "usage": {"prompt_tokens": i, "completion_tokens": 7}}).encode())
    return [
        ("hex, 1 MiB (random bytes)", "application/octet-stream", [noise.hex().encode()[:MIB]]),
        ("base64, 1 MiB, one run", "application/octet-stream", [b64]),
        ("base64, 1 MiB, 76-char lines", "text/plain", [lines]),
        ("text, 1 MiB (code and docs)", "text/plain", [text]),
        ("JSON chat, 1 MiB", "application/json", [chat]),
        ("JSON with a base64 image, 1 MiB", "application/json", [image]),
        ("1000 small JSON replies (%d KiB)" % (sum(map(len, small)) // 1024), "application/json", small),
    ]


def measure_bodies(rounds: int) -> list[tuple[str, int, float, float]]:
    """(name, bytes, median ms of CPU, the same with known secrets) for each kind of bodies().
    Known secrets (the gateway's credentials, as it always has) make every base64/hex run
    worth decoding: nothing shows where they sit."""
    rng = random.Random(5)
    known = ["sk-" + "".join(rng.choice(string.ascii_letters) for _ in range(40)) for _ in range(2)]
    maskers = [Masker(os.urandom(32)), Masker(os.urandom(32), known_secrets=known)]
    out = []
    for name, ctype, items in bodies():
        times: list[list[float]] = [[], []]
        for _ in range(rounds):
            for masker, got in zip(maskers, times):  # interleaved
                masker.clear_cache()
                t = time.process_time()
                for x in items:
                    masker.mask_body(x, ctype)
                got.append(time.process_time() - t)
        out.append((name, sum(map(len, items)), statistics.median(times[0]) * 1e3, statistics.median(times[1]) * 1e3))
    return out


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
    ap.add_argument("--rounds", type=int, default=3, help="best (--bodies: median) of this many rounds (default 3)")
    ap.add_argument("--bodies", action="store_true", help="ms to mask large bodies of each kind, and small ones")
    ap.add_argument("--tree", help="import the masker from this checkout instead (compare with an older commit)")
    a = ap.parse_args()
    if a.bodies:
        print(f"masker from {TREE}; ms of CPU per body kind, median of {a.rounds}")
        print(f"{'':38} {'catalogue':>10} {'+ known secrets':>16}")
        for name, nbytes, ms, known_ms in measure_bodies(a.rounds):
            print(f"{name:38} {ms:7.1f} ms {known_ms:13.1f} ms")
    else:
        bench(a.mb, a.rounds)
