"""The writer thread: records land in one chained zstd stream per session."""
import gzip
import hashlib
import os
import re
import stat
import threading
import time
from pathlib import Path

import orjson
import pytest
import zstandard

from recorder.store import format_v1, writer as writer_module
from recorder.store.bodies import BodyBytes, BodyStream, ChunkBytes
from recorder.store.ids import new_session_id
from recorder.store.sessions import SessionRegistry
from recorder.store.syncer import Syncer
from recorder.store.writer import RecordWriter, StorageError
from tests.support.acks import wait_ack
from tests.support.checks import wait_until


def decompress_lines(path: Path) -> list[bytes]:
    data = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


def frame_ended(path: Path) -> bool:
    d = zstandard.ZstdDecompressor().decompressobj()
    d.decompress(path.read_bytes())
    return d.eof


@pytest.mark.parametrize("fsync", ["batch", "always", "never"])
def test_records_are_chained_and_frame_ended_on_close(tmp_path, fsync):
    w = RecordWriter(fsync=fsync, fsync_interval=0.01)
    w.start()
    path = tmp_path / "2026/01/01/s.jsonl.zst"
    w.open_session("s", path, 1.0, {"session": "s"})
    ack, done, box = wait_ack()
    w.record("s", "http.request", 2.0, {"flow": "f", "body": BodyBytes(b'{"a": 1}')}, ack)
    assert done.wait(5) and box["err"] is None
    # Written (not yet closed): the prefix decodes, the frame is not ended.
    assert len(decompress_lines(path)) == 2 and not frame_ended(path)
    w.close_session("s", 3.0, {"reason": "shutdown"})
    assert w.stop()
    lines = decompress_lines(path)
    recs = [orjson.loads(x) for x in lines]
    assert [r["t"] for r in recs] == ["session.open", "http.request", "session.close"]
    assert [r["seq"] for r in recs] == [0, 1, 2]
    assert recs[0]["prev"] == format_v1.ZERO_HASH
    for prev_line, rec in zip(lines, recs[1:]):
        assert rec["prev"] == hashlib.sha256(prev_line).hexdigest()
    assert recs[1]["body"] == {"text": '{"a": 1}', "size": 8}
    assert frame_ended(path)
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_unwritable_storage_acks_an_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    errors = []
    w = RecordWriter(on_error=errors.append)
    w.start()
    w.open_session("s", blocker / "x" / "s.jsonl.zst", 1.0, {})
    ack, done, box = wait_ack()
    w.record("s", "http.request", 1.0, {"flow": "f"}, ack)
    assert done.wait(5)
    assert isinstance(box["err"], StorageError)
    assert errors and "cannot create" in errors[0].detail
    w.close_session("s", 2.0, {})
    assert w.stop()


def test_an_unencodable_record_is_written_repaired_not_dropped(tmp_path):
    """A value orjson cannot encode (a header with bytes that are not UTF-8, an object, a huge
    number) is repaired and said so; the record is written and its waiter gets success."""
    errors = []
    w = RecordWriter(on_error=errors.append)
    w.start()
    path = tmp_path / "s.jsonl.zst"
    w.open_session("s", path, 1.0, {})
    ack, done, box = wait_ack()
    bad_header = b"caf\xe9 \xff".decode("utf-8", "surrogateescape")  # as mitmproxy decodes such bytes
    w.record("s", "x", 1.0, {"flow": "f1", "bad": object(), "headers": [["x-odd", bad_header]], "n": 1 << 70}, ack)
    assert done.wait(5) and box["err"] is None
    ack2, done2, box2 = wait_ack()
    w.record("s", "y", 1.0, {"ok": 1}, ack2)
    assert done2.wait(5) and box2["err"] is None
    w.close_session("s", 2.0, {})
    assert w.stop()
    lines = [orjson.loads(x) for x in decompress_lines(path)]
    assert [x["t"] for x in lines] == ["session.open", "x", "y", "session.close"]
    x = lines[1]
    assert x["headers"] == [["x-odd", "caf\\xe9 \\xff"]] and x["n"] == str(1 << 70)
    assert x["bad"] == "[object value: not recorded]" and "invalid Unicode" in x["repaired"]
    assert [e.cause for e in errors] == [writer_module.RECORD_REPAIRED] and errors[0].flow == "f1"


