"""The fail-closed wait for a record: a future per record handed to the writer, answered on the
event loop when the writer acks it, or when storage.write_timeout passes first. Plain asyncio
(the gateway's Capture holds one; tests drive it with a loop of their own)."""
from __future__ import annotations

import asyncio
import collections
from typing import Callable

from recorder.store.writer import RECORD_LOST, RECORD_REPAIRED, StorageError

NOT_RESPONDING = "storage not responding"  # the cause when a record is late past storage.write_timeout


def _resolve(fut: asyncio.Future, err) -> None:
    if not fut.done():
        fut.set_result(err)


class RecordWaits:
    """Futures for records being written, and the storage failure in force.

    `write` hands a record to its session and returns a future that gets None once the record is
    on disk, or the StorageError saying why not. A record not written within `write_timeout` (a
    write stuck in the kernel: a hung disk or NFS mount) gets NOT_RESPONDING, and while that holds
    later writes are answered with it at once. Each failure cause is reported once through
    `on_failing`; the next record written clears them all (`on_recovered`). A single record lost
    or repaired (not storage) goes to `on_record_error`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        write_timeout: float,
        *,
        on_failing: Callable[[StorageError], None],
        on_recovered: Callable[[], None],
        on_record_error: Callable[[StorageError], None],
        where: str = "the store",
    ):
        self.loop = loop
        self.write_timeout = write_timeout
        self._on_failing = on_failing
        self._on_recovered = on_recovered
        self._on_record_error = on_record_error
        self._where = where  # named in the timeout's message
        self.failing: set[str] = set()  # the causes of the storage failure in force
        self._acked: collections.deque = collections.deque()  # (future, error) from the writer's thread
        self._acks_scheduled = False
        # (deadline, future) of the records waited for, oldest first (one timeout: deadlines in order).
        self._waiting: collections.deque = collections.deque()
        self._watch: asyncio.Task | None = None

    def start(self) -> None:
        """Start the write_timeout watchdog (on the loop)."""
        if self._watch is None:
            self._watch = self.loop.create_task(self._watch_deadlines())

    def stop(self) -> None:
        if self._watch is not None:
            self._watch.cancel()
            self._watch = None

    async def _watch_deadlines(self) -> None:
        interval = max(0.05, min(1.0, self.write_timeout / 4))
        while True:
            await asyncio.sleep(interval)
            self.expire()

    def write(self, session, rtype: str, fields: dict) -> asyncio.Future:
        """Hand a record to `session` (its `record(rtype, fields, ack=)`); the future gets None once
        it is written, or the error."""
        fut = self.loop.create_future()

        def ack(err):  # on the writer's thread
            self._acked.append((fut, err))
            if not self._acks_scheduled:
                # One wake-up of the loop per batch of acks, not one per ack: each costs a
                # syscall on the writer's thread and a GIL hand-off.
                self._acks_scheduled = True
                self.loop.call_soon_threadsafe(self._resolve_acked)

        session.record(rtype, fields, ack=ack)
        if NOT_RESPONDING in self.failing:
            # Storage is stuck: refuse at once rather than after another write_timeout. The
            # record stays queued; its ack, when it comes, says storage is back.
            fut = self.loop.create_future()
            fut.set_result(StorageError(NOT_RESPONDING, "earlier records are still not written"))
            return fut
        self._waiting.append((self.loop.time() + self.write_timeout, fut))
        return fut

    def _resolve_acked(self) -> None:
        # Cleared before draining: an ack appended after this line schedules another call.
        self._acks_scheduled = False
        while self._acked:
            fut, err = self._acked.popleft()
            if err is None and self.failing:
                self.failing.clear()
                self._on_recovered()
            _resolve(fut, err)

    def expire(self) -> None:
        """Answer the records not written within write_timeout (the watchdog calls this)."""
        now = self.loop.time()
        waiting = self._waiting
        err = None
        while waiting and (waiting[0][1].done() or waiting[0][0] <= now):
            fut = waiting.popleft()[1]
            if not fut.done():
                err = err or StorageError(
                    NOT_RESPONDING, f"a record was not written within {self.write_timeout:g} s "
                    f"(storage.write_timeout); the disk or network file system under {self._where} may be hung")
                fut.set_result(err)
        if err is not None:
            self.storage_error(err)

    def storage_error_from_thread(self, err: StorageError) -> None:
        """The writer's on_error (on its thread)."""
        if not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self.storage_error, err)

    def storage_error(self, err: StorageError) -> None:
        if err.cause in (RECORD_LOST, RECORD_REPAIRED):
            self._on_record_error(err)  # one record of one flow, not storage: each time
        elif err.cause not in self.failing:  # once per cause, not once per request
            self.failing.add(err.cause)
            self._on_failing(err)
