"""Streams: a secret split across pieces, SSE events or raw chunk boundaries never reaches
the output; released text is exactly the masked whole; the hold-back is only a short tail."""
from __future__ import annotations

import random

import orjson
import pytest

from recorder.masking import Masker, SseMasker, StreamMasker
from tests.unit.masking_fakes import ANTHROPIC_KEY, GITHUB_PAT, OPENAI_KEY, PASSWORD, j, pem

MASKER = Masker(b"s" * 32, known_secrets=[j("upstream-", "Zq8rT2vW9xY4bN6m")])
SECRETS = [GITHUB_PAT, OPENAI_KEY, ANTHROPIC_KEY, j("upstream-", "Zq8rT2vW9xY4bN6m")]
TEXT = ("Here is the config you asked for.\n"
        f"export GITHUB_TOKEN={GITHUB_PAT}\n"
        f"and the database: postgres://app:{PASSWORD}@db:5432/app\n"
        f"OPENAI_API_KEY={OPENAI_KEY} done.\n")


def feed_all(sm, pieces) -> bytes:
    return b"".join(sm.feed(p) for p in pieces) + sm.finish()


def test_stream_one_byte_at_a_time_equals_whole_masking():
    data = TEXT.encode()
    out = feed_all(StreamMasker(MASKER), [data[i:i + 1] for i in range(len(data))])
    assert out == MASKER.mask_bytes(data)
    for s in (GITHUB_PAT, OPENAI_KEY, PASSWORD):
        assert s.encode() not in out


def test_stream_releases_prose_at_once_and_holds_only_a_possible_secret():
    sm = StreamMasker(MASKER)
    assert sm.feed(b"Hello there, this is plain prose. ") == b"Hello there, this is plain prose. "
    assert sm.held == 0
    out = sm.feed(b"Your token is ghp")  # could be the start of a GitHub token
    assert out == b"Your token is " and sm.held == 3
    out = sm.feed(b"y, said the frog. ")  # it was not
    assert out == b"ghpy, said the frog. " and sm.held == 0


@pytest.mark.parametrize("secret", SECRETS)
def test_secret_split_at_every_offset_in_two_pieces(secret):
    data = f"prefix text {secret} suffix".encode()
    for cut in range(1, len(data)):
        out = feed_all(StreamMasker(MASKER), [data[:cut], data[cut:]])
        assert secret.encode() not in out, cut
        assert out == MASKER.mask_bytes(data), cut


def test_pem_block_streamed_line_by_line():
    key = pem("RSA PRIVATE KEY", lines=30)
    data = f"Here is the key:\n{key}\nKeep it safe.".encode()
    out = feed_all(StreamMasker(MASKER), [data[i:i + 5] for i in range(0, len(data), 5)])
    assert b"[MASKED:private-key:" in out and key.split("\n")[3].encode() not in out
    assert out.endswith(b"Keep it safe.")


# -- SSE ---------------------------------------------------------------------------------------

def openai_events(text: str) -> bytes:
    events = [{"id": "c1", "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": {"role": "assistant"}}]}]
    events += [{"id": "c1", "choices": [{"index": 0, "delta": {"content": ch}, "finish_reason": None}]} for ch in text]
    events.append({"id": "c1", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def openai_tool_events(args: str) -> bytes:
    head = {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t1", "type": "function",
                                                                "function": {"name": "run", "arguments": ""}}]}}]}
    events = [head] + [{"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ch}}]}}]}
                       for ch in args]
    events.append({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def anthropic_events(text: str, kind: str = "text_delta", field: str = "text") -> bytes:
    def ev(name, obj):
        return b"event: " + name.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

    out = ev("message_start", {"type": "message_start", "message": {"id": "m1", "content": [], "usage": {}}})
    out += ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})
    for ch in text:
        out += ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {"type": kind, field: ch}})
    out += ev("content_block_stop", {"type": "content_block_stop", "index": 0})
    out += ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"}})
    out += ev("message_stop", {"type": "message_stop"})
    return out


def events_of(raw: bytes) -> list[tuple[str | None, dict | bytes]]:
    out = []
    for block in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        if not block.strip():
            continue
        name = None
        data = []
        for line in block.split(b"\n"):
            if line.startswith(b"event:"):
                name = line[6:].strip().decode()
            elif line.startswith(b"data:"):
                data.append(line[5:].lstrip(b" "))
        payload = b"\n".join(data)
        out.append((name, orjson.loads(payload) if payload.startswith(b"{") else payload))
    return out


def openai_text(raw: bytes) -> str:
    return "".join(e["choices"][0]["delta"].get("content", "") for _, e in events_of(raw)
                   if isinstance(e, dict) and e.get("choices"))


def openai_args(raw: bytes) -> str:
    return "".join(tc["function"].get("arguments", "") for _, e in events_of(raw) if isinstance(e, dict)
                   for c in e.get("choices", []) for tc in c.get("delta", {}).get("tool_calls", []))


def anthropic_text(raw: bytes, field: str = "text") -> str:
    return "".join(e["delta"][field] for n, e in events_of(raw)
                   if isinstance(e, dict) and e.get("type") == "content_block_delta")


def run_sse(raw: bytes, cuts) -> bytes:
    sm = SseMasker(MASKER)
    out = []
    prev = 0
    for c in list(cuts) + [len(raw)]:
        out.append(sm.feed(raw[prev:c]))
        prev = c
    out.append(sm.finish())
    return b"".join(out)


