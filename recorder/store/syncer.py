"""Group fsyncs of session files, on a thread of their own.

With `storage.fsync = "batch"` a record is acknowledged once its block is handed to the OS, and
its fsync follows with the group. Done on the writer thread, the group's fsyncs (one per session
file written since the last group: 500 of them when 500 sessions open at once) held up every
record queued behind them, the requests of new sessions included. Here they run beside the
writer, which goes on writing and acknowledging. A file whose fsync fails is reported back to
the writer (`failures`), which ends that session as for any storage error.

The ledger's fsync runs here too (`submit_call`): with many sessions opening, the ledger is written
at every batch, and its group fsync held the writer for milliseconds at a time.

The writer calls `release(fd)` before it closes a file descriptor: a queued fsync of it is
dropped, and one in progress is waited for, so an fsync never reaches a reused descriptor.
"""
from __future__ import annotations

import collections
import os
import threading
from collections.abc import Callable


def fsync_dir(path, fsync: Callable[[int], None] | None = None) -> None:
    """Make new directory entries (a new session file's name) durable."""
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            (fsync or os.fsync)(dfd)  # looked up now: tests replace os.fsync
        finally:
            os.close(dfd)
    except OSError:
        pass  # the directory entry is made durable with the next fsync that works


class Syncer:
    def __init__(self, on_failure: Callable[[], None] | None = None):
        self._cond = threading.Condition()
        # fd -> (session id, path), ("dir", path) -> (None, path), ("call", key) -> (None, job); in order
        self._pending: dict = {}
        self._busy: int | None = None  # the fd being fsynced now
        self._stopping = False
        self.failures: collections.deque = collections.deque()  # (session id, OSError)
        self._on_failure = on_failure
        self._thread = threading.Thread(target=self._run, name="wiretrail-fsync", daemon=True)
        self._thread.start()

    def submit(self, jobs: list[tuple[int, str, object]], dirs=()) -> None:
        """fsync these (fd, session id, path) soon, and these directories (new files' entries); an
        fd or directory already queued is fsynced once."""
        with self._cond:
            for fd, sid, path in jobs:
                self._pending.setdefault(fd, (sid, path))
            for d in dirs:
                self._pending.setdefault(("dir", d), (None, d))
            self._cond.notify()

    def submit_call(self, key: str, job: Callable[[], None]) -> None:
        """Run `job` (an fsync that reports its own outcome, such as the ledger's) on this thread
        soon; one still queued under the same key is not queued twice."""
        with self._cond:
            self._pending.setdefault(("call", key), (None, job))
            self._cond.notify()

    def release(self, fd: int) -> None:
        """Before the writer closes `fd`: drop its queued fsync, wait for one in progress."""
        with self._cond:
            self._pending.pop(fd, None)
            while self._busy == fd:
                self._cond.wait()

    def busy(self) -> bool:
        """An fsync is queued or running (the writer then looks again within COALESCE: the ledger
        head it makes durable is to be anchored)."""
        return bool(self._pending) or self._busy is not None

    def drain(self) -> None:
        """Until every fsync submitted so far is done."""
        with self._cond:
            while self._pending or self._busy is not None:
                self._cond.wait()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._thread.join(5.0)

    @staticmethod
    def fsync(fd: int) -> None:
        os.fsync(fd)

    def _fsync_dir(self, path) -> None:
        fsync_dir(path, self.fsync)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if not self._pending:
                    return
                fd = next(iter(self._pending))
                sid, path = self._pending.pop(fd)
                self._busy = fd
            try:
                if isinstance(fd, tuple) and fd[0] == "call":
                    path()
                elif isinstance(fd, tuple):
                    self._fsync_dir(path)
                else:
                    self.fsync(fd)
            except OSError as e:
                self.failures.append((sid, path, e))
                if self._on_failure is not None:
                    self._on_failure()
            finally:
                with self._cond:
                    self._busy = None
                    self._cond.notify_all()
