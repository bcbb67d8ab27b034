"""Format v1: the reader reads what the codec writes, reports damage without raising,
and the spec's test vector is what the codec produces."""
import importlib.util
import os
import re
from pathlib import Path

import orjson
import pytest
import zstandard

from recorder.forensics.reader import flow_records, iter_session_files, read_session
from recorder.forensics.summary import summarize
from recorder.store import format_v1
from recorder.store.bodies import BodyBytes, BodyStream, ChunkBytes
from recorder.store.sessions import SessionRegistry
from recorder.store.writer import RecordWriter
from tests.support.artifacts import recorded_body

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "tests" / "vectors"
SID = "01KDVDNA00B8Y9W7VV5N66X2GB"
FLOW = "11111111-2222-3333-4444-555555555555"


def _load_vector_module():
    spec = importlib.util.spec_from_file_location("v1_basic", VECTORS / "v1_basic.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def open_fields(sid=SID):
    return {
        "session": sid,
        "identity": {"sub": "alice", "email": "a@example.com", "groups": ["eng"], "iss": "https://idp/", "method": "jwt"},
        "client": {"ip": "127.0.0.1", "port": 40000},
        "gateway": {"host": "gw", "version": "0.1.0"},
        "key": None,
    }


def request_fields(flow=FLOW, body=b'{"q":"hi"}', streamed=False):
    return {
        "flow": flow,
        "conn": "c1",
        "connection": "openai",
        "method": "POST",
        "url": "https://api.openai.com/v1/chat/completions",
        "http_version": "HTTP/1.1",
        "headers": [["content-type", "application/json"], ["authorization", "[credential:openai]"]],
        "body": None if streamed else format_v1.encode_body(body),
        "streamed": streamed,
    }


def sample_batches():
    """A session the way the capture writes one, in writer batches."""
    binary = os.urandom(3000)  # incompressible: raw zstd blocks
    big = b"A" * 300_000  # long runs: RLE blocks, and more than one block per flush
    chunks = [b"data: {\"delta\":\"he\"}\n\n", b"data: {\"delta\":\"llo\"}\n\n", b"data: [DONE]\n\n"]
    batches = [
        [("session.open", 100.0, open_fields()), ("http.request", 100.1, request_fields())],
        [("http.response", 100.2, {"flow": FLOW, "status": 200, "reason": "OK", "headers": [], "body": None, "streamed": True})],
        [("http.chunk", 100.3 + i / 10, {"flow": FLOW, "dir": "response", "n": i, "body": format_v1.encode_body(c)}) for i, c in enumerate(chunks)],
        [
            ("http.end", 100.7, {"flow": FLOW, "size": {"request": 10, "response": 62}, "duration_ms": 600.0, "ttfb_ms": 100.0}),
            ("http.request", 101.0, request_fields("f2", body=binary)),
            ("http.response", 101.1, {"flow": "f2", "status": 200, "headers": [], "body": format_v1.encode_body(big), "streamed": False}),
            ("http.error", 101.2, {"flow": "f2", "phase": "client", "message": "client disconnected"}),
        ],
        [("session.close", 102.0, {"reason": "shutdown", "counts": {"flows": 2, "records": 11, "errors": 1}, "duration_s": 2.0})],
    ]
    return batches, binary, big, chunks


def write_session(path: Path, batches, *, finish=True):
    """Write like the writer: one stream, FLUSH_BLOCK after each batch, FINISH at the end.
    Returns (file bytes, lines, [(offset after batch i, records so far)])."""
    chain = format_v1.Chain()
    cobj = zstandard.ZstdCompressor(level=3).compressobj()
    out = b""
    lines = []
    ends = []
    for batch in batches:
        batch_lines = [chain.next_line(t, ts, f) for t, ts, f in batch]
        lines.extend(batch_lines)
        out += cobj.compress(b"".join(x + b"\n" for x in batch_lines)) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        ends.append((len(out), len(lines)))
    if finish:
        out += cobj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)
    return out, lines, ends


def write_lines(path: Path, lines: list[bytes], *, finish=True) -> None:
    cobj = zstandard.ZstdCompressor().compressobj()
    data = cobj.compress(b"".join(x + b"\n" for x in lines)) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    if finish:
        data += cobj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
    path.write_bytes(data)


