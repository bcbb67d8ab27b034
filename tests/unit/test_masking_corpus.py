"""Recall and false positives per rule family, on the corpus of tests/unit/masking_corpus.py.

A true positive counts as found when no byte run of its secret longer than 3 survives and a
tag stands in its place; streams (carrier "sse") are fed a few characters per event in
randomly cut chunks. A negative sample counts as a false positive of a family when a rule
of that family masks anything in it. The test prints the table, fails under 99% recall or
over 1% false positives in any family, and keeps docs/masking.md's table in step.
"""
from __future__ import annotations

import random
import re
from collections import defaultdict
from pathlib import Path

import orjson

from recorder.masking import Masker, SseMasker
from recorder.masking.catalogue import RULES
from tests.unit import masking_corpus as corpus

ROOT = Path(__file__).resolve().parents[2]
TAG = re.compile(r"\[MASKED:([a-z0-9-]+):[0-9a-f]{8}\]")
GROUP = {r["id"]: r["group"] for r in RULES}
GROUP["credential"] = "Known"


def _sse(masker, text: str, rng: random.Random) -> str:
    events, i = [], 0
    while i < len(text):
        n = rng.randint(1, 4)
        events.append(b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": text[i:i + n]}}]}) + b"\n\n")
        i += n
    raw = b"".join(events) + b"data: [DONE]\n\n"
    cuts = sorted(rng.sample(range(1, len(raw)), min(len(raw) - 1, 25)))
    m = SseMasker(masker)
    out = b"".join(m.feed(raw[a:b]) for a, b in zip([0] + cuts, cuts + [len(raw)])) + m.finish()
    return "".join(orjson.loads(line[6:])["choices"][0]["delta"]["content"]
                   for line in out.split(b"\n\n") if line.startswith(b"data: {"))


def _found(secret: str, out: str) -> bool:
    if "[MASKED:" not in out:
        return False
    out = TAG.sub("\0", out)  # a tag names its rule (github-fine-grained-pat), not the secret
    core = re.sub(r"-----(?:BEGIN|END)[A-Z ]*-----", "\0", secret)
    return not any(part[i:i + 4] in out for part in core.split("\0") for i in range(len(part) - 3))


def measure():
    tps = corpus.true_positives()
    known = sorted({s for fam, _, _, s, _ in tps if fam == "Known"})
    masker = Masker(b"m" * 32, known_secrets=known)
    rng = random.Random(5)
    tp_total, tp_found, misses = defaultdict(int), defaultdict(int), defaultdict(list)
    for family, rule, carrier, secret, text in tps:
        out = _sse(masker, text, rng) if carrier == "sse" else \
            masker.mask_body(text.encode(), "application/json").decode("utf-8", "replace")
        tp_total[family] += 1
        if _found(secret, out):
            tp_found[family] += 1
        else:
            misses[family].append((rule, carrier, text[:120]))
    negs = corpus.true_negatives()
    fp = defaultdict(int)
    fp_examples = defaultdict(list)
    for kind, text in negs:
        out = masker.mask_body(text.encode(), "application/json").decode("utf-8", "replace")
        before = TAG.findall(text)  # a tag already in the text (docs quote one) is not the masker's
        fams = {GROUP.get(rule, "Custom") for rule in TAG.findall(out) if rule not in before}
        for fam in fams:
            fp[fam] += 1
            fp_examples[fam].append((kind, re.findall(r".{0,40}\[MASKED:[^\]]+\].{0,10}", out)[:2]))
    return tp_total, tp_found, misses, len(negs), fp, fp_examples


def table(tp_total, tp_found, n_neg, fp) -> str:
    rows = ["| Family | True positives | Recall | Negatives | False positives |", "|---|---|---|---|---|"]
    for fam in corpus.FAMILIES:
        rows.append(f"| {fam} | {tp_total[fam]} | {100 * tp_found[fam] / tp_total[fam]:.1f}% | {n_neg} | "
                    f"{100 * fp[fam] / n_neg:.2f}% |")
    total, found = sum(tp_total.values()), sum(tp_found.values())
    any_fp = sum(fp.values())
    rows.append(f"| all | {total} | {100 * found / total:.1f}% | {n_neg} | {100 * any_fp / n_neg:.2f}% |")
    return "\n".join(rows) + "\n"


def test_recall_and_false_positives_per_family():
    tp_total, tp_found, misses, n_neg, fp, fp_examples = measure()
    figures = table(tp_total, tp_found, n_neg, fp)
    print("\n" + figures)
    for fam in corpus.FAMILIES:
        assert tp_total[fam] >= 40, fam
        recall = tp_found[fam] / tp_total[fam]
        assert recall >= 0.99, f"{fam}: recall {recall:.3f}; missed: {misses[fam][:8]}"
        assert fp[fam] / n_neg <= 0.01, f"{fam}: false positives {fp[fam]}/{n_neg}: {fp_examples[fam][:6]}"
    assert set(corpus.RULES) == set(GROUP) - {"credential"}, "every rule of the catalogue has true positives"
    doc = (ROOT / "docs" / "masking.md").read_text()
    m = re.search(r"<!-- corpus:begin -->\n(.*?)<!-- corpus:end -->", doc, re.S)
    assert m, "docs/masking.md lost its corpus markers"
    assert m.group(1) == figures, "update the corpus table in docs/masking.md:\n" + figures
