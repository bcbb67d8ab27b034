"""Connect/gRPC bodies as the writer records them: envelopes split per direction across
chunks, per-message gzip undone, end-of-stream JSON kept, every string masked (across
messages too), nothing stored as raw bytes that could hide a secret."""
import base64
import gzip
import json

import orjson
import pytest

from recorder.store import format_v1
from recorder.store.bodies import BodyBytes, BodyStream, ChunkBytes, render_bodies
from recorder.protocols.connect import wire
from recorder.protocols.connect.record import RpcStream, stored_bytes
from recorder.masking import Masker
from tests.support.protos import compile_protos

KEY = b"k" * 32
GHP = "ghp_" + "Q7x2" * 9  # a GitHub token shape (36 characters after the prefix)
ANT = "sk-ant-api03-" + "Zq9" * 30 + "AA"


@pytest.fixture(scope="module")
def pb(tmp_path_factory):
    return compile_protos(tmp_path_factory.mktemp("protos"))


@pytest.fixture(scope="module")
def masker():
    return Masker(KEY)


def env(flags: int, payload: bytes) -> bytes:
    return bytes([flags]) + len(payload).to_bytes(4, "big") + payload


def msg(*fields) -> bytes:
    return wire.encode(list(fields))


def s(num, text):
    return wire.Field(num, "s", text)


def m(num, *fields):
    return wire.Field(num, "m", list(fields))


def run(data: bytes, step: int, masker=None, ctype="application/connect+proto", encoding="gzip") -> list[dict]:
    rs = RpcStream(ctype, encoding, masker)
    out = []
    for i in range(0, len(data), step):
        out.extend(rs.feed(data[i:i + step])["messages"])
    out.extend(rs.feed(b"", final=True)["messages"])
    return out


def texts(entries) -> list[str]:
    return [n["s"] for e in entries for _, n in wire.json_walk(e.get("proto") or []) if "s" in n]


def stream_of(*messages: bytes) -> bytes:
    return b"".join(env(0, x) for x in messages)


def test_envelopes_split_at_every_offset_and_several_in_one_chunk():
    data = (env(0, msg(m(1, s(1, "first")))) + env(1, gzip.compress(msg(m(1, s(1, "second, gzip")))))
            + env(0, msg(s(2, "third"))) + env(2, b'{"metadata":{"x-trace":["abc"]}}'))
    whole = run(data, len(data))
    assert [e["n"] for e in whole] == [0, 1, 2, 3]
    assert texts(whole) == ["first", "second, gzip", "third"]
    assert whole[1]["compressed"] == "gzip" and whole[3]["end"] == {"metadata": {"x-trace": ["abc"]}}
    for step in range(1, len(data) + 1):
        assert run(data, step) == whole, step


def test_the_stored_body_re_encodes_to_envelopes_the_official_parser_reads(pb, masker):
    inner = pb.everything.Inner(text=f"token {GHP} inside", n=5).SerializeToString()
    data = env(1, gzip.compress(inner)) + env(2, b"{}")
    rs = RpcStream("application/connect+proto", "gzip", masker)
    body = rs.feed(data, final=True)
    raw = stored_bytes(body)
    assert raw[0] == 0  # stored uncompressed: the flag is cleared
    length = int.from_bytes(raw[1:5], "big")
    again = pb.everything.Inner.FromString(raw[5:5 + length])
    assert again.n == 5 and again.text.startswith("token [MASKED:github-pat:") and GHP not in again.text
    assert raw[5 + length:] == env(2, b"{}")


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_a_secret_in_a_gzip_message_never_reaches_the_record(masker, step):
    data = env(1, gzip.compress(msg(m(1, m(2, s(1, f"please use {ANT} for it"))))))
    entries = run(data, step, masker)
    dumped = orjson.dumps(entries)
    assert ANT.encode() not in dumped and b"[MASKED:anthropic:" in dumped
    assert ANT.encode() not in stored_bytes({"framing": "connect", "messages": entries})


