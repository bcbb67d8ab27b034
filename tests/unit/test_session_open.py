"""Issue 23, no new-session penalty: a new session's file is a spare renamed into place (not a
create), only after its ledger entry; spares that were tampered with are not used; an existing
file is never replaced; the ledger's group fsync and a wave of checkpoints do not hold up the
next record's ack."""
from __future__ import annotations

import errno
import os
import threading
import time
from pathlib import Path

import pytest

from recorder import cli
from recorder.store import ledger, signing, spare_files
from recorder.store import writer as writer_module
from recorder.store.ids import new_session_id
from recorder.store.sessions import SessionRegistry
from recorder.store.spare_files import SPARE_DIR, SpareFiles
from recorder.store.syncer import Syncer
from recorder.store.writer import RecordWriter
from tests.support.acks import wait_ack
from tests.support.checks import wait_until

IDENTITY = {"sub": "alice", "email": None, "groups": [], "iss": None, "method": "none", "authenticated": False}


def spare_inodes(store: Path) -> dict[int, str]:
    return {os.stat(p).st_ino: p.name for p in (store / SPARE_DIR).iterdir()}


def test_a_new_sessions_file_is_a_spare_renamed_into_place_after_its_ledger_entry(tmp_path, monkeypatch):
    store = tmp_path / "store"
    priv, pub, kid = signing.generate(tmp_path / "keys")
    signer = signing.load_signer(priv)
    created = []
    real_open = os.open

    def watch_open(path, flags, *a, **kw):  # a create of a session file would show here
        if flags & os.O_CREAT and str(path).endswith(".jsonl.zst"):
            created.append(str(path))
        return real_open(path, flags, *a, **kw)

    monkeypatch.setattr(os, "open", watch_open)
    w = RecordWriter(fsync="batch", storage_dir=store, signer=signer)
    w.start()
    try:
        assert wait_until(lambda: (store / SPARE_DIR).is_dir() and
                          len(list((store / SPARE_DIR).iterdir())) >= spare_files.START)
        spares = spare_inodes(store)
        reg = SessionRegistry(w, store, idle_timeout=60, max_duration=600, signing_key_id=kid)
        sessions = [reg.begin_flow("alice", IDENTITY, (f"10.0.0.{i}", 4000)) for i in range(20)]
        for i, s in enumerate(sessions):
            ack, done, box = wait_ack()
            s.record("http.error", {"flow": f"f{i}", "phase": "connect", "message": "refused"}, ack=ack)
            assert done.wait(10) and box["err"] is None
            assert s.path.exists()
            assert os.stat(s.path).st_ino in spares, "the session file was not one of the spares"
            entries = ledger.read_ledger(store / ledger.LEDGER_NAME).state.sessions
            assert s.id in entries, "the file exists before its ledger entry"
        assert created == []
        reg.close_all()
    finally:
        assert w.stop(timeout=10)
    assert cli.main(["verify", "--key", str(pub), str(store)]) == 0
    # The spares left over stay for the next start, out of every reader's sight.
    assert not list((store / SPARE_DIR).glob("*.jsonl.zst"))


def test_without_spares_the_file_is_created_as_before(tmp_path):
    store = tmp_path / "store"
    (store / SPARE_DIR).parent.mkdir(parents=True)
    (store / SPARE_DIR).write_text("not a folder")  # the pool cannot be made
    w = RecordWriter(fsync="never", storage_dir=store)
    w.start()
    try:
        reg = SessionRegistry(w, store, idle_timeout=60, max_duration=600)
        s = reg.begin_flow("alice", IDENTITY, ("10.0.0.1", 4000))
        ack, done, box = wait_ack()
        s.record("http.request", {"flow": "f", "method": "GET", "url": "http://x/"}, ack=ack)
        assert done.wait(10) and box["err"] is None and s.path.exists()
        reg.close_all()
    finally:
        assert w.stop(timeout=10)


def make_pool(store: Path, names: list[str]) -> SpareFiles:
    """A pool that holds exactly these names (its refill thread is not started)."""
    sp = SpareFiles(store)
    sp.dir.mkdir(parents=True)
    sp._names.extend(names)
    return sp


