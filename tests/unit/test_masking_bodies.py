"""Masking in context: JSON bodies (escaped strings, tool results, PEM blocks), headers,
known secrets in every encoding, and the writer-thread render path in recorder/store/bodies.py."""
from __future__ import annotations

import base64
import gzip
import json
import urllib.parse

import orjson

from recorder.masking import Masker
from recorder.masking.headers import recordable_headers
from recorder.store.bodies import BodyBytes, BodyStream, ChunkBytes, render_buffered, render_chunk
from tests.unit.masking_fakes import AWS_SECRET, GITHUB_PAT, OPENAI_KEY, PASSWORD, j, pem

UPSTREAM = j("sk-", "proj-", "UpStreamKeyOfTheGateway0123456789abcdefXYZ")
SIGNING = j("gw-signing-", "9f8e7d6c5b4a39281706")
MASKER = Masker(b"b" * 32, known_secrets=[UPSTREAM, SIGNING])


def chat_request(*messages) -> bytes:
    return orjson.dumps({"model": "gpt-4o", "messages": [{"role": r, "content": c} for r, c in messages]})


# -- JSON ------------------------------------------------------------------------------------

def test_pem_block_inside_json_string_is_masked():
    key = pem("RSA PRIVATE KEY", lines=10)
    body = chat_request(("user", f"please check this key:\n{key}\nthanks"))
    assert b"\\n" in body  # the PEM's line breaks are JSON escapes on the wire
    out = MASKER.mask_body(body, "application/json")
    msg = orjson.loads(out)["messages"][0]["content"]
    assert msg.startswith("please check this key:\n[MASKED:private-key:") and msg.endswith("\nthanks")
    for line in key.split("\n")[1:-1]:
        assert line.encode() not in out