def test_a_record_that_cannot_be_written_leaves_an_http_error_in_its_place(tmp_path, monkeypatch):
    from recorder.store import record_repair

    def broken(value):
        raise RuntimeError("cannot repair")

    monkeypatch.setattr(record_repair, "repair", broken)
    errors = []
    w = RecordWriter(on_error=errors.append)
    w.start()
    path = tmp_path / "s.jsonl.zst"
    w.open_session("s", path, 1.0, {})
    ack, done, box = wait_ack()
    w.record("s", "http.response", 1.0, {"flow": "f1", "bad": object()}, ack)
    assert done.wait(5) and isinstance(box["err"], StorageError) and box["err"].cause == writer_module.RECORD_LOST
    w.close_session("s", 2.0, {})
    assert w.stop()
    lines = [orjson.loads(x) for x in decompress_lines(path)]
    assert [x["t"] for x in lines] == ["session.open", "http.error", "session.close"]
    err = lines[1]
    assert err["flow"] == "f1" and err["phase"] == "record" and err["lost"] == "http.response"
    assert "missing from this session" in err["message"]
    assert errors and errors[0].cause == writer_module.RECORD_LOST and errors[0].flow == "f1"
    from recorder.forensics.verify import verify_file

    verdict = verify_file(path)  # verify reports the gap, with its seq, as damage (exit 3)
    assert any("GAP at seq 1: the http.response record of flow f1" in n for n in verdict.damage)


@pytest.mark.parametrize("fails_in", ["_flush_block", "_flush_ledger"])
def test_a_writer_bug_fails_every_waiting_and_later_record_instead_of_hanging(tmp_path, monkeypatch, fails_in):
    """An unexpected exception on the writer thread must not leave requests waiting forever."""
    errors = []
    w = RecordWriter(on_error=errors.append)

    def broken(*a):
        raise RuntimeError("boom")

    monkeypatch.setattr(w, fails_in, broken)
    w.start()
    w.open_session("s", tmp_path / "s.jsonl.zst", 1.0, {})
    acks = [wait_ack() for _ in range(3)]
    w.record("s", "http.request", 1.0, {"flow": "f1"}, acks[0][0])
    assert acks[0][1].wait(5), "the record in the failing batch was never answered"
    assert wait_until(lambda: errors, 5), "the failure was never reported"  # the thread is in its failed state
    w.record("s", "http.request", 2.0, {"flow": "f2"}, acks[1][0])
    w.barrier(acks[2][0])
    for ack, done, box in acks:
        assert done.wait(5), "a record after the failure was never answered"
        assert isinstance(box["err"], StorageError) and box["err"].cause == "writer failed"
    assert [e.cause for e in errors] == ["writer failed"]
    assert "RuntimeError: boom" in errors[0].detail and "restart the gateway" in errors[0].detail
    assert w.stop(timeout=5)


