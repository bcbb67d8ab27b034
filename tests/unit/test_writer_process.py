"""The writer process: RecordWriter's interface, the work in a child; it fails closed if the child dies."""
import os
import signal
import threading
import time
from pathlib import Path

import orjson
import pytest
import zstandard
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from recorder.config import MaskingConfig
from recorder.masking import Masker
from recorder.store.bodies import BodyBytes, BodyStream, ChunkBytes
from recorder.store.signing import Signer
from recorder.store.writer import StorageError
from recorder.store.writer_process import ProcessRecordWriter
from tests.support.acks import wait_ack

TOKEN = "ghp_" + "x7Kq2mZpR4tVw9yB3nLc8dFh6jGs1aEoUiT5"


def lines_of(path: Path) -> list[dict]:
    data = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    return [orjson.loads(x) for x in data.split(b"\n") if x]


def test_records_bodies_streams_and_seal_written_by_the_child(tmp_path):
    signer = Signer.from_private(Ed25519PrivateKey.generate())
    masker = Masker.from_config(MaskingConfig(), b"k" * 32)
    w = ProcessRecordWriter(fsync="batch", fsync_interval=0.01, storage_dir=tmp_path, signer=signer)
    w.start()
    path = tmp_path / "2026/01/01/s.jsonl.zst"
    w.open_session("s", path, 1.0, {"session": "s"})
    ack, done, box = wait_ack()
    body = f'{{"token": "{TOKEN}"}}'.encode()
    w.record("s", "http.request", 2.0, {"flow": "f", "body": BodyBytes(body, masker=masker,
                                                                       content_type="application/json")}, ack)
    assert done.wait(10) and box["err"] is None
    # A secret split across two chunks of one stream: the stream's masker state lives in the child.
    st = BodyStream(None, 0, masker=masker, content_type="text/plain")
    half = len(TOKEN) // 2
    w.record("s", "http.chunk", 3.0, {"flow": "f", "n": 0, "body": ChunkBytes(b"a " + TOKEN[:half].encode(), st)})
    w.record("s", "http.chunk", 3.1, {"flow": "f", "n": 1, "body": ChunkBytes(TOKEN[half:].encode() + b" b", st, True)})
    w.close_session("s", 4.0, {"reason": "shutdown"})
    assert w.stop(10)
    raw = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    assert TOKEN.encode() not in raw
    recs = lines_of(path)
    assert [r["t"] for r in recs] == ["session.open", "http.request", "http.chunk", "http.chunk", "session.close",
                                      "seal"]
    assert b"[MASKED:github-pat" in raw
    assert (tmp_path / "ledger.jsonl").exists()


def test_a_replaced_masker_reaches_the_child(tmp_path):
    # Known secrets are added on SIGHUP: the new masker must be the one the child uses.
    w = ProcessRecordWriter(fsync="never")
    w.start()
    path = tmp_path / "s.jsonl.zst"
    w.open_session("s", path, 1.0, {})
    first = Masker.from_config(MaskingConfig(), b"k" * 32)
    second = Masker.from_config(MaskingConfig(), b"k" * 32, known_secrets=["plain-rotated-value-1234"])
    w.record("s", "http.request", 2.0, {"body": BodyBytes(b"x plain-rotated-value-1234 y", masker=first)})
    w.record("s", "http.request", 3.0, {"body": BodyBytes(b"x plain-rotated-value-1234 y", masker=second)})
    w.close_session("s", 4.0, {})
    assert w.stop(10)
    recs = lines_of(path)
    assert "plain-rotated-value-1234" in recs[1]["body"]["text"]
    assert "plain-rotated-value-1234" not in recs[2]["body"]["text"]


def test_a_dead_child_fails_every_pending_and_later_ack(tmp_path):
    errors = []
    w = ProcessRecordWriter(fsync="never", on_error=errors.append)
    w.start()
    path = tmp_path / "s.jsonl.zst"
    w.open_session("s", path, 1.0, {})
    ack, done, box = wait_ack()
    w.record("s", "http.request", 2.0, {}, ack)
    assert done.wait(10) and box["err"] is None
    os.kill(w._proc.pid, signal.SIGKILL)
    w._proc.wait(10)
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        time.sleep(0.01)
    ack, done, box = wait_ack()
    w.record("s", "http.request", 3.0, {}, ack)
    assert done.wait(10) and isinstance(box["err"], StorageError)
    assert box["err"].cause == "writer process gone"
    assert len(errors) == 1 and errors[0].cause == "writer process gone"
    assert w.stop(5) is False  # it did not end by a stop