def simple_lines(n_requests=3):
    chain = format_v1.Chain()
    lines = [chain.next_line("session.open", 1.0, open_fields())]
    for i in range(n_requests):
        lines.append(chain.next_line("http.request", 2.0 + i, request_fields(f"f{i}", body=f"body {i}".encode())))
    lines.append(chain.next_line("session.close", 9.0, {"reason": "idle", "counts": {"flows": n_requests}}))
    return lines


def kinds(read):
    return {(p.seq, p.kind) for p in read.problems}


# -- round trip ------------------------------------------------------------------------------


def test_round_trip_reads_every_record_and_reports_closed(tmp_path):
    batches, binary, big, chunks = sample_batches()
    path = tmp_path / f"{SID}.jsonl.zst"
    _, lines, _ = write_session(path, batches)
    r = read_session(path)
    assert r.problems == []
    assert r.state == "closed" and r.closed and r.frame_ended and not r.truncated_tail
    assert r.session_id == SID
    assert r.lines == lines
    assert r.records == [orjson.loads(x) for x in lines]
    assert [x["seq"] for x in r.records] == list(range(len(lines)))
    assert r.head == format_v1.line_hash(lines[-1])
    assert r.last_seq == len(lines) - 1
    # Bodies come back byte for byte, buffered and streamed.
    assert recorded_body(r.records, FLOW, "request") == b'{"q":"hi"}'
    assert recorded_body(r.records, FLOW, "response") == b"".join(chunks)
    assert recorded_body(r.records, "f2", "request") == binary
    assert recorded_body(r.records, "f2", "response") == big
    flows = flow_records(r.records)
    assert list(flows) == [FLOW, "f2"]
    assert [x["t"] for x in flows["f2"]] == ["http.request", "http.response", "http.error"]
    with pytest.raises(KeyError):
        recorded_body(r.records, "nope", "request")


def test_summary_of_a_session(tmp_path):
    batches, binary, big, _ = sample_batches()
    path = tmp_path / f"{SID}.jsonl.zst"
    write_session(path, batches)
    s = summarize(read_session(path))
    assert (s.session_id, s.state, s.sub, s.client_ip, s.client) == (SID, "closed", "alice", "127.0.0.1", "127.0.0.1:40000")
    assert (s.start, s.duration, s.exchanges, s.records) == (100.0, 2.0, 2, 11)
    # FLOW has an http.end (10 + 62); f2 has none, so its recorded body sizes count.
    assert s.bytes == 72 + len(binary) + len(big)


def test_reads_what_the_real_writer_writes(tmp_path):
    w = RecordWriter(fsync="never")
    w.start()
    reg = SessionRegistry(w, tmp_path / "store", idle_timeout=60, max_duration=600)
    s = reg.begin_flow("alice", {"sub": "alice"}, ("10.0.0.7", 5555))
    s.record("http.request", {**request_fields(body=b""), "body": BodyBytes(b"hello")})
    stream = BodyStream()
    for i, part in enumerate([b"one ", b"two ", b"three"]):
        s.record("http.chunk", {"flow": FLOW, "dir": "response", "n": i, "body": ChunkBytes(part, stream, final=i == 2)})
    reg.end_flow(s)
    reg.close_all()
    assert w.stop()
    [path] = list(iter_session_files(tmp_path / "store"))
    r = read_session(path)
    assert r.problems == [] and r.state == "closed"
    assert r.session_id == s.id and path.name == s.id + format_v1.FILE_SUFFIX
    assert recorded_body(r.records, FLOW, "request") == b"hello"
    assert recorded_body(r.records, FLOW, "response") == b"one two three"


# -- chain breaks ------------------------------------------------------------------------------


def test_edited_record_breaks_the_chain_at_the_next_line(tmp_path):
    lines = simple_lines()
    lines[2] = lines[2].replace(b"body 1", b"body X")
    path = tmp_path / "s.jsonl.zst"
    write_lines(path, lines)
    r = read_session(path)
    assert r.state == "broken"
    assert kinds(r) == {(3, "prev")}
    assert "seq 2" in str(r.problems[0])
    assert len(r.records) == 5  # still read in full
    # The chain cannot tell which of seq 2 and 3 changed: the intact prefix ends at seq 2.
    assert r.head == format_v1.line_hash(lines[2])


