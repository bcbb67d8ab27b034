"""ws.* and tcp.* records: how they are built, masked (split secrets included), held and written,
by the writer thread and the writer process; the spec's WebSocket vector; the reader's checks."""
import importlib.util
import json
import re
from pathlib import Path

import orjson
import pytest
import zstandard

from recorder.config import MaskingConfig
from recorder.forensics.reader import read_session
from recorder.forensics.summary import summarize
from recorder.masking import Masker
from recorder.protocols.websocket import WsState, ws_close_fields, ws_message_fields
from recorder.protocols.ws_masking import WsDirection, WsFlush, WsMessageBody, held_records
from recorder.store import format_v1
from recorder.store.writer import RecordWriter
from recorder.store.writer_process import ProcessRecordWriter

ROOT = Path(__file__).resolve().parents[2]
SECRET = "ghp_" + "x7Kq2mZpR4tVw9yB3nLc8dFh6jGs1aEoUiT5"  # a GitHub token the built-in rules know
HALF = len(SECRET) // 2


@pytest.fixture(scope="module")
def masker():
    return Masker.from_config(MaskingConfig(), b"k" * 32)


def delta(text: str, item: str = "msg_1") -> bytes:
    return json.dumps({"type": "response.output_text.delta", "item_id": item, "output_index": 0,
                       "content_index": 0, "delta": text}).encode()


def add(direction: WsDirection, data: bytes, text: bool = True, n: int = 0) -> list[tuple]:
    fields = {"flow": "f", "from": "server", "n": n, "kind": "text" if text else "binary",
              "body": WsMessageBody(data, text, direction)}
    return held_records("ws.message", float(n), fields)


def body_of(rec: tuple) -> bytes:
    body = rec[2]["body"]
    return body["text"].encode() if "text" in body else __import__("base64").b64decode(body["b64"])


def test_a_secret_split_across_two_server_events_is_masked_where_it_starts(masker):
    d = WsDirection(masker)
    first = delta("Here: " + SECRET[:HALF])
    assert add(d, first, n=0) == []  # could be the start of a secret: held
    out = add(d, delta(SECRET[HALF:] + " done!"), n=1)
    assert [r[1] for r in out] == [0.0, 1.0]  # both written now, each with its own ts
    a, b = (json.loads(body_of(r)) for r in out)
    assert a["delta"].startswith("Here: [MASKED:github-pat") and SECRET[:HALF] not in a["delta"]
    assert b["delta"] == " done!"  # the rest of the secret is not repeated
    assert out[0][2]["body"]["size"] == len(first)  # the original size


def test_messages_without_secrets_are_recorded_byte_for_byte(masker):
    d = WsDirection(masker)
    raw = b'{"type":  "response.output_text.delta",  "delta": "hello!"}'  # odd spacing kept
    out = add(d, raw)
    assert [body_of(r) for r in out] == [raw]
    assert add(d, b"plain text, no secret.", n=1) == []  # "et." could still grow into a secret (azure rule)
    out = d.flush()
    assert body_of(out[0]) == b"plain text, no secret."


def test_binary_messages_are_masked_as_bytes_and_stay_binary(masker):
    d = WsDirection(masker)
    data = b"\x00\xff " + SECRET.encode() + b" \x01"
    out = add(d, data, text=False)
    body = out[0][2]["body"]
    assert "b64" in body and body["size"] == len(data)
    assert SECRET.encode() not in body_of(out[0]) and b"[MASKED:github-pat" in body_of(out[0])


def test_client_messages_are_never_held_and_held_server_messages_go_first(masker):
    server = WsDirection(masker, hold=True)
    client = WsDirection(masker, hold=False, before=server)
    assert add(server, b"abc") == []  # "abc" could begin a secret
    fields = {"flow": "f", "from": "client", "n": 0, "kind": "text", "body": WsMessageBody(b"next request", True, client)}
    out = held_records("ws.message", 5.0, fields)
    assert [(r[2]["from"], body_of(r)) for r in out] == [("server", b"abc"), ("client", b"next request")]
    # a client message ending like the start of a secret is settled at once
    fields = {"flow": "f", "from": "client", "n": 1, "kind": "text",
              "body": WsMessageBody(f"key {SECRET[:HALF]}".encode(), True, client)}
    assert len(held_records("ws.message", 6.0, fields)) == 1


def test_the_close_record_releases_what_is_held_before_itself(masker):
    st = WsState("f", None, "c1", masker)
    fields = ws_message_fields(st, "server", b"tail abc", True)
    assert held_records("ws.message", 1.0, fields) == []
    close = ws_close_fields(st, code=1000, reason="", by="client", ended=2.0)
    assert isinstance(close["held"], WsFlush)
    out = held_records("ws.close", 2.0, close)
    assert [r[0] for r in out] == ["ws.message", "ws.close"] and "held" not in out[1][2]
    assert out[1][2]["messages"] == {"client": 0, "server": 1} and out[1][2]["size"] == {"client": 0, "server": 8}


def test_max_body_cuts_a_message_and_says_so(masker):
    d = WsDirection(masker, max_body=5)
    out = add(d, b"0123456789!")
    assert out[0][2]["body"] == {"text": "01234", "size": 11, "truncated": True}


def test_ordinary_records_are_not_touched():
    assert held_records("http.request", 1.0, {"flow": "f", "body": None}) is None