def test_the_child_ends_without_sealing_when_the_gateway_is_gone(tmp_path):
    signer = Signer.from_private(Ed25519PrivateKey.generate())
    w = ProcessRecordWriter(fsync="always", storage_dir=tmp_path, signer=signer)
    w.start()
    path = tmp_path / "s.jsonl.zst"
    w.open_session("s", path, 1.0, {})
    ack, done, box = wait_ack()
    w.record("s", "http.request", 2.0, {}, ack)
    assert done.wait(10) and box["err"] is None
    import socket
    w._sock.shutdown(socket.SHUT_RDWR)  # what the child sees when the gateway dies: the end of its input
    assert w._proc.wait(10) != 0
    assert [r["t"] for r in lines_of(path)] == ["session.open", "http.request"]


def test_on_an_event_loop_acks_arrive_on_the_loop_and_stop_drains_them(tmp_path):
    import asyncio

    async def run():
        loop = asyncio.get_running_loop()
        w = ProcessRecordWriter(fsync="batch", storage_dir=tmp_path)
        w.start()
        path = tmp_path / "s.jsonl.zst"
        w.open_session("s", path, 1.0, {})
        threads = set()
        fut = loop.create_future()

        def ack(err):
            threads.add(threading.get_ident())
            fut.set_result(err)  # no call_soon_threadsafe needed: this runs on the loop

        # Bigger than a socket buffer: sending it must not block the loop (the rest waits in _out).
        w.record("s", "http.request", 2.0, {"body": BodyBytes(os.urandom(3 << 20).hex().encode())}, ack)
        assert await asyncio.wait_for(fut, 20) is None
        # A record nobody waits for is held a moment, then sent on its own (a timer on the loop).
        w.record("s", "http.response", 2.5, {"quiet": True})
        deadline = loop.time() + 10
        while [r["t"] for r in lines_of(path)][-1:] != ["http.response"] and loop.time() < deadline:
            await asyncio.sleep(0.02)  # the loop runs: the writer's timer can fire
        assert [r["t"] for r in lines_of(path)][-1] == "http.response"
        late = []
        for i in range(200):
            w.record("s", "http.chunk", 3.0, {"n": i}, late.append)
        w.close_session("s", 4.0, {})
        assert w.stop(20)  # with the loop held, stop itself reads the last acks
        return threads, late

    threads, late = asyncio.run(run())
    assert threads == {threading.get_ident()}
    assert late == [None] * 200
    assert [r["t"] for r in lines_of(tmp_path / "s.jsonl.zst")][-1] == "session.close"


def test_both_writers_offer_the_one_writer_interface():
    import inspect

    from recorder.store import writer_protocol
    from recorder.store.writer import RecordWriter

    methods = [n for n, v in vars(writer_protocol.Writer).items() if callable(v) and not n.startswith("_")]
    assert {"record", "open_session", "close_session", "barrier", "stop", "pending_bytes"} <= set(methods)
    for name in methods:
        want = inspect.signature(getattr(writer_protocol.Writer, name))
        for cls in (RecordWriter, ProcessRecordWriter):
            got = inspect.signature(getattr(cls, name))
            assert list(got.parameters) == list(want.parameters), f"{cls.__name__}.{name}{got} is not {name}{want}"
    for cls in (RecordWriter, ProcessRecordWriter):
        with pytest.raises(ValueError, match="fsync must be one of"):
            cls(fsync="sometimes")


def test_the_process_writer_speaks_only_the_named_messages():
    """Every frame both ways is one of writer_protocol's messages: the wire has one definition."""
    import pickle

    from recorder.store import writer_protocol as wp

    sent = []
    w = ProcessRecordWriter()
    w._send_frame = lambda data, *a, **k: sent.append(pickle.loads(data))
    w._started = True
    w.open_session("s", Path("/nonexistent/s.jsonl.zst"), 1.0, {"a": 1})
    w.record("s", "http.request", 2.0, {"flow": "f"}, lambda err: None)
    w.close_session("s", 3.0, {})
    w.barrier(lambda err: None)
    w.flush_soon()
    assert [type(m) for m in sent] == [wp.Open, wp.Record, wp.Close, wp.Barrier, wp.Flush]
    assert sent[1].rtype == "http.request" and sent[1].ack_id is not None and sent[0].ack_id is None


@pytest.mark.parametrize("kind", ["thread", "process"])
def test_wait_opened_says_why_the_ledger_could_not_be_opened(tmp_path, kind):
    """What the gateway's start-up waits for (addons/startup.py StoreOpened): None once the
    writer holds the ledger, the reason when another writer holds it."""
    from recorder.store.writer import RecordWriter

    cls = ProcessRecordWriter if kind == "process" else RecordWriter
    first = RecordWriter(fsync="batch", storage_dir=tmp_path)
    first.start()
    second = cls(fsync="batch", storage_dir=tmp_path)
    try:
        assert first.wait_opened(30) is None
        second.start()
        err = second.wait_opened(30)
        assert isinstance(err, StorageError) and err.cause == "ledger locked", err
        assert "another gateway holds the ledger" in err.detail
    finally:
        second.stop(10)
        first.stop(10)