@pytest.mark.parametrize("secret", [GITHUB_PAT, OPENAI_KEY, ANTHROPIC_KEY])
def test_openai_one_char_per_event_at_every_offset(secret):
    # The secret starts at every offset of a short line: each event carries one character,
    # so every split point of the secret falls on an event boundary.
    for pad in range(0, 6):
        text = "x" * pad + f" key {secret} end"
        out = run_sse(openai_events(text), [])
        assert secret.encode() not in out
        assert openai_text(out) == MASKER.mask_text(text)
        assert events_of(out)[-1] == (None, b"[DONE]")


def test_openai_tool_call_arguments_are_masked():
    args = orjson.dumps({"cmd": f"curl -H 'Authorization: Bearer {OPENAI_KEY}' https://x"}).decode()
    out = run_sse(openai_tool_events(args), [])
    assert OPENAI_KEY.encode() not in out
    assert openai_args(out) == MASKER.mask_text(args)


@pytest.mark.parametrize("kind, field", [("text_delta", "text"), ("input_json_delta", "partial_json"),
                                         ("thinking_delta", "thinking")])
def test_anthropic_one_char_per_event(kind, field):
    text = f"the token is {GITHUB_PAT} and the password={PASSWORD}!"
    out = run_sse(anthropic_events(text, kind, field), [])
    assert GITHUB_PAT.encode() not in out and PASSWORD.encode() not in out
    assert anthropic_text(out, field) == MASKER.mask_text(text)
    names = [n for n, _ in events_of(out)]
    assert names[-3:] == ["content_block_stop", "message_delta", "message_stop"]


def test_random_chunk_boundaries_of_the_raw_bytes():
    rng = random.Random(5)
    text = TEXT
    raws = [openai_events(text), anthropic_events(text)]
    for raw in raws:
        expected = MASKER.mask_text(text)
        for _ in range(25):
            cuts = sorted(rng.sample(range(1, len(raw)), rng.randint(1, 60)))
            out = run_sse(raw, cuts)
            for s in (GITHUB_PAT, OPENAI_KEY, PASSWORD):
                assert s.encode() not in out
            got = openai_text(out) if raw is raws[0] else anthropic_text(out)
            assert got == expected


def test_raw_byte_boundaries_throughout():
    raw = openai_events(f"a {GITHUB_PAT} b")
    for cut in range(1, len(raw), 7):  # every 7th byte: each event is cut at many of its offsets
        out = run_sse(raw, [cut])
        assert GITHUB_PAT.encode() not in out, cut


def test_unchanged_events_are_recorded_byte_for_byte():
    # Deltas that end where no secret can be starting are released whole, event by event.
    def ev(obj):
        return b"event: " + obj["type"].encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"

    raw = b"".join(ev({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": w}})
                   for w in ("Nothing ", "to ", "hide ", "here, ", "at ", "all.\n"))
    raw += ev({"type": "content_block_stop", "index": 0})
    assert run_sse(raw, [17, 90, 300]) == raw


def test_generic_sse_data_lines_and_non_json():
    secret = GITHUB_PAT
    text = f"tok.{secret}!"
    raw = b"".join(b"data:" + ch.encode() + b"\n\n" for ch in text)  # one character per event
    out = run_sse(raw, [])
    assert secret.encode() not in out
    data = b"".join(line[5:] for line in out.split(b"\n\n") if line.startswith(b"data:"))
    assert data == MASKER.mask_bytes(text.encode())
    assert out.count(b"\n\n") == raw.count(b"\n\n")  # every event is still there, no event added


def test_whole_secret_in_a_non_delta_event_is_masked():
    event = {"type": "response.completed", "response": {"output": [{"content": [{"text": f"key {GITHUB_PAT}"}]}]}}
    raw = b"event: response.completed\ndata: " + orjson.dumps(event) + b"\n\n"
    out = run_sse(raw, [])
    assert GITHUB_PAT.encode() not in out and b"[MASKED:github-pat:" in out


def test_undecodable_bytes_are_masked_as_bytes():
    data = b"\xff\xfe binary " + GITHUB_PAT.encode() + b" \x00\x80 more"
    sm = StreamMasker(MASKER)
    out = feed_all(sm, [data[i:i + 3] for i in range(0, len(data), 3)])
    assert GITHUB_PAT.encode() not in out and out.startswith(b"\xff\xfe binary [MASKED:github-pat:")


# -- exact bytes where nothing was masked ------------------------------------------------------

def _openai_sse(pieces) -> bytes:
    events = [orjson.dumps({"id": "c1", "object": "chat.completion.chunk",
                            "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]})
              for p in pieces]
    return b"".join(b"data: " + e + b"\n\n" for e in events) + b"data: [DONE]\n\n"


def test_sse_without_a_secret_is_recorded_byte_for_byte():
    # Pieces that make the masker hold text back for a moment ("s" could start "sk-", "to" "token").
    data = _openai_sse(["This is", " s", "o to", "ken-free", " text, gh", "ost story"])
    rng = random.Random(7)
    for _ in range(20):
        cuts = sorted(rng.sample(range(1, len(data)), 6))
        pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        assert feed_all(SseMasker(MASKER), pieces) == data


def test_sse_secret_spelled_one_character_per_event_keeps_every_event():
    data = _openai_sse(["intro, "] + list(f"key {GITHUB_PAT} end"))
    for step in (1, 5, 64, len(data)):
        out = feed_all(SseMasker(MASKER), [data[i:i + step] for i in range(0, len(data), step)])
        assert GITHUB_PAT.encode() not in out
        events = [line for line in out.split(b"\n\n") if line]
        assert len(events) == data.count(b"\n\n")  # none added, none lost
        text = "".join(orjson.loads(line[6:])["choices"][0]["delta"]["content"]
                       for line in events if line.startswith(b"data: {"))
        assert text == MASKER.mask_text(f"intro, key {GITHUB_PAT} end")
        # Events before the secret started are written as they came.
        assert out.startswith(data[:data.index(b"\n\n") + 2])