def test_deleted_line_is_a_seq_gap_and_a_prev_mismatch(tmp_path):
    lines = simple_lines()
    del lines[2]
    path = tmp_path / "s.jsonl.zst"
    write_lines(path, lines)
    r = read_session(path)
    assert r.state == "broken"
    assert kinds(r) == {(3, "seq"), (3, "prev")}
    assert any("expected seq 2, found 3" in p.message for p in r.problems)


def test_reordered_lines_are_detected(tmp_path):
    lines = simple_lines()
    lines[1], lines[2] = lines[2], lines[1]
    path = tmp_path / "s.jsonl.zst"
    write_lines(path, lines)
    r = read_session(path)
    assert r.state == "broken"
    assert {(2, "seq"), (2, "prev"), (1, "seq"), (1, "prev")} <= kinds(r)


def test_gap_in_seq_with_a_correct_prev(tmp_path):
    chain = format_v1.Chain()
    lines = [chain.next_line("session.open", 1.0, open_fields())]
    chain.seq += 1  # skip one number, keep the hash chain right
    lines.append(chain.next_line("http.request", 2.0, request_fields()))
    path = tmp_path / "s.jsonl.zst"
    write_lines(path, lines)
    r = read_session(path)
    assert kinds(r) == {(2, "seq")}


def test_bad_prev(tmp_path):
    lines = [
        format_v1.encode_record(0, "f" * 64, "session.open", 1.0, open_fields()),
    ]
    lines.append(format_v1.encode_record(1, "0" * 64, "http.request", 2.0, request_fields()))
    lines.append(format_v1.encode_record(2, "nothex", "http.request", 3.0, request_fields()))
    path = tmp_path / "s.jsonl.zst"
    write_lines(path, lines)
    r = read_session(path)
    assert kinds(r) == {(0, "prev"), (1, "prev"), (2, "prev")}
    assert "64 zeros" in r.problems[0].message
    assert "not a lowercase hex" in r.problems[2].message


def test_record_checks_version_fields_and_order(tmp_path):
    chain = format_v1.Chain()
    no_method = request_fields()
    del no_method["method"]
    lines = [
        chain.next_line("http.request", 1.0, request_fields()),  # first record is not session.open
        chain.next_line("http.request", 2.0, no_method),
        chain.next_line("http.chunk", 2.5, {"flow": FLOW, "dir": "up", "body": {"text": "x", "size": 1}}),
        chain.next_line("session.open", 3.0, open_fields()),
        chain.next_line("session.close", 4.0, {"reason": "idle", "counts": {}}),
        chain.next_line("http.end", 5.0, {"flow": FLOW, "size": {}, "duration_ms": 1, "ttfb_ms": None}),
    ]
    lines.append(format_v1.line_hash(lines[-1]).encode())  # valid JSON? no: bare text
    path = tmp_path / "s.jsonl.zst"
    write_lines(path, lines)
    r = read_session(path)
    found = kinds(r)
    assert (0, "order") in found
    assert (1, "field") in found and any('missing field "method"' in p.message for p in r.problems)
    assert (2, "field") in found
    assert (3, "order") in found
    assert (5, "order") in found
    assert (6, "json") in found
    assert r.state == "broken"


@pytest.mark.parametrize("dest, ok", [
    (None, True),
    ({"host": "api.openai.com", "port": 443, "address": None}, True),
    ({"host": "127.0.0.1", "port": 8443, "address": "127.0.0.1"}, True),
    ({"host": "api.openai.com", "port": "443", "address": None}, False),
    ({"host": "api.openai.com", "port": 443, "address": 7}, False),
    ({"port": 443, "address": None}, False),
    ("api.openai.com", False),
])
def test_the_destination_fields_are_checked(tmp_path, dest, ok):
    chain = format_v1.Chain()
    lines = [chain.next_line("session.open", 1.0, open_fields()),
             chain.next_line("http.request", 2.0, dict(request_fields(), dest=dest)),
             chain.next_line("http.end", 3.0, {"flow": FLOW, "size": {}, "duration_ms": 1, "ttfb_ms": None,
                                               "address": dest["address"] if isinstance(dest, dict) else None})]
    path = tmp_path / "s.jsonl.zst"
    write_lines(path, lines, finish=False)
    r = read_session(path)
    bad = [p for p in r.problems if "dest" in p.message or "address" in p.message]
    assert (not bad) == ok, [str(p) for p in r.problems]


