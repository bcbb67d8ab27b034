"""The cases of issue 18, each as it was reproduced against the code before the fix (the
wire-level ones also run end to end in tests/e2e/test_masking_e2e.py)."""
from __future__ import annotations

import base64
import gzip
import json
import re
import subprocess
import urllib.parse
import zlib
from pathlib import Path

import brotli
import orjson
import pytest

from recorder.masking import Masker, SseMasker
from recorder.masking.headers import recordable_headers
from recorder.store.bodies import BodyBytes, BodyStream, ChunkBytes, render_buffered, render_chunk
from tests.unit.masking_fakes import ALNUM, GITHUB_PAT, PASSWORD, j, rnd

MASKER = Masker(b"c" * 32)
TAG = re.compile(rb"\[MASKED:[a-z0-9-]+:[0-9a-f]{8}\]")
VECTORS = Path(__file__).resolve().parents[1] / "vectors"
API_KEY = rnd(ALNUM, 32)  # no provider prefix: only the assignment says it is a secret


def tag_of(rule: str, secret: str) -> bytes:
    from recorder.masking import mask_tag

    return mask_tag(rule, secret.encode(), b"c" * 32).encode()


# -- 1. an assignment inside a JSON document that is itself a JSON string -------------------------

def test_1_secret_assignment_inside_json_in_json_is_masked_and_nothing_else_changes():
    inner = json.dumps({"path": ".env", "content": f'API_KEY="{API_KEY}"\nDEBUG=1\n'})
    body = json.dumps({"role": "tool", "content": inner}).encode()
    assert b'API_KEY=\\\\\\"' in body  # the quotes are escaped twice on the wire
    out = MASKER.mask_body(body, "application/json")
    assert API_KEY.encode() not in out
    assert out == body.replace(API_KEY.encode(), tag_of("generic-secret", API_KEY))
    # Three levels deep (a tool result inside a tool result) and in plain text as well.
    deeper = json.dumps({"messages": [{"content": json.dumps({"result": inner})}]}).encode()
    assert API_KEY.encode() not in MASKER.mask_body(deeper, "application/json")
    assert API_KEY.encode() not in MASKER.mask_bytes(deeper)


# -- 2. a database URL's password spelled one character per SSE event ------------------------------

def _events(fmt: str, text: str) -> bytes:
    out = []
    for ch in text:
        if fmt == "openai":
            out.append(b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": ch}}]}) + b"\n\n")
        else:
            out.append(b"event: content_block_delta\ndata: " + orjson.dumps(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ch}}) + b"\n\n")
    end = (b'data: {"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n' if fmt == "openai"
           else b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n'
                b'event: message_stop\ndata: {"type":"message_stop"}\n\n')
    return b"".join(out) + end


@pytest.mark.parametrize("fmt", ["openai", "anthropic"])
def test_2_database_url_one_character_per_event(fmt):
    text = f"use postgres://app:{PASSWORD}@db.internal:5432/app now"
    raw = _events(fmt, text)
    for step in (1, 3, 40, len(raw)):
        m = SseMasker(MASKER)
        out = b"".join(m.feed(raw[i:i + step]) for i in range(0, len(raw), step)) + m.finish()
        assert PASSWORD.encode() not in out
        assert out.count(b"\n\n") == raw.count(b"\n\n")  # no event added or lost
        deltas = [json.loads(line[6:]) for line in out.split(b"\n") if line.startswith(b"data: {")]
        got = "".join(d["choices"][0]["delta"].get("content", "") if fmt == "openai" else d.get("delta", {}).get("text", "")
                      for d in deltas)
        assert got == MASKER.mask_text(text)


# -- 3. a secret in a header name ------------------------------------------------------------------

def test_3_secret_in_a_header_name():
    out = recordable_headers([("x-" + GITHUB_PAT, "1"), ("X-Request-Id", "req_01"), ("Accept", "*/*")],
                             b"h" * 32, masker=MASKER)
    assert out[0] == ["x-" + tag_of("github-pat", GITHUB_PAT).decode(), "1"]
    assert out[1:] == [["X-Request-Id", "req_01"], ["Accept", "*/*"]]


# -- 4. raw deflate, stacked codings, compress; what cannot be decoded -------------------------------

BODY = json.dumps({"env": f"GITHUB_TOKEN={GITHUB_PAT}", "pad": "y" * 300}).encode()


