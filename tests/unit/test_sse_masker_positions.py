"""The SSE masker finds where a delta's text sits in an event's bytes by counting string
literals (keys and values) in document order. Checked against an independent walk that
lists every string's path, on generated JSON of every shape."""
from __future__ import annotations

import json
import random
import re

import orjson

from recorder.masking.sse_masker import Literals, string_count, string_index, strings_in

_LITERAL = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _paths(obj) -> list:
    """Every string's path in document order: a key is (parent path, ("key", name))."""
    out = []

    def walk(path, v):
        if isinstance(v, str):
            out.append(path)
        elif isinstance(v, dict):
            for k, x in v.items():
                out.append(path + (("key", k),))
                walk(path + (k,), x)
        elif isinstance(v, list):
            for i, x in enumerate(v):
                walk(path + (i,), x)

    walk((), obj)
    return out


def _value(rng, depth):
    kind = rng.randrange(7 if depth < 4 else 4)
    if kind == 0:
        return rng.choice(["", "token ", "a\"b", "back\\slash", "é ü", "\n", "x" * rng.randrange(5)])
    if kind == 1:
        return rng.randrange(-5, 1000)
    if kind == 2:
        return rng.choice([None, True, False, 1.5])
    if kind == 3:
        return "s%d" % rng.randrange(100)
    if kind in (4, 5):
        return {rng.choice(["content", "delta", "text", "k\"q", "i%d" % rng.randrange(9)]) + str(j): _value(rng, depth + 1)
                for j in range(rng.randrange(4))}
    return [_value(rng, depth + 1) for _ in range(rng.randrange(4))]


def test_positions_of_every_string_match_an_independent_walk():
    rng = random.Random(5)
    checked = 0
    for _ in range(3000):
        obj = {"choices": [_value(rng, 1)], "x": _value(rng, 0)}
        for data in (orjson.dumps(obj), json.dumps(obj, indent=rng.choice([None, 1])).encode()):
            parsed = orjson.loads(data)
            literals = Literals(data)
            spans = [(m.start() + 1, m.end() - 1) for m in _LITERAL.finditer(data)]
            assert literals.count == len(spans)
            assert [literals[i] for i in range(literals.count)] == spans
            paths = _paths(parsed)
            assert string_count(parsed) == strings_in(parsed, literals) == len(paths) == len(spans)
            for i, path in enumerate(paths):
                if path and isinstance(path[-1], tuple):
                    continue  # a key: never a delta
                assert string_index(parsed, path) == i
                s, e = literals[i]
                assert json.loads(b'"' + data[s:e] + b'"') == _get(parsed, path)
                checked += 1
    assert checked > 5000


def test_duplicate_keys_are_told_by_the_count():
    for data in (b'{"choices":[{"delta":{"content":"A","content":"B"}}]}',
                 b'{"choices":[{"delta":{"content":"A\\n","content":"B"}}]}'):
        literals = Literals(data)
        assert strings_in(orjson.loads(data), literals) != literals.count


def _get(obj, path):
    for p in path:
        obj = obj[p]
    return obj