def test_json_inside_a_json_string_tool_result():
    # A tool result that is itself JSON text (escaped twice on the wire).
    result = json.dumps({"env": {"AWS_SECRET_ACCESS_KEY": AWS_SECRET, "GITHUB_TOKEN": GITHUB_PAT},
                         "key_file": pem("EC PRIVATE KEY", lines=3)})
    body = orjson.dumps({"messages": [
        {"role": "assistant", "tool_calls": [{"id": "t1", "function": {"name": "env", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "t1", "content": result}]})
    out = MASKER.mask_body(body, "application/json")
    for s in (AWS_SECRET, GITHUB_PAT):
        assert s.encode() not in out
    content = orjson.loads(out)["messages"][1]["content"]
    assert "[MASKED:aws-secret-access-key:" in content and "[MASKED:github-pat:" in content
    assert "[MASKED:private-key:" in content


def test_key_gives_context_to_its_value():
    body = orjson.dumps({"aws_secret_access_key": AWS_SECRET, "db": {"password": PASSWORD}})
    out = orjson.loads(MASKER.mask_body(body, "application/json"))
    assert out["aws_secret_access_key"].startswith("[MASKED:aws-secret-access-key:")
    assert out["db"]["password"].startswith("[MASKED:generic-secret:")


def test_json_without_secrets_is_kept_byte_for_byte():
    body = b'{ "model" : "gpt-4o",\n  "temperature": 0.70, "messages": [] }'
    assert MASKER.mask_body(body, "application/json") is body


def test_not_json_falls_back_to_text():
    body = f"{{not json: {GITHUB_PAT}".encode()
    out = MASKER.mask_body(body, "application/json")
    assert GITHUB_PAT.encode() not in out and out.startswith(b"{not json: [MASKED:github-pat:")


def test_history_resent_hits_the_cache():
    m = Masker(b"c" * 32)
    # Text that names a keyword ("token"), so the engine has work to skip; strings that name
    # none are skipped before the cache (test_json_masking_skips_strings_without_keywords).
    history = [("user", f"turn {i}: " + "some long prompt text about the token " * 20) for i in range(30)]
    m.mask_body(chat_request(*history), "application/json")
    hits_before = m.cache_stats[0]
    m.mask_body(chat_request(*history, ("user", "one more")), "application/json")
    assert m.cache_stats[0] - hits_before >= 30


def test_json_masking_skips_strings_without_keywords():
    m = Masker(b"c" * 32)
    body = chat_request(*[("user", f"turn {i}: plain words only " * 10) for i in range(20)])
    calls = []
    real = m.spans
    m.spans = lambda data, context=b"": calls.append(data) or real(data, context)
    assert m.mask_body(body, "application/json") == body
    assert calls == []  # no rule keyword anywhere in the document: no string reaches the engine
    secret_body = chat_request(("user", "plain words"), ("user", "token: " + GITHUB_PAT))
    assert GITHUB_PAT.encode() not in m.mask_body(secret_body, "application/json")
    assert len(calls) == 1  # only the string that names a keyword


def test_json_masking_sees_keywords_behind_escapes():
    m = Masker(b"c" * 32)
    # "ghp_" spelled with \u escapes, and a keyword with quotes escaped inside a JSON string.
    hidden = GITHUB_PAT.replace("ghp_", "\\u0067\\u0068\\u0070_")
    body = ('{"messages": [{"content": "' + hidden + '"}]}').encode()
    assert b"[MASKED:github-pat" in m.mask_body(body, "application/json")


# -- known secrets ------------------------------------------------------------------------------

def test_known_secrets_raw_base64_and_url_encoded():
    b64 = base64.b64encode(f"Authorization: Bearer {UPSTREAM}".encode()).decode()
    b64_basic = base64.b64encode(f"user:{SIGNING}".encode()).decode()
    urlenc = urllib.parse.quote(f"key={UPSTREAM}&sig={SIGNING}/x", safe="")
    text = f"raw {UPSTREAM} | b64 {b64} | basic {b64_basic} | url {urlenc} | urlsafe " \
           f"{base64.urlsafe_b64encode(SIGNING.encode()).decode()}"
    out = MASKER.mask_text(text)
    assert UPSTREAM not in out and SIGNING not in out
    for form in (base64.b64encode(UPSTREAM.encode()).decode()[4:-4],):
        assert form not in out
    assert "raw [MASKED:credential:" in out
    assert out.count("[MASKED:credential:") >= 5
    # all forms of one secret share its tag
    tag = MASKER.mask_text(UPSTREAM)
    assert out.count(tag) >= 2


def test_known_secrets_too_short_are_ignored():
    m = Masker(b"x" * 32, known_secrets=["short", "", "  "])
    assert m.mask_text("a short word") == "a short word"


# -- headers ------------------------------------------------------------------------------------

def test_headers():
    items = [("Authorization", f"Bearer {OPENAI_KEY}"), ("X-Api-Key", "client-key"),
             ("X-Debug", f"token={GITHUB_PAT}"), ("Referer", f"https://bob:{PASSWORD}@example.com/"),
             ("Content-Type", "application/json")]
    out = recordable_headers(items, b"h" * 32, injected={"authorization": "openai"}, masker=MASKER)
    assert out[0] == ["Authorization", "[credential:openai]"]
    assert out[1][1].startswith("[MASKED:x-api-key:")
    assert out[2][1].startswith("token=[MASKED:github-pat:")
    assert PASSWORD not in out[3][1]
    assert out[4] == ["Content-Type", "application/json"]
    # without a masker, the old behaviour: credential headers masked, others as they are
    plain = recordable_headers(items, b"h" * 32)
    assert plain[0][1].startswith("[MASKED:authorization:") and plain[2][1] == f"token={GITHUB_PAT}"


# -- the writer-thread render path ------------------------------------------------------------

def test_render_buffered_masks_text_json_and_gzip():
    body = chat_request(("user", f"my token {GITHUB_PAT}"))
    r = render_buffered(BodyBytes(gzip.compress(body), "gzip", masker=MASKER, content_type="application/json"))
    assert "[MASKED:github-pat:" in r["text"] and GITHUB_PAT not in r["text"]
    assert r["size"] == len(body) and r["encoding"] == "gzip"
    unmasked = render_buffered(BodyBytes(body))
    assert GITHUB_PAT in unmasked["text"]


def test_render_buffered_binary_body_is_masked_as_bytes():
    data = b"\x89PNG\r\n\x1a\n\x00\xff" + GITHUB_PAT.encode() + b"\x00\xfe"
    r = render_buffered(BodyBytes(data, masker=MASKER))
    stored = base64.b64decode(r["b64"])
    assert GITHUB_PAT.encode() not in stored and b"[MASKED:github-pat:" in stored
    assert r["size"] == len(data)


def test_render_buffered_masks_before_the_cut():
    data = f"{'x' * 20} {GITHUB_PAT} tail".encode()
    r = render_buffered(BodyBytes(data, max_body=40, masker=MASKER))
    assert r["truncated"] and "ghp_" not in r["text"] and r["text"].startswith("x" * 20 + " [MASKED:")


def test_render_chunk_sse_split_one_char_per_chunk():
    events = b"".join(b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": ch}}]}) + b"\n\n"
                      for ch in f"here: {GITHUB_PAT} ok") + b"data: [DONE]\n\n"
    st = BodyStream(masker=MASKER, content_type="text/event-stream; charset=utf-8")
    parts = [render_chunk(ChunkBytes(events[i:i + 5], st)) for i in range(0, len(events), 5)]
    parts.append(render_chunk(ChunkBytes(b"", st, final=True)))
    stored = "".join(p["text"] for p in parts)
    assert GITHUB_PAT not in stored and "[MASKED:github-pat:" in stored
    assert sum(p["size"] for p in parts) == len(events)
    assert stored.endswith("data: [DONE]\n\n")


def test_render_chunk_plain_stream_gzip_request_body():
    body = chat_request(("user", f"postgres://app:{PASSWORD}@db/app and {OPENAI_KEY}")) * 3
    wire = gzip.compress(body)
    st = BodyStream("gzip", masker=MASKER, content_type="application/json")
    parts = [render_chunk(ChunkBytes(wire[i:i + 9], st)) for i in range(0, len(wire), 9)]
    parts.append(render_chunk(ChunkBytes(b"", st, final=True)))
    stored = "".join(p.get("text", "") for p in parts).encode()
    assert PASSWORD.encode() not in stored and OPENAI_KEY.encode() not in stored
    assert stored == MASKER.mask_bytes(body)