def _raw_deflate(data: bytes) -> bytes:
    co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return co.compress(data) + co.flush()


ENCODED = {
    "deflate": _raw_deflate(BODY),  # as some servers send it: no zlib header
    "gzip, gzip": gzip.compress(gzip.compress(BODY)),
    "gzip, br": brotli.compress(gzip.compress(BODY)),
    "deflate, gzip": gzip.compress(zlib.compress(BODY)),
}


@pytest.mark.parametrize("coding", list(ENCODED))
def test_4_raw_deflate_and_stacked_codings_are_decoded_then_masked(coding):
    wire = ENCODED[coding]
    r = render_buffered(BodyBytes(wire, coding, masker=MASKER, content_type="application/json"))
    assert r.get("decoded") is not False and "text" in r
    assert r["text"].encode() == BODY.replace(GITHUB_PAT.encode(), tag_of("github-pat", GITHUB_PAT))
    st = BodyStream(coding, masker=MASKER, content_type="application/json")
    parts = [render_chunk(ChunkBytes(wire[i:i + 7], st)) for i in range(0, len(wire), 7)]
    parts.append(render_chunk(ChunkBytes(b"", st, final=True)))
    streamed = "".join(p["text"] for p in parts if p).encode()
    assert streamed == r["text"].encode() and not any(p.get("decoded") is False for p in parts if p)


def test_4_compress_lzw_is_decoded():
    from recorder.http.content_decoding import unlzw

    wire = (VECTORS / "compress-lzw.Z").read_bytes()
    data = unlzw(wire)
    assert b"the token is ghp_" in data and len(data) == 252244
    try:  # the reference: gzip undoes compress too
        ref = subprocess.run(["gzip", "-dc"], input=wire, capture_output=True, timeout=60).stdout
    except FileNotFoundError:  # pragma: no cover
        ref = data
    assert data == ref
    r = render_buffered(BodyBytes(wire, "x-compress", masker=MASKER))
    assert r.get("decoded") is not False and "[MASKED:" in base64.b64decode(r["b64"]).decode("latin-1")


def test_4_a_body_that_cannot_be_decoded_keeps_its_secrets_masked_in_the_raw_bytes():
    # Labelled gzip but plain (a misconfigured server), or a coding without a decoder: the wire
    # bytes are stored, masked as bytes, and say they were not decoded.
    for coding in ("gzip", "aes128gcm"):
        r = render_buffered(BodyBytes(b"plain " + GITHUB_PAT.encode(), coding, masker=MASKER))
        assert r["decoded"] is False and GITHUB_PAT not in r["text"] and "[MASKED:github-pat:" in r["text"]


# -- 5. encoded secrets ---------------------------------------------------------------------------

def test_5_base64_hex_percent_and_escaped_secrets_are_masked_in_place():
    line = f"export GITHUB_TOKEN={GITHUB_PAT}\n".encode()
    b64 = base64.b64encode(line)
    out = MASKER.mask_bytes(b"config: " + b64 + b" end")
    assert GITHUB_PAT.encode() not in base64.b64decode(TAG.sub(b"", out[8:-4]) + b"==", validate=False)
    head, tag, tail = re.split(rb"(\[MASKED:[^\]]+\])", out[8:-4])
    assert tag == tag_of("github-pat", GITHUB_PAT)  # the tag of the secret itself
    assert base64.b64decode(head).startswith(b"export GITHUB_TOKE")  # what is left still decodes
    assert MASKER.mask_bytes(line.hex().encode()).count(b"[MASKED:github-pat:") == 1
    url = "https://example.com/cb?next=" + urllib.parse.quote(f"postgres://app:{PASSWORD}@db/x", safe="")
    out = MASKER.mask_text(url)
    assert PASSWORD not in out and urllib.parse.quote(PASSWORD, safe="") not in out and "[MASKED:url-password:" in out
    escaped = '{"cmd": "echo \\u0067hp_' + GITHUB_PAT[4:] + '"}'
    assert GITHUB_PAT[4:] not in MASKER.mask_text(escaped)
    urlsafe = base64.urlsafe_b64encode(b"key: " + j("sk-", "ant-", "api03-", rnd(ALNUM + "_-", 60)).encode())
    assert b"[MASKED:anthropic:" in MASKER.mask_bytes(b"x " + urlsafe)


