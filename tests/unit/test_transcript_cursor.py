"""`wiretrail show` on a session in the shape of Cursor's agent stream: a readable
conversation (prompt, streamed text, a tool request and its result), in both transport
modes; unknown schemas as strings with field paths, never a hex dump; --tree; and
`wiretrail mask` over Connect bodies."""
import json
import re
import shutil
from pathlib import Path

import orjson
import pytest
import zstandard

from recorder import cli
from recorder.protocols.connect import wire
from recorder.masking import Masker
from recorder.forensics.reader import read_session
from recorder.forensics.transcript import build
from tests.support.checks import assert_in_order
from tests.support.cursor_fixture import (
    DELTAS_1, DELTAS_2, EXEC_ID, FILE_CONTENT, FILE_PATH, conversation, compile_mimic, envelope, end_stream,
    SessionWriter, write_h1_session, write_h2_session,
)

SECRET = "ghp_" + "Q7x2" * 9
KEY = b"k" * 32


@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    return compile_mimic(tmp_path_factory.mktemp("mimic"))


def session_file(store: Path) -> Path:
    (path,) = store.rglob("*.jsonl.zst")
    return path


def show(capsys, *args) -> str:
    assert cli.main(["show", *map(str, args), "--color", "never"]) == 0
    return capsys.readouterr().out



def decompressed(path: Path) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())


@pytest.mark.parametrize("mode", ["h2", "h1"])
def test_a_cursor_session_reads_as_a_conversation(tmp_path, capsys, mimic, mode):
    conv = conversation(mimic, SECRET)
    (write_h2_session if mode == "h2" else write_h1_session)(tmp_path, mimic, conv, Masker(KEY))
    path = session_file(tmp_path)
    out = show(capsys, path)
    assert_in_order(out, "(cursor.agent, claude-4-sonnet, streamed)  [cursor]",
             "user: Why does src/app.py crash? My key is [MASKED:github-pat:", "if it matters.",
             "> assistant: " + "".join(DELTAS_1),
             f"> assistant tool call exec field 2.2 [{EXEC_ID}]: 2.2.1: {FILE_PATH}",
             f"> tool result exec field 2.2 [{EXEC_ID}]: 2.2.1: import os",
             "def main():",
             "> assistant: " + "".join(DELTAS_2),
             f"note: files: {FILE_PATH}")
    assert out.count("[1] ") == 1 and "[2] " not in out  # one conversation; the posts are inside it
    if mode == "h1":
        assert "HTTP/1.1 fallback: 3 BidiAppend post(s) joined to this RunSSE stream by their request id req-5c1d2e3f" in out
    assert SECRET not in out
    assert SECRET.encode() not in decompressed(path)  # nor anywhere in the artifact
    assert read_session(path).problems == []


def test_tree_and_descriptors_show_every_field(tmp_path, capsys, mimic):
    write_h2_session(tmp_path, mimic, conversation(mimic, SECRET), Masker(KEY))
    path = session_file(tmp_path)
    raw = show(capsys, path, "--tree")
    assert_in_order(raw, "client message 0 (", "compressed gzip)", "1:", "2:", "1:", "1:", "1: 'Why does src/app.py",
             "server message 3", "2:", "1: 1 (varint)", "2:", "1: 'src/app.py'", "15: 'exec-7f3a9c21'",
             "end of stream: ok")
    named = show(capsys, path, "--tree", "--descriptors", mimic.descriptor_set)
    assert_in_order(named, "tool call read_file [exec-7f3a9c21]: exec_server_message.read_file.path: src/app.py",
             "1 run_request:", "2 action:", "1 user_action:", "1 message:", "1 text: 'Why does",
             "2 exec_server_message:", "2 read_file:", "1 path: 'src/app.py'", "14 turn_ended:", "1 output_tokens: 42")
    assert SECRET not in raw + named


def test_an_end_of_stream_error_is_shown(tmp_path, capsys, mimic):
    write_h2_session(tmp_path, mimic, conversation(mimic, SECRET), Masker(KEY),
                     end_error={"code": "resource_exhausted", "message": "usage limit reached"})
    assert "note: end of stream: error resource_exhausted: usage limit reached" in show(capsys, session_file(tmp_path))