def test_a_secret_split_across_streamed_messages_is_masked(masker):
    # the model's text arrives as deltas at one field path: the token is split over three messages
    parts = ["Here it is: " + GHP[:9], GHP[9:25], GHP[25:] + " done."]
    data = stream_of(*(msg(m(1, m(1, s(1, p)))) for p in parts))
    rs = RpcStream("application/connect+proto", None, masker)
    first = rs.feed(data[:5 + len(msg(m(1, m(1, s(1, parts[0])))))])
    assert first["messages"] == [] and first["held"] == 1  # it could still be a secret: held, not written
    rest = rs.feed(data[len(data) - len(data) + 5 + len(msg(m(1, m(1, s(1, parts[0]))))):], final=True)
    joined = "".join(texts(rest["messages"]))
    assert GHP not in joined and not any(p in joined for p in (GHP[9:25], GHP[:9]))
    assert joined.startswith("Here it is: [MASKED:github-pat:") and joined.endswith(" done.")
    assert [e["n"] for e in rest["messages"]] == [0, 1, 2]


def test_a_secret_in_bytes_and_in_a_hex_encoded_message_is_masked(masker):
    blob = b"\xff\xfe binary " + GHP.encode() + b" \x00\x01"
    hexed = msg(s(1, f"export KEY={ANT}"), wire.Field(2, "v", 7)).hex()
    entries = run(stream_of(msg(wire.Field(3, "b64", blob)), msg(s(1, hexed), m(2, s(1, "req-42")))), 4, masker)
    dumped = orjson.dumps(entries)
    assert GHP.encode() not in dumped and ANT.encode() not in dumped
    assert ANT.encode().hex().encode() not in dumped  # nor its hex form
    raw = stored_bytes({"framing": "connect", "messages": entries})
    assert GHP.encode() not in raw and ANT.encode().hex().encode() not in raw and ANT.encode() not in raw
    assert entries[1]["proto"][0]["x"][0]["s"].startswith("export KEY=[MASKED:anthropic:")


def test_the_end_of_stream_error_is_kept_and_masked(masker):
    detail = base64.b64encode(msg(s(1, f"debug: {GHP}"))).decode().rstrip("=")
    end = {"error": {"code": "resource_exhausted", "message": f"quota for {ANT}",
                     "details": [{"type": "x.Debug", "value": detail}]}}
    (entry,) = run(env(2, json.dumps(end).encode()), 5, masker)
    assert entry["end"]["error"]["code"] == "resource_exhausted"
    assert entry["end"]["error"]["message"].startswith("quota for [MASKED:anthropic:")
    value = base64.b64decode(entry["end"]["error"]["details"][0]["value"] + "==")
    assert GHP.encode() not in value and b"[MASKED:github-pat:" in value


def test_a_message_that_cannot_be_decompressed_is_left_out(masker):
    secret = msg(s(1, GHP))
    (entry,) = run(env(1, b"\x01\x02not gzip" + secret), 3, masker, encoding="gzip")
    assert "cannot decompress" in entry["omitted"] and len(entry["sha256"]) == 64
    assert "proto" not in entry and "b64" not in entry and GHP.encode() not in orjson.dumps(entry)
    (entry,) = run(env(1, secret), 3, masker, encoding="snappy")
    assert "'snappy'" in entry["omitted"] and GHP.encode() not in orjson.dumps(entry)


def test_bytes_that_are_not_protobuf_are_masked_as_bytes_and_say_so(masker):
    junk = b"\x0f\x0f" + GHP.encode() + b"\xff"
    (entry,) = run(env(0, junk), 2, masker)
    assert entry["undecoded"].startswith("not a protobuf message (wire type 7 at byte 0)")
    assert GHP.encode() not in base64.b64decode(entry["b64"])


def test_a_stream_cut_mid_envelope_keeps_what_arrived_masked(masker):
    whole = env(0, msg(s(1, f"key {GHP} and more text")))
    (entry,) = run(whole[:-6], 4, masker)
    assert entry["incomplete"] is True and entry["expected"] == len(whole) - 5
    assert GHP.encode() not in orjson.dumps(entry)