def test_a_spare_written_to_or_linked_elsewhere_or_replaced_by_a_symlink_is_not_used(tmp_path):
    store = tmp_path / "store"
    sp = make_pool(store, ["s-written", "s-linked", "s-symlink", "s-gone", "s-good"])
    (sp.dir / "s-written").write_bytes(b"planted")
    (sp.dir / "s-linked").touch()
    os.link(sp.dir / "s-linked", tmp_path / "elsewhere")
    victim = tmp_path / "victim"
    victim.touch()
    os.symlink(victim, sp.dir / "s-symlink")
    (sp.dir / "s-good").touch()
    good = os.stat(sp.dir / "s-good").st_ino
    day = store / "2026" / "12" / "03"
    day.mkdir(parents=True)
    fd = sp.take(day / "A.jsonl.zst")
    try:
        assert fd is not None and os.fstat(fd).st_ino == good == os.stat(day / "A.jsonl.zst").st_ino
    finally:
        os.close(fd)
    assert (sp.dir / "s-written").read_bytes() == b"planted" and victim.exists() and os.path.islink(sp.dir / "s-symlink")
    assert sp.take(day / "B.jsonl.zst") is None  # none left: the caller creates the file
    assert not (day / "B.jsonl.zst").exists()


def test_a_spare_never_replaces_an_existing_file(tmp_path):
    store = tmp_path / "store"
    sp = make_pool(store, ["s-one"])
    (sp.dir / "s-one").touch()
    existing = tmp_path / "session.jsonl.zst"
    existing.write_bytes(b"records")
    with pytest.raises(OSError) as e:
        sp.take(existing)
    assert e.value.errno == errno.EEXIST
    assert existing.read_bytes() == b"records"
    assert list(sp._names) == ["s-one"] and (sp.dir / "s-one").exists()  # kept for the next session


def test_a_burst_that_empties_the_pool_grows_it_to_twice_the_burst(tmp_path, monkeypatch):
    monkeypatch.setattr(spare_files, "QUIET", 0.01)
    store = tmp_path / "store"
    store.mkdir()
    sp = SpareFiles(store)
    sp.start()
    try:
        assert wait_until(lambda: len(sp) >= spare_files.START)
        day = store / "d"
        day.mkdir()
        fds = [sp.take(day / f"{i}.jsonl.zst") for i in range(100)]
        assert sum(fd is not None for fd in fds) == spare_files.START
        for fd in fds:
            if fd is not None:
                os.close(fd)
        assert sp.target == 200
        assert wait_until(lambda: len(sp) >= 200, timeout=60)
    finally:
        sp.stop()
    again = SpareFiles(store)  # the next start uses them, and keeps the pool that size
    again.start()
    try:
        assert len(again) >= 200 and again.target >= 200
    finally:
        again.stop()


def test_a_slow_ledger_fsync_does_not_hold_up_the_next_records_ack(tmp_path, monkeypatch):
    """The ledger is written at every batch that opens a session; its group fsync runs on the
    syncer thread, beside the writer. It still happens, and its head becomes the synced one."""
    store = tmp_path / "store"
    release = threading.Event()
    stuck = threading.Event()
    real = os.fsync
    w = RecordWriter(fsync="batch", fsync_interval=0.01, storage_dir=store)

    def slow_fsync(fd):
        if w._ledger is not None and fd == w._ledger.fd and w._started and threading.current_thread().name != \
                "wiretrail-writer":
            stuck.set()
            release.wait(10)
        real(fd)

    monkeypatch.setattr(os, "fsync", slow_fsync)
    monkeypatch.setattr(Syncer, "fsync", staticmethod(slow_fsync))
    w.start()
    try:
        reg = SessionRegistry(w, store, idle_timeout=60, max_duration=600)
        s = reg.begin_flow("alice", IDENTITY, ("10.0.0.1", 4000))
        ack, done, box = wait_ack()
        s.record("http.request", {"flow": "f1"}, ack=ack)
        assert done.wait(5) and box["err"] is None
        assert stuck.wait(5), "the ledger's group fsync never ran on the syncer thread"
        s2 = reg.begin_flow("alice", IDENTITY, ("10.0.0.2", 4000))  # a new session: a new ledger entry
        ack, done, box = wait_ack()
        s2.record("http.request", {"flow": "f2"}, ack=ack)
        assert done.wait(3), "the record waited for the ledger's fsync"
        assert box["err"] is None
        release.set()
        assert wait_until(lambda: w._ledger.synced is not None and w._ledger.synced[0] >= 2)
        reg.close_all()
    finally:
        release.set()
        assert w.stop(timeout=10)