def test_an_unknown_schema_shows_strings_with_field_paths_never_hex(tmp_path, capsys):
    from recorder.store.bodies import BodyBytes, BodyStream, ChunkBytes

    w = SessionWriter(tmp_path, Masker(KEY))
    flow = w.new_flow()
    req = wire.encode([wire.Field(1, "s", "SELECT plan FROM billing"),
                       wire.Field(2, "m", [wire.Field(3, "s", "eu-west-1"), wire.Field(4, "v", 7)]),
                       wire.Field(5, "b64", b"\x00\xff\x10\x80" * 8)])
    w.request(flow, "https://internal.example/acme.billing.v1.Plans/Get", [["content-type", "application/grpc"]],
              BodyBytes(envelope(req), masker=w.masker, content_type="application/grpc"))
    w.response(flow, [["content-type", "application/grpc"]])
    st = BodyStream(None, masker=w.masker, content_type="application/grpc")
    reply = wire.encode([wire.Field(1, "m", [wire.Field(2, "s", "plan: enterprise")]), wire.Field(9, "i32", 5)])
    w.record("http.chunk", {"flow": flow, "dir": "response", "n": 0, "body": ChunkBytes(envelope(reply), st, True)})
    w.end(flow)
    w.reg.close_all("shutdown")
    assert w.writer.stop(timeout=30)
    out = show(capsys, session_file(tmp_path))
    assert_in_order(out, "(grpc, streamed)", "client: 1: SELECT plan FROM billing", "2.3: eu-west-1", "> server: 1.2: plan: enterprise",
             "no schema: strings are shown with their field paths")
    assert "00ff1080" not in out and "AP8QgAD/" not in out  # no hex or base64 dump of the bytes field
    tree = show(capsys, session_file(tmp_path), "--tree")
    assert_in_order(tree, "1: 'SELECT plan FROM billing'", "4: 7 (varint)", "5: bytes AP8Q", "9: 5 (fixed32)")


def test_records_view_summarises_rpc_bodies(tmp_path, capsys, mimic):
    write_h2_session(tmp_path, mimic, conversation(mimic, SECRET), Masker(KEY))
    out = show(capsys, session_file(tmp_path), "--records")
    assert "0 message(s), 1 held for masking" in out  # the prompt ends as a secret could begin
    assert "1.2.1.1.1: Why does src/app.py crash?" in out
    assert "end of stream: ok" in out and SECRET not in out


def test_json_transcript_has_the_turn(tmp_path, capsys, mimic):
    write_h1_session(tmp_path, mimic, conversation(mimic, SECRET), Masker(KEY))
    assert cli.main(["show", str(session_file(tmp_path)), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    (turn,) = doc["exchanges"]
    assert turn["protocol"] == "cursor.agent" and turn["model"] == "claude-4-sonnet"
    kinds = [(m["role"], p["type"]) for m in turn["reply"] for p in m["parts"]]
    assert kinds == [("assistant", "text"), ("assistant", "tool_call"), ("tool", "tool_result"), ("assistant", "text")]
    result = turn["reply"][2]["parts"][0]
    assert result["id"] == EXEC_ID and FILE_CONTENT.strip() in result["text"]


def test_mask_remasks_connect_messages(tmp_path, capsys, mimic):
    """A session recorded before a rule existed: `wiretrail mask` masks inside its protobuf
    messages and keeps them decodable."""
    acme = "acme_" + "Z9y8X7w6V5u4T3s2R1q0P9o8N7m6L5k4"
    conv = conversation(mimic, acme)
    write_h2_session(tmp_path / "store", mimic, conv, Masker(KEY))  # the built-in rules do not know acme_
    src = session_file(tmp_path / "store")
    assert acme.encode() in decompressed(src)
    config = tmp_path / "gw.toml"
    config.write_text(f'[storage]\ndir = "{tmp_path / "store"}"\n[identity]\nmode = "none"\n'
                      '[[masking.rules]]\nid = "acme"\nregex = "acme_[A-Za-z0-9]{32}"\n')
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert cli.main(["mask", str(src), "--config", str(config), "--out", str(out_dir)]) == 0
    capsys.readouterr()
    new = session_file(out_dir)
    data = decompressed(new)
    assert acme.encode() not in data and b"[MASKED:acme:" in data
    assert read_session(new).problems == []
    text = show(capsys, new)
    assert_in_order(text, "user: Why does src/app.py crash? My key is [MASKED:acme:", "> assistant: Let me look at the file.")


def test_the_review_page_shows_rpc_bodies_as_text(tmp_path, mimic):
    from recorder.review.session_view import record_view

    write_h2_session(tmp_path, mimic, conversation(mimic, SECRET), Masker(KEY))
    records = read_session(session_file(tmp_path)).records
    views = [record_view(r) for r in records if r["t"] == "http.chunk"]
    text = "\n".join("".join(seg.text for seg in v.body.text) for v in views if v.body)
    assert "1.2.1.1.1: Why does src/app.py crash? My key is [MASKED:github-pat:" in text
    assert "1.1.1: Let me " in text and SECRET not in text