def test_a_secret_across_field_boundaries_is_caught_by_the_whole_message_search(masker):
    # "ghp_" + 36 letters that parse as fields: 'p' (field 14 varint '_'), then 'A' (field 8 fixed64) x4
    crafted = b"\x0a\x05xx gh" + b"p_" + (b"A" + b"A" * 8) * 4
    assert "ghp_" + "A" * 36 in crafted.decode()
    entries = run(stream_of(crafted, msg(m(3, s(9, "ok")), wire.Field(5, "m", wire.parse(crafted)))), 3, masker)
    assert entries[0]["masked_as_bytes"] == ["(whole message)"] and "proto" not in entries[0]
    assert entries[1]["masked_as_bytes"] == ["5"] and texts([entries[1]]) == ["ok"]
    assert b"ghp_" + b"A" * 36 not in stored_bytes({"framing": "connect", "messages": entries})


def test_max_body_leaves_later_messages_out():
    data = stream_of(msg(s(1, "a" * 100)), msg(s(1, "b" * 100)), msg(s(1, "c" * 10)))
    rs = RpcStream("application/connect+proto", None, None, max_body=150)
    body = rs.feed(data, final=True)
    assert [("proto" in e, e.get("omitted")) for e in body["messages"]] == [
        (True, None), (True, None), (False, "capture.max_body")]
    assert body["truncated"] is True


def test_bodies_render_rpc_through_the_writer_path(masker):
    """recorder/store/bodies.py hands Connect/gRPC bodies to the RPC renderer, buffered and streamed."""
    unary = msg(s(1, f"prompt with {GHP}"), m(2, s(1, "req-7")))
    fields = render_bodies({"body": BodyBytes(gzip.compress(unary), "gzip", masker=masker,
                                              content_type="application/proto")})
    body = fields["body"]
    assert body["framing"] == "unary" and body["encoding"] == "gzip" and body["size"] == len(unary)
    assert texts(body["messages"])[0].startswith("prompt with [MASKED:github-pat:")
    assert format_v1.decode_body(body) == wire.encode(wire.from_json(body["messages"][0]["proto"]))
    st = BodyStream(None, masker=masker, content_type="application/grpc+proto", message_encoding="gzip")
    data = env(1, gzip.compress(msg(s(1, f"x {ANT}")))) + env(0, msg(s(1, " plain")))
    parts = [render_bodies({"body": ChunkBytes(data[:9], st)})["body"],
             render_bodies({"body": ChunkBytes(data[9:], st, final=True)})["body"]]
    got = [e for b in parts for e in b["messages"]]
    assert texts(got) == [texts(got)[0], " plain"] and texts(got)[0].startswith("x [MASKED:anthropic:")
    assert all(b["framing"] == "grpc" for b in parts)
    assert ANT.encode() not in orjson.dumps(parts)


def test_json_rpc_messages_are_masked_as_json(masker):
    data = env(0, json.dumps({"prompt": f"use {GHP}"}).encode())
    (entry,) = run(data, 5, masker, ctype="application/connect+json")
    assert json.loads(entry["text"])["prompt"].startswith("use [MASKED:github-pat:")


def test_the_format_doc_example_is_what_the_writer_records():
    """docs/format.md ("Connect and gRPC bodies") shows a body this code writes."""
    from pathlib import Path

    doc_masker = Masker(bytes(range(32)))
    prompt = msg(m(1, m(2, m(1, m(1, s(1, "deploy with ghp_Zk3mQ9Zk3mQ9Zk3mQ9Zk3mQ9Zk3mQ9Zk3mQ9 please")))),
                   m(3, s(1, "claude-4-sonnet"))))
    body = RpcStream("application/connect+proto", None, doc_masker).feed(
        env(0, prompt) + env(2, b'{"error":{"code":"unavailable","message":"try again"}}'), final=True)
    spec = (Path(__file__).resolve().parents[2] / "docs" / "format.md").read_text()
    assert orjson.dumps(body).decode() in spec