def test_unsupported_version_and_unknown_types(tmp_path):
    chain = format_v1.Chain()
    lines = [chain.next_line("session.open", 1.0, open_fields()), chain.next_line("smtp.message", 2.0, {"flow": "t1"})]
    path = tmp_path / "s.jsonl.zst"
    write_lines(path, lines)
    r = read_session(path)
    assert r.problems == [] and r.records[1]["t"] == "smtp.message"  # kept, chained, not an error
    v2 = orjson.loads(lines[1])
    v2["v"] = 2
    lines[1] = orjson.dumps(v2)
    write_lines(path, lines)
    assert kinds(read_session(path)) == {(1, "version")}


def test_swapped_file_name_is_reported(tmp_path):
    other = "01KDVDNA00B8Y9W7VV5N66X2GC"
    path = tmp_path / f"{other}.jsonl.zst"
    write_lines(path, simple_lines())
    r = read_session(path)
    assert kinds(r) == {(0, "session")}
    assert other in r.problems[0].message and SID in r.problems[0].message


# -- crashes and damage ----------------------------------------------------------------------


def test_unended_frame_is_unsealed_with_every_record(tmp_path):
    batches, *_ = sample_batches()
    path = tmp_path / "s.jsonl.zst"
    _, lines, _ = write_session(path, batches, finish=False)
    r = read_session(path)
    assert r.problems == []
    assert r.state == "unsealed" and not r.closed and not r.frame_ended and not r.truncated_tail
    assert r.lines == lines


def test_missing_close_is_unsealed(tmp_path):
    batches, *_ = sample_batches()
    path = tmp_path / "s.jsonl.zst"
    write_session(path, batches[:-1], finish=True)
    r = read_session(path)
    assert r.problems == [] and r.frame_ended and r.state == "unsealed"


def test_truncated_at_every_offset_keeps_every_complete_block(tmp_path):
    batches, *_ = sample_batches()
    src = tmp_path / "full.jsonl.zst"
    data, lines, ends = write_session(src, batches)
    path = tmp_path / "cut.jsonl.zst"
    near_ends = {e + d for e, _ in ends for d in (-2, -1, 0, 1, 2)}
    for cut in sorted(c for c in set(range(0, len(data), 3)) | near_ends if 0 <= c < len(data)):
        path.write_bytes(data[:cut])
        r = read_session(path)  # never raises
        # Every batch whose flush is complete reads; a batch big enough for several
        # blocks may read in part. Never anything beyond what was written.
        expected = max([n for end, n in ends if end <= cut], default=0)
        upto = min([n for end, n in ends if end > cut], default=len(lines))
        assert expected <= len(r.lines) <= upto, cut
        assert r.lines == lines[: len(r.lines)], cut
        at_boundary = cut in {e for e, _ in ends}
        if not r.lines:
            assert r.state == "broken", cut  # not one record: empty, or cut in the first block
        else:
            assert r.problems == [], (cut, r.problems)
            assert r.state == "unsealed", cut
            assert r.truncated_tail == (not at_boundary), cut