def ws_session(writer_class, tmp_path: Path, masker):
    w = writer_class(fsync="batch", fsync_interval=0.01, storage_dir=tmp_path)
    w.start()
    path = tmp_path / "2026/01/01/s.jsonl.zst"
    w.open_session("s", path, 1.0, {"session": "s", "identity": {}, "client": {}, "gateway": {}, "key": None})
    st = WsState("f", None, "c1", masker)
    w.record("s", "ws.open", 1.5, {"flow": "f", "conn": "c1", "connection": None, "url": "wss://x/"})
    w.record("s", "ws.message", 2.0, ws_message_fields(st, "client", b"hello", True))
    w.record("s", "ws.message", 3.0, ws_message_fields(st, "server", delta("token " + SECRET[:HALF]), True))
    w.record("s", "http.end", 3.5, {"flow": "other", "size": {}, "duration_ms": 1, "ttfb_ms": None})  # held meanwhile
    w.record("s", "ws.message", 4.0, ws_message_fields(st, "server", delta(SECRET[HALF:] + " end"), True))
    w.record("s", "ws.message", 5.0, ws_message_fields(st, "server", b"abc", True))
    w.record("s", "ws.close", 6.0, ws_close_fields(st, code=1000, reason="", by="client", ended=6.0))
    w.close_session("s", 7.0, {"reason": "shutdown", "counts": {"flows": 2}})
    assert w.stop(10)
    data = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    return data, [orjson.loads(x) for x in data.split(b"\n") if x]


@pytest.mark.parametrize("writer_class", [RecordWriter, ProcessRecordWriter], ids=["thread", "process"])
def test_the_writers_mask_hold_and_chain_websocket_records(tmp_path, masker, writer_class):
    data, recs = ws_session(writer_class, tmp_path, masker)
    assert SECRET[:HALF].encode() not in data and SECRET[HALF:].encode() not in data
    assert [(r["t"], r.get("ts")) for r in recs] == [
        ("session.open", 1.0), ("ws.open", 1.5), ("ws.message", 2.0), ("http.end", 3.5), ("ws.message", 3.0),
        ("ws.message", 4.0), ("ws.message", 5.0), ("ws.close", 6.0), ("session.close", 7.0)]
    assert [r["seq"] for r in recs] == list(range(len(recs)))
    assert "[MASKED:github-pat" in json.loads(recs[4]["body"]["text"])["delta"]
    assert json.loads(recs[5]["body"]["text"])["delta"] == " end"
    assert recs[6]["body"]["text"] == "abc"
    path = next(tmp_path.rglob("s.jsonl.zst"))
    assert read_session(path).problems == []


# -- the spec's vector and the reader ---------------------------------------------------------


def load_vector():
    spec = importlib.util.spec_from_file_location("v1_websocket", ROOT / "tests/vectors/v1_websocket.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_the_websocket_vector_matches_the_codec_the_file_and_the_spec(tmp_path):
    vec = load_vector()
    lines = vec.build_lines()
    assert (ROOT / "tests/vectors/v1-websocket.jsonl").read_bytes() == b"".join(x + b"\n" for x in lines)
    spec = (ROOT / "docs/format.md").read_text()
    m = re.search(r"<!-- ws-vector -->\n```jsonl\n(.*?)\n```\nThe `ws.close` line hashes to `([0-9a-f]{64})`", spec, re.S)
    assert m, "docs/format.md lost its WebSocket vector"
    assert m.group(1).encode().split(b"\n") == lines[4:9]
    assert m.group(2) == format_v1.line_hash(lines[8])
    assert format_v1.line_hash(lines[3]) in spec
    path = tmp_path / f"{vec.SESSION_ID}.jsonl.zst"
    cobj = zstandard.ZstdCompressor().compressobj()
    path.write_bytes(cobj.compress(b"".join(x + b"\n" for x in lines)) + cobj.flush())
    r = read_session(path)
    assert r.problems == [] and r.state == "closed"
    assert summarize(r).bytes == 55 + 57  # ls counts the WebSocket's messages (ws.close size)


@pytest.mark.parametrize("rtype, fields, problem", [
    ("ws.message", {"flow": "f", "n": 0, "kind": "text", "body": {"text": "x", "size": 1}}, 'missing field "from"'),
    ("ws.message", {"flow": "f", "from": "up", "n": 0, "kind": "text", "body": {"text": "x", "size": 1}}, "from 'up'"),
    ("ws.message", {"flow": "f", "from": "client", "n": 0, "kind": "ping", "body": {"text": "x", "size": 1}}, "kind 'ping'"),
    ("ws.message", {"flow": "f", "from": "client", "n": 0, "kind": "text", "body": {"size": 1}}, 'neither "text" nor "b64"'),
    ("tcp.message", {"flow": "f", "from": "server", "n": 0, "body": {"b64": 5, "size": 1}}, 'neither "text" nor "b64"'),
    ("ws.close", {"flow": "f", "code": 1000, "by": "client"}, 'missing field "messages"'),
    ("tcp.refused", {"conn": "c", "host": "h", "port": 1, "reason": "raw_tcp"}, 'missing field "message"'),
])
def test_the_reader_checks_websocket_and_tcp_records(tmp_path, rtype, fields, problem):
    chain = format_v1.Chain()
    lines = [chain.next_line("session.open", 1.0, {"session": "S", "identity": {}, "client": {}, "gateway": {},
                                                  "key": None}),
             chain.next_line(rtype, 2.0, fields)]
    path = tmp_path / "s.jsonl.zst"
    cobj = zstandard.ZstdCompressor().compressobj()
    path.write_bytes(cobj.compress(b"".join(x + b"\n" for x in lines)) + cobj.flush())
    found = [str(p) for p in read_session(path).problems]
    assert any(problem in p for p in found), found