def test_sessions_that_opened_together_get_their_checkpoints_a_few_at_a_time(tmp_path, monkeypatch):
    store = tmp_path / "store"
    priv, _, kid = signing.generate(tmp_path / "keys")
    w = RecordWriter(fsync="never", storage_dir=store, signer=signing.load_signer(priv), checkpoint_interval=0.3)
    per_tick = []  # checkpoints signed in each look at the sessions
    real_tick, real_sign = RecordWriter._tick, RecordWriter._sign

    def tick(self):
        per_tick.append(0)
        real_tick(self)

    def sign(self, sf, rtype):
        if rtype == "checkpoint":
            per_tick[-1] += 1
        real_sign(self, sf, rtype)

    monkeypatch.setattr(RecordWriter, "_tick", tick)
    monkeypatch.setattr(RecordWriter, "_sign", sign)
    w.start()
    try:
        reg = SessionRegistry(w, store, idle_timeout=60, max_duration=600, signing_key_id=kid)
        n = 3 * writer_module._CHECKPOINTS_PER_TICK
        for i in range(n):
            s = reg.begin_flow("alice", IDENTITY, (f"10.0.{i // 250}.{i % 250}", 4000))
            s.record("http.error", {"flow": f"f{i}", "phase": "connect", "message": "x"})
        # Every session gets its checkpoint (rule 7 holds), in more than one pass of the writer.
        assert wait_until(lambda: sum(per_tick) >= n)
        assert max(per_tick) == writer_module._CHECKPOINTS_PER_TICK
        reg.close_all()
    finally:
        assert w.stop(timeout=10)


def test_session_ids_stay_unique_across_a_fork():
    new_session_id()  # the pool of random bytes is filled in the parent
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.write(wfd, new_session_id(1.0).encode())
        os._exit(0)
    os.close(wfd)
    child = os.read(r, 64).decode()
    os.waitpid(pid, 0)
    os.close(r)
    assert child[10:] != new_session_id(1.0)[10:], "the child drew the same random bytes as the parent"


def test_the_first_of_many_new_sessions_is_acknowledged_before_the_last_ones_file_is_made(tmp_path, monkeypatch):
    store = tmp_path / "store"
    w = RecordWriter(fsync="batch", storage_dir=store)
    events = []
    real_create = RecordWriter._create_fd

    def create(self, path):
        events.append(("create", path.name))
        return real_create(self, path)

    monkeypatch.setattr(RecordWriter, "_create_fd", create)
    reg = SessionRegistry(w, store, idle_timeout=60, max_duration=600)
    n = 128  # more than one batch of opens (_OPENS_PER_BATCH)
    done = []
    for i in range(n):  # all queued before the writer starts: one burst
        s = reg.begin_flow("alice", IDENTITY, (f"10.0.{i // 250}.{i % 250}", 4000))
        ack, ev, box = wait_ack()
        s.record("http.error", {"flow": f"f{i}", "phase": "connect", "message": "x"},
                 ack=lambda err, i=i, ack=ack: (events.append(("ack", i)), ack(err)))
        done.append((ev, box))
    w.start()
    try:
        for ev, box in done:
            assert ev.wait(10) and box["err"] is None
        first_ack = events.index(("ack", 0))
        last_create = max(k for k, e in enumerate(events) if e[0] == "create")
        assert first_ack < last_create, "the first request waited for every new session's file"
        reg.close_all()
    finally:
        assert w.stop(timeout=10)


def test_a_day_folder_removed_while_the_gateway_runs_is_made_again(tmp_path):
    store = tmp_path / "store"
    w = RecordWriter(fsync="never", storage_dir=store)
    w.start()
    try:
        reg = SessionRegistry(w, store, idle_timeout=60, max_duration=600)
        paths = []
        for i in range(2):
            s = reg.begin_flow("alice", IDENTITY, (f"10.0.0.{i}", 4000))
            ack, done, box = wait_ack()
            s.record("http.error", {"flow": "f", "phase": "connect", "message": "x"}, ack=ack)
            assert done.wait(10) and box["err"] is None and s.path.exists()
            paths.append(s.path)
            if i == 0:
                reg.close_all()
                assert wait_until(lambda: ledger.read_ledger(store / ledger.LEDGER_NAME).state.sessions[s.id].state
                                  == "closed")
                s.path.unlink()
                s.path.parent.rmdir()  # as retention does with a folder it emptied
        reg.close_all()
    finally:
        assert w.stop(timeout=10)
    assert paths[1].exists()