def test_partial_last_line_is_a_truncated_tail(tmp_path):
    lines = simple_lines()
    cobj = zstandard.ZstdCompressor().compressobj()
    content = b"".join(x + b"\n" for x in lines)
    data = cobj.compress(content[:-20]) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    path = tmp_path / "s.jsonl.zst"
    path.write_bytes(data)
    r = read_session(path)
    assert r.problems == [] and r.truncated_tail and r.state == "unsealed"
    assert r.lines == lines[:-1]
    # The same bytes in an ended frame: the writer never ends a frame mid-line.
    path.write_bytes(data + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
    r = read_session(path)
    assert r.state == "broken" and {p.kind for p in r.problems} == {"tail"}


def test_garbage_empty_and_trailing_data(tmp_path):
    path = tmp_path / "s.jsonl.zst"
    path.write_bytes(b"")
    r = read_session(path)
    assert r.state == "broken" and [p.kind for p in r.problems] == ["empty"] and r.records == []

    path.write_bytes(b'{"v":1,"seq":0}\n' * 10)
    r = read_session(path)
    assert r.state == "broken" and [p.kind for p in r.problems] == ["not-zstd"]
    assert "zstd" in r.problems[0].message

    path.write_bytes(os.urandom(1000))
    assert read_session(path).state == "broken"

    path.write_bytes(zstandard.ZstdCompressor().compress(b"hello, not json\n"))
    r = read_session(path)
    assert r.state == "broken" and (0, "json") in kinds(r)

    write_lines(path, simple_lines())
    path.write_bytes(path.read_bytes() + zstandard.ZstdCompressor().compress(b"more\n"))
    r = read_session(path)
    assert r.state == "broken" and [p.kind for p in r.problems] == ["trailing-data"]
    assert len(r.records) == 5

    r = read_session(tmp_path / "missing.jsonl.zst")
    assert r.state == "broken" and [p.kind for p in r.problems] == ["io"]


def test_any_flipped_byte_never_raises(tmp_path):
    batches, *_ = sample_batches()
    src = tmp_path / "full.jsonl.zst"
    data, lines, ends = write_session(src, batches[:3])  # small blocks: every byte is tried
    path = tmp_path / "flip.jsonl.zst"
    states = set()
    for i in range(len(data)):
        damaged = bytearray(data)
        damaged[i] ^= 0x55
        path.write_bytes(bytes(damaged))
        r = read_session(path)
        states.add(r.state)
        assert all(isinstance(x, dict) for x in r.records)
        assert r.state in ("broken", "unsealed", "closed")
    assert "broken" in states


# -- files ------------------------------------------------------------------------------------


def test_iter_session_files(tmp_path):
    for rel in ["2026/01/02/B.jsonl.zst", "2026/01/01/A.jsonl.zst", "2025/12/31/Z.jsonl.zst", "2026/01/01/notes.txt"]:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    found = [p.relative_to(tmp_path).as_posix() for p in iter_session_files(tmp_path)]
    assert found == ["2025/12/31/Z.jsonl.zst", "2026/01/01/A.jsonl.zst", "2026/01/02/B.jsonl.zst"]
    one = tmp_path / "2026/01/01/A.jsonl.zst"
    assert list(iter_session_files(one)) == [one]
    with pytest.raises(FileNotFoundError):
        list(iter_session_files(tmp_path / "nope"))


# -- the spec's test vector --------------------------------------------------------------------


def test_vector_matches_codec_file_and_spec():
    vec = _load_vector_module()
    lines = vec.build_lines()
    assert (VECTORS / "v1-basic.jsonl").read_bytes() == b"".join(x + b"\n" for x in lines)
    spec = (ROOT / "docs" / "format.md").read_text()
    blocks = re.findall(r"```\n(\{.*?\})\n```\nsha256: `([0-9a-f]{64})`", spec)
    assert [(b.encode(), h) for b, h in blocks] == [(x, format_v1.line_hash(x)) for x in lines]
    assert [orjson.loads(x)["prev"] for x in lines] == [format_v1.ZERO_HASH] + [format_v1.line_hash(x) for x in lines[:-1]]
    assert "89348c1b23861986e51ae3cf1a08ef43417c94791575aeaf06a895dfa7b53152" == format_v1.line_hash(lines[0])


def test_vector_zst_reads_closed():
    vec = _load_vector_module()
    r = read_session(VECTORS / "v1-basic.jsonl.zst")
    assert r.problems == [] and r.state == "closed" and r.frame_ended
    assert r.session_id == vec.SESSION_ID
    assert r.lines == vec.build_lines()
    assert recorded_body(r.records, vec.FLOW_ID, "request") == vec.REQUEST_BODY


def test_a_bad_block_mid_file_keeps_the_records_before_it(tmp_path):
    batches, *_ = sample_batches()
    data, lines, ends = write_session(tmp_path / "full.jsonl.zst", batches)
    (at, before), (next_end, _) = ends[1], ends[2]
    path = tmp_path / "s.jsonl.zst"

    reserved = bytearray(data)
    reserved[at] |= 0x06  # block type 3: reserved, no encoder writes it
    path.write_bytes(bytes(reserved))
    r = read_session(path)
    assert r.state == "broken" and [p.kind for p in r.problems] == ["zstd"]
    assert "reserved zstd block type" in r.problems[0].message
    assert r.lines == lines[:before]

    garbled = bytearray(data)
    garbled[at + 3 : next_end] = b"\xff" * (next_end - at - 3)
    path.write_bytes(bytes(garbled))
    r = read_session(path)
    assert r.state == "broken" and r.lines[:before] == lines[:before]
