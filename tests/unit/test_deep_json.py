"""JSON too deep to mask value by value is masked as text and says so; records the writer
cannot encode are repaired; nothing reaches a recursion limit (recorder/http/json_depth.py,
recorder/masking/json_masking.py, recorder/store/record_repair.py)."""
from __future__ import annotations

import orjson
import pytest

from recorder.http import json_depth
from recorder.masking import Masker
from recorder.store.bodies import BodyBytes, BodyStream, ChunkBytes, render_buffered, render_chunk
from recorder.store.record_repair import repair
from tests.unit.masking_fakes import OPENAI_KEY

MASKER = Masker(b"d" * 32)


def nested(depth: int, leaf: dict) -> bytes:
    return b'{"a": ' * depth + orjson.dumps(leaf) + b"}" * depth


@pytest.mark.parametrize("depth", [150, 300, 2000, 50_000])
def test_a_deep_json_body_is_masked_as_text_with_a_marker(depth):
    body = nested(depth, {"api_key": OPENAI_KEY})
    rendered = render_buffered(BodyBytes(body, masker=MASKER, content_type="application/json"))
    text = rendered["text"].encode()
    assert OPENAI_KEY.encode() not in text and b"[MASKED:" in text
    if depth > json_depth.MAX_DEPTH:
        assert rendered["masked_as"] == "text" and "nested deeper than 200 levels" in rendered["note"]
        assert text.count(b'{"a": ') == depth  # the document, masked in place
    else:  # shallow enough: masked value by value, as any JSON body
        assert "masked_as" not in rendered
        assert orjson.loads(text) is not None


def test_a_deep_sse_event_is_masked_as_text_and_its_batch_says_so():
    deep = b"data: " + nested(300, {"api_key": OPENAI_KEY}) + b"\n\n"
    events = [b'data: {"i": 0}\n\n', deep, b'data: {"i": 2}\n\n']
    st = BodyStream(masker=MASKER, content_type="text/event-stream")
    out = [render_chunk(ChunkBytes(ev, st)) for ev in events] + [render_chunk(ChunkBytes(b"", st, final=True))]
    text = b"".join(r["text"].encode() for r in out)
    assert OPENAI_KEY.encode() not in text and text.count(b"data: ") == 3
    marked = [r for r in out if r.get("masked_as")]
    assert len(marked) == 1 and "event's JSON" in marked[0]["note"]


def test_depth_is_checked_without_recursion():
    deep = b"[" * 100_000 + b"]" * 100_000
    assert json_depth.loads(deep) is None  # too deep: not JSON to the tools, shown as text
    assert json_depth.loads(nested(199, {"k": 1}))["a"]["a"] is not None
    assert json_depth.loads(nested(250, {"k": 1})) is None
    assert json_depth.loads(b"not json") is None
    assert json_depth.loads(b'{"big": 123456789012345678901234567890}') == {"big": 123456789012345678901234567890}


def test_repair_makes_any_value_encodable_without_recursion():
    odd = b"\xff\xfe".decode("utf-8", "surrogateescape")
    value = {"h": [["x", odd]], 7: "seven", "n": 1 << 80, "o": object()}
    deep: list = []
    cur = deep
    for _ in range(5000):
        cur.append([])
        cur = cur[0]
    value["deep"] = deep
    fixed, changes = repair(value)
    orjson.dumps(fixed)
    assert fixed["h"] == [["x", "\\xff\\xfe"]] and fixed["7"] == "seven" and fixed["n"] == str(1 << 80)
    assert set(changes) == {"invalid Unicode kept as \\x escapes", "non-string key", "integer too large",
                            "object value", "structure too deep"}