def test_batch_fsync_waits_one_interval_after_the_first_write_of_a_group(tmp_path, monkeypatch):
    """After a quiet spell the group fsync is not run at once, next to the request that was
    just acknowledged on its way upstream, but within fsync_interval of that write."""
    monkeypatch.setattr(writer_module, "COALESCE", 5.0)  # only the interval decides here
    w = RecordWriter(fsync="batch", fsync_interval=0.3)
    synced = []
    # the group's session files are fsynced on the syncer thread (recorder/store/syncer.py)
    def fsync(fd):  # session files only, not their directory
        if stat.S_ISREG(os.fstat(fd).st_mode):
            synced.append(time.monotonic())
        os.fsync(fd)

    monkeypatch.setattr(Syncer, "fsync", staticmethod(fsync))
    w.start()
    w.open_session("s", tmp_path / "s.jsonl.zst", 1.0, {})

    def write_acked(flow):
        ack, done, box = wait_ack()
        written = time.monotonic()
        w.record("s", "http.request", 2.0, {"flow": flow}, ack)
        assert done.wait(5) and box["err"] is None
        return written

    def wait_synced(count):
        deadline = time.monotonic() + 5
        while len(synced) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(synced) == count, "the group was never fsynced"

    write_acked("f1")
    wait_synced(1)
    time.sleep(0.5)  # a quiet spell longer than the interval
    written = write_acked("f2")
    wait_synced(2)
    assert synced[1] - written >= 0.25, "the group fsync ran right after the ack, not an interval later"
    w.close_session("s", 3.0, {})
    assert w.stop()