def test_5_nested_encodings_up_to_the_depth_limit():
    from recorder.masking.decoding import MAX_DEPTH

    payload = f"token={GITHUB_PAT}".encode()
    levels = [payload]
    for k in range(MAX_DEPTH + 1):  # base64, then hex of that, hex of that...
        levels.append(base64.b64encode(levels[-1]) if k == 0 else levels[-1].hex().encode())
    for depth in range(1, MAX_DEPTH + 1):
        assert b"[MASKED:" in MASKER.mask_bytes(b"blob " + levels[depth]), depth
    # One more level than the limit is not looked into (docs/masking.md says so).
    assert b"[MASKED:" not in MASKER.mask_bytes(b"blob " + levels[MAX_DEPTH + 1])


def test_5_binary_runs_are_not_decoded_and_cost_is_bounded():
    import os
    import time

    from recorder.masking import decoding

    image = base64.b64encode(b"\x89PNG\r\n\x1a\n" + os.urandom(300_000)).decode()
    body = json.dumps({"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": image}})
    assert MASKER.mask_body(body.encode(), "application/json") == body.encode()
    assert list(decoding.runs(image.encode())) == []
    # A body of nothing but encoded text: decoding stops when its budget is spent.
    text = base64.b64encode(b"password=" + b"Zz9" * 50_000)
    t = time.process_time()
    MASKER.mask_bytes(text)
    assert time.process_time() - t < 5


# -- 6. non-JSON SSE (the MCP HTTP+SSE transport): faithful, prompt, CRLF -------------------------

@pytest.mark.parametrize("eol", [b"\n", b"\r\n"])
def test_6_mcp_sse_stream_is_recorded_as_it_crossed(eol):
    session = "0f3a9c" + "d8f" * 5
    events = [b"event: endpoint" + eol + b"data: /messages/?session_id=" + session.encode() + eol + eol,
              b"event: message" + eol + b'data: {"jsonrpc":"2.0","id":0,"result":{"protocolVersion":"2024-11-05"}}' + eol + eol,
              b"event: message" + eol + b'data: {"jsonrpc":"2.0","id":1,"result":{"content":[{"type":"text","text":'
              b'"cat .env\\nGITHUB_TOKEN=' + GITHUB_PAT.encode() + b'"}]}}' + eol + eol,
              b"event: message" + eol + b'data: {"jsonrpc":"2.0","method":"notifications/progress"}' + eol + eol]
    raw = b"".join(events)
    m = SseMasker(MASKER)
    first = m.feed(events[0], 0.0)
    # The endpoint event is on the record at once, or within the time bound: never at the end.
    first += m.feed(b"", 0.2)
    assert first == events[0]
    out = first + b"".join(m.feed(e, 0.3 + i) for i, e in enumerate(events[1:])) + m.finish()
    assert out == raw.replace(GITHUB_PAT.encode(), tag_of("github-pat", GITHUB_PAT))


# -- 7. replay prints no secret, and a masked span is not a difference -----------------------------

def test_7_replay_masks_the_live_reply_and_reports_masked_spans():
    from recorder.forensics.replay import first_difference

    recorded = json.dumps({"token": MASKER.mask_text(GITHUB_PAT), "db": "postgres://app:[MASKED:url-password:0a1b2c3d]@db/x",
                           "text": "same"}).encode()
    live = json.dumps({"token": GITHUB_PAT, "db": f"postgres://app:{PASSWORD}@db/x", "text": "same"}).encode()
    masked = [0]
    assert first_difference(200, 200, recorded, live, "application/json", "application/json", masked=masked) is None
    assert masked[0] == 2
    # A real difference elsewhere is reported, and what it prints is masked.
    live2 = json.dumps({"token": GITHUB_PAT, "db": "x", "text": f"other {GITHUB_PAT}"}).encode()
    diff = first_difference(200, 200, recorded, live2, "application/json", "application/json")
    assert diff and GITHUB_PAT not in diff and PASSWORD not in diff
    sse_rec = b"data: " + json.dumps({"t": "[MASKED:github-pat:0a1b2c3d]"}).encode() + b"\n\n"
    sse_live = b"data: " + json.dumps({"t": GITHUB_PAT}).encode() + b"\n\n"
    masked = [0]
    assert first_difference(200, 200, sse_rec, sse_live, "text/event-stream", "text/event-stream", masked=masked) is None
    assert masked[0] == 1