def test_a_decoder_failure_leaves_the_bytes_out(masker, monkeypatch):
    """Should the decoder break on some input, nothing of it is stored raw (it could be
    compressed, hiding a secret from the text rules), and the body says so."""
    import recorder.protocols.connect.record as record_mod

    def broken(*_a, **_k):
        raise RuntimeError("decoder bug")

    monkeypatch.setattr(record_mod.wire, "parse", broken)
    st = BodyStream(None, masker=masker, content_type="application/connect+proto", message_encoding="gzip")
    data = env(1, gzip.compress(msg(s(1, f"x {GHP}"))))
    first = render_bodies({"body": ChunkBytes(data, st)})["body"]
    later = render_bodies({"body": ChunkBytes(data, st, final=True)})["body"]
    for body in (first, later):
        assert body["messages"] == [] and "decoder bug" in body["omitted"] and body["size"] == len(data)
        assert "b64" not in body and "text" not in body
    assert format_v1.decode_body(first) == b""


def test_the_writers_fallback_never_stores_rpc_bytes_raw(masker):
    """When a record cannot be rendered, the writer records bodies from their raw bytes masked
    by the text rules (recorder/store/record_repair.py); for Connect/gRPC that would keep a compressed
    secret: the bytes are left out instead, for the rest of the stream too."""
    from recorder.store.record_repair import fallback_bodies

    st = BodyStream(None, masker=masker, content_type="application/connect+proto", message_encoding="gzip")
    data = env(1, gzip.compress(msg(s(1, f"x {GHP}"))))
    body = fallback_bodies({"body": ChunkBytes(data, st)}, RuntimeError("orjson said no"))["body"]
    assert body["messages"] == [] and "orjson said no" in body["omitted"] and "b64" not in body
    later = render_bodies({"body": ChunkBytes(data, st, final=True)})["body"]
    assert later["messages"] == [] and "orjson said no" in later["omitted"]
    buffered = fallback_bodies({"body": BodyBytes(gzip.compress(msg(s(1, GHP))), "gzip", masker=masker,
                                                  content_type="application/proto")}, ValueError("x"))["body"]
    assert buffered["framing"] == "unary" and buffered["messages"] == [] and "b64" not in buffered


def test_each_streamed_message_carries_when_its_last_byte_came():
    a, b, c = env(0, msg(s(1, "first"))), env(0, msg(s(1, "second"))), env(0, msg(s(1, "third")))
    rs = RpcStream("application/connect+proto")
    data = a + b[:3]
    body1 = rs.feed(data, times=[(len(a) - 2, 100.0), (2 + 3, 101.5)])
    body2 = rs.feed(b[3:] + c, times=[(len(b) - 3, 102.25), (len(c), 103.0)])
    assert [m["at"] for m in body1["messages"]] == [101.5]  # its last two bytes came in the second piece
    assert [m["at"] for m in body2["messages"]] == [102.25, 103.0]
    decoded = RpcStream("application/connect+proto").feed(a, times=[(3, 7.0)])  # lengths do not match (decoded)
    assert decoded["messages"][0]["at"] == 7.0
    assert "at" not in RpcStream("application/connect+proto").feed(a)["messages"][0]


def test_a_tick_releases_held_messages_as_a_record_of_their_own(masker):
    """capture sends an empty batch (a tick) when a stream goes quiet: messages masking held
    come out then, not at the stream's end; a tick with nothing held writes nothing."""
    st = BodyStream(None, masker=masker, content_type="application/connect+proto")
    held = env(0, msg(s(1, "ends like a secret could start: ghp_")))
    first = render_bodies({"flow": "f", "n": 0, "body": ChunkBytes(held, st)})
    assert first["body"]["messages"] == [] and first["body"]["held"] == 1 and first["n"] == 0
    tick = render_bodies({"flow": "f", "n": 1, "body": ChunkBytes(b"", st)})
    assert tick["n"] == 1 and texts(tick["body"]["messages"]) == ["ends like a secret could start: ghp_"]
    assert tick["body"]["messages"][0]["chunk"] == 0  # where it arrived
    assert render_bodies({"flow": "f", "n": 2, "body": ChunkBytes(b"", st)}) is None  # nothing held: no record
    last = render_bodies({"flow": "f", "n": 2, "body": ChunkBytes(b"", st, final=True)})
    assert last["n"] == 2 and last["body"]["messages"] == []