def test_many_sessions_interleaved_from_threads(tmp_path):
    w = RecordWriter(fsync_interval=0.005)
    w.start()
    paths = {f"s{i}": tmp_path / f"s{i}.jsonl.zst" for i in range(8)}
    for sid, p in paths.items():
        w.open_session(sid, p, 1.0, {})

    def produce(sid):
        for n in range(200):
            w.record(sid, "http.chunk", 1.0, {"n": n})

    threads = [threading.Thread(target=produce, args=(sid,)) for sid in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for sid in paths:
        w.close_session(sid, 2.0, {})
    assert w.stop()
    for p in paths.values():
        recs = [orjson.loads(x) for x in decompress_lines(p)]
        assert [r["n"] for r in recs if r["t"] == "http.chunk"] == list(range(200))
        assert [r["seq"] for r in recs] == list(range(202))


def test_gzip_stream_is_recorded_decoded_and_utf8_split_stays_text():
    text = "héllo wörld — ünïcode ✓ " * 50
    wire = gzip.compress(text.encode())
    st = BodyStream("gzip")
    from recorder.store.bodies import render_chunk

    out = []
    for i in range(0, len(wire), 7):
        out.append(render_chunk(ChunkBytes(wire[i : i + 7], st)))
    out.append(render_chunk(ChunkBytes(b"", st, final=True)))
    assert all("text" in b for b in out), "a split UTF-8 sequence must not turn a chunk into base64"
    assert "".join(b["text"] for b in out) == text
    assert st.wire == len(wire)


def test_binary_and_undecodable_bodies_lose_nothing():
    from recorder.store.bodies import render_buffered

    blob = os.urandom(4096)
    b = render_buffered(BodyBytes(blob))
    assert "b64" in b and format_v1.decode_body(b) == blob and b["size"] == 4096
    bad = render_buffered(BodyBytes(b"not gzip at all", "gzip"))
    assert bad["decoded"] is False and "decode_error" in bad
    assert format_v1.decode_body(bad) == b"not gzip at all"


def test_max_body_truncates_and_says_so():
    from recorder.store.bodies import render_buffered, render_chunk

    b = render_buffered(BodyBytes(b"x" * 100, max_body=10))
    assert b == {"text": "x" * 10, "size": 100, "truncated": True}
    st = BodyStream(max_body=15)
    first = render_chunk(ChunkBytes(b"a" * 10, st))
    second = render_chunk(ChunkBytes(b"b" * 10, st))
    assert first == {"text": "a" * 10, "size": 10}
    assert second == {"text": "b" * 5, "size": 10, "truncated": True}


def test_session_ids_sort_by_time_and_do_not_repeat():
    a = new_session_id(1_700_000_000.0)
    b = new_session_id(1_700_000_001.0)
    assert all(re.fullmatch(r"[0-9A-HJKMNP-TV-Z]{26}", s) for s in (a, b)) and a < b
    assert len({new_session_id(1.0) for _ in range(1000)}) == 1000


class FakeClock:
    def __init__(self):
        self.now = 1_700_000_000.0

    def __call__(self):
        return self.now


def test_sessions_per_identity_and_address_and_idle_close(tmp_path):
    clock = FakeClock()
    w = RecordWriter()
    w.start()
    reg = SessionRegistry(w, tmp_path, idle_timeout=10, max_duration=100, clock=clock)
    ident = {"sub": "anonymous"}
    s1 = reg.begin_flow("alice", ident, ("10.0.0.1", 1111))
    s2 = reg.begin_flow("alice", ident, ("10.0.0.1", 2222))
    s3 = reg.begin_flow("bob", ident, ("10.0.0.1", 3333))
    s4 = reg.begin_flow("alice", ident, ("10.0.0.2", 4444))
    assert s1 is s2 and s1 is not s3 and s1 is not s4
    for s in (s1, s2, s3, s4):
        reg.end_flow(s)
    clock.now += 5
    assert reg.expire() == 0
    clock.now += 6
    assert reg.expire() == 3 and len(reg) == 0
    s5 = reg.begin_flow("alice", ident, ("10.0.0.1", 1111))
    assert s5 is not s1
    reg.end_flow(s5)
    reg.close_all()
    assert w.stop()
    files = sorted(tmp_path.rglob("*.jsonl.zst"))
    assert len(files) == 4
    closes = [orjson.loads(decompress_lines(f)[-1]) for f in files]
    assert sorted(c["reason"] for c in closes) == ["idle", "idle", "idle", "shutdown"]
    # <dir>/YYYY/MM/DD/<id>.jsonl.zst
    assert files[0].relative_to(tmp_path).parts[:3] == ("2023", "11", "14")


def test_max_duration_waits_for_active_flows(tmp_path):
    clock = FakeClock()
    w = RecordWriter()
    w.start()
    reg = SessionRegistry(w, tmp_path, idle_timeout=1000, max_duration=60, clock=clock)
    s1 = reg.begin_flow("a", {}, ("1.2.3.4", 1))
    clock.now += 61
    reg.expire()
    assert not s1.closed, "a streaming flow keeps its session open"
    s2 = reg.begin_flow("a", {}, ("1.2.3.4", 2))
    assert s2 is not s1, "new flows go to a new session after max_duration"
    reg.end_flow(s1)
    assert s1.closed and s1.close_reason == "max_duration"
    reg.end_flow(s2)
    reg.close_all()
    assert w.stop()


def test_stream_cut_inside_a_utf8_character_loses_no_byte():
    """A stream that ends (or breaks) mid-character: the held-back bytes come out with the
    final batch, even an empty one, so the recorded bytes equal what crossed the wire."""
    from recorder.store.bodies import render_chunk

    data = "ok ✓".encode()[:-1]  # the last character cut after two of its three bytes
    st = BodyStream()
    first = render_chunk(ChunkBytes(data, st))
    last = render_chunk(ChunkBytes(b"", st, final=True))
    assert format_v1.decode_body(first) + format_v1.decode_body(last) == data


def test_a_slow_group_fsync_does_not_hold_up_the_next_records_ack(tmp_path, monkeypatch):
    """Issue 23: the group fsync of "batch" (one per session file written: hundreds when hundreds
    of sessions open at once) runs beside the writer; a record queued meanwhile is written and
    acknowledged without waiting for it. The fsync still happens."""
    release = threading.Event()
    started = threading.Event()
    real = os.fsync

    def slow_fsync(fd):
        started.set()
        release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    w = RecordWriter(fsync="batch", fsync_interval=0.01)
    w.start()
    try:
        w.open_session("a", tmp_path / "a.jsonl.zst", 1.0, {})
        ack, done, box = wait_ack()
        w.record("a", "http.request", 1.0, {"flow": "f1"}, ack)
        assert done.wait(5) and box["err"] is None
        assert started.wait(5), "the group fsync never started"
        # The fsync of a's file is stuck; a new session's request must still be acknowledged.
        w.open_session("b", tmp_path / "b.jsonl.zst", 2.0, {})
        ack, done, box = wait_ack()
        w.record("b", "http.request", 2.0, {"flow": "f2"}, ack)
        assert done.wait(3), "the record waited for another file's fsync"
        assert box["err"] is None
    finally:
        release.set()
        assert w.stop(timeout=10)


def _started_with_one_request(tmp_path):
    """A started writer whose `_wait` timeouts are listed, with session "s" open and one acked
    request written: (writer, the timeouts, the session's path)."""
    w = RecordWriter(storage_dir=tmp_path, fsync="batch", fsync_interval=0.01)
    waits: list[float] = []
    real_wait = w._wait

    def counting_wait(timeout):
        waits.append(timeout)
        real_wait(timeout)

    w._wait = counting_wait
    w.start()
    path = tmp_path / "2026/01/01/s.jsonl.zst"
    w.open_session("s", path, 1.0, {"session": "s"})
    ack, done, box = wait_ack()
    w.record("s", "http.request", 2.0, {"flow": "f"}, ack)
    assert done.wait(5) and box["err"] is None
    return w, waits, path


def test_an_idle_writer_sleeps_and_a_record_queued_then_is_still_written_within_coalesce(tmp_path, monkeypatch):
    """Idle, the thread wakes about once per IDLE_WAIT, not every COALESCE; a record nobody waits
    for that is queued while it sleeps wakes it (else it would wait up to IDLE_WAIT)."""
    monkeypatch.setattr(writer_module, "IDLE_WAIT", 30.0)
    w, waits, path = _started_with_one_request(tmp_path)
    try:
        # Idle: its fsync group done, its compressor pool full, it sleeps past COALESCE.
        assert wait_until(lambda: waits and waits[-1] > 1.0, timeout=10)
        asleep = len(waits)
        w.record("s", "http.response", 3.0, {"flow": "f", "status": 200})  # no ack: not urgent
        t0 = time.monotonic()
        assert wait_until(lambda: len(decompress_lines(path)) == 3, timeout=5)
        assert time.monotonic() - t0 < 1.0  # woken at once, not after the 30 s sleep
        assert len(waits) > asleep
    finally:
        w.close_session("s", 4.0, {"reason": "shutdown"})
        assert w.stop()


def test_an_urgent_record_is_not_held_by_the_gathering_after_an_idle_wake(tmp_path, monkeypatch):
    """Woken from its idle sleep by a record nobody waits for, the writer gathers for COALESCE;
    a record someone waits for (a request on its way upstream) ends that at once."""
    monkeypatch.setattr(writer_module, "IDLE_WAIT", 30.0)
    monkeypatch.setattr(writer_module, "COALESCE", 10.0)
    monkeypatch.setattr(writer_module, "_COMPRESSOR_POOL", 0)  # no warming between its 10 s looks
    w, waits, path = _started_with_one_request(tmp_path)
    try:
        # Asleep (once its group fsync is done: while the syncer works it looks every COALESCE).
        assert wait_until(lambda: waits and waits[-1] > 10.0, timeout=40)
        w.record("s", "http.response", 3.0, {"flow": "f", "status": 200})  # wakes it to gather
        assert wait_until(lambda: waits[-1] == 10.0, timeout=5)  # gathering for COALESCE
        ack, done, box = wait_ack()
        w.record("s", "http.request", 4.0, {"flow": "g"}, ack)
        assert done.wait(5) and box["err"] is None  # not after the 10 s gathering
        assert [orjson.loads(x)["t"] for x in decompress_lines(path)][-2:] == ["http.response", "http.request"]
    finally:
        w.close_session("s", 5.0, {"reason": "shutdown"})
        assert w.stop()
