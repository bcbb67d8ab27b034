"""The fail-closed wait for a record (recorder/store/record_waits.py), driven with a plain asyncio
loop and a fake writer that acks from a thread of its own, as the real one does. No mitmproxy."""
import asyncio
import threading

from recorder.store.record_waits import NOT_RESPONDING, RecordWaits
from recorder.store.writer import RECORD_LOST, StorageError


class FakeSession:
    """A session whose records wait in `pending` until the test acks them from another thread."""

    def __init__(self):
        self.pending = []  # (rtype, fields, ack)

    def record(self, rtype, fields, ack=None):
        self.pending.append((rtype, fields, ack))

    def ack_from_thread(self, err=None, count=None):
        """Ack the oldest `count` pending records (all by default) on a thread, as the writer does."""
        take = self.pending[:count] if count is not None else list(self.pending)
        del self.pending[:len(take)]
        t = threading.Thread(target=lambda: [ack(err) for _, _, ack in take])
        t.start()
        return t


class Calls:
    """The callbacks RecordWaits reports through, as lists."""

    def __init__(self):
        self.failing, self.recovered, self.record_errors = [], [], []

    def waits(self, loop, write_timeout=30.0) -> RecordWaits:
        return RecordWaits(loop, write_timeout, on_failing=self.failing.append,
                           on_recovered=lambda: self.recovered.append(True),
                           on_record_error=self.record_errors.append, where="/srv/store")


async def within(fut, seconds=5.0):
    return await asyncio.wait_for(fut, seconds)


def test_a_record_acked_from_the_writer_thread_resolves_its_wait_with_none():
    async def main():
        calls, session = Calls(), FakeSession()
        waits = calls.waits(asyncio.get_running_loop())
        fut = waits.write(session, "http.request", {"flow": "f1"})
        assert not fut.done() and session.pending[0][:2] == ("http.request", {"flow": "f1"})
        session.ack_from_thread(None)
        assert await within(fut) is None
        assert waits.failing == set() and calls.failing == calls.recovered == []

    asyncio.run(main())


def test_an_ack_with_an_error_answers_the_wait_with_it_and_the_cause_is_reported_once():
    async def main():
        loop = asyncio.get_running_loop()
        calls, session = Calls(), FakeSession()
        waits = calls.waits(loop)
        full = StorageError("disk full", "No space left on device")
        futs = [waits.write(session, "http.request", {"flow": f"f{i}"}) for i in range(3)]

        def writer_fails():  # the writer reports the cause on its thread, then acks each record
            waits.storage_error_from_thread(full)
            waits.storage_error_from_thread(full)
            for _, _, ack in session.pending:
                ack(full)

        t = threading.Thread(target=writer_fails)
        t.start()
        assert [await within(f) for f in futs] == [full] * 3
        t.join()
        # The causes were reported on the loop before the acks that answered the waits.
        assert calls.failing == [full] and waits.failing == {"disk full"}
        # The failure does not short-cut the wait: the next record still waits for its own ack.
        session.pending.clear()
        nxt = waits.write(session, "http.request", {"flow": "f4"})
        assert not nxt.done()
        session.ack_from_thread(None)
        assert await within(nxt) is None
        assert waits.failing == set() and calls.recovered == [True]

    asyncio.run(main())


def test_a_record_late_past_write_timeout_is_refused_then_later_ones_at_once_until_an_ack_recovers():
    async def main():
        loop = asyncio.get_running_loop()
        calls, session = Calls(), FakeSession()
        waits = calls.waits(loop, write_timeout=0.2)
        waits.start()
        try:
            started = loop.time()
            late = waits.write(session, "http.request", {"flow": "f1"})
            err = await within(late)
            assert isinstance(err, StorageError) and err.cause == NOT_RESPONDING
            assert loop.time() - started >= 0.2
            assert "0.2 s (storage.write_timeout)" in err.detail and "/srv/store" in err.detail
            assert waits.failing == {NOT_RESPONDING} and [e.cause for e in calls.failing] == [NOT_RESPONDING]
            # Refused at once, without waiting another write_timeout; the record is still handed over.
            again = waits.write(session, "http.request", {"flow": "f2"})
            assert again.done() and again.result().cause == NOT_RESPONDING
            assert [f["flow"] for _, f, _ in session.pending] == ["f1", "f2"]
            assert len(calls.failing) == 1  # once per cause, not once per request
            # Storage comes back: the late records' acks clear the failure.
            session.ack_from_thread(None).join()
            for _ in range(250):
                if not waits.failing:
                    break
                await asyncio.sleep(0.02)
            assert waits.failing == set() and calls.recovered == [True]
            fresh = waits.write(session, "http.request", {"flow": "f3"})
            assert not fresh.done()
            session.ack_from_thread(None)
            assert await within(fresh) is None
        finally:
            waits.stop()

    asyncio.run(main())


def test_expiry_answers_only_the_records_still_unwritten():
    async def main():
        loop = asyncio.get_running_loop()
        calls, session = Calls(), FakeSession()
        waits = calls.waits(loop, write_timeout=0.0)  # every deadline has passed at the next expire
        written = waits.write(session, "http.request", {"flow": "f1"})
        stuck = waits.write(session, "http.request", {"flow": "f2"})
        session.ack_from_thread(None, count=1)
        assert await within(written) is None
        waits.expire()
        assert written.result() is None and stuck.result().cause == NOT_RESPONDING
        assert [e.cause for e in calls.failing] == [NOT_RESPONDING]

    asyncio.run(main())


def test_a_batch_of_acks_wakes_the_loop_once():
    async def main():
        loop = asyncio.get_running_loop()
        wakeups = []
        threadsafe = loop.call_soon_threadsafe

        def counting(callback, *args, **kwargs):
            wakeups.append(callback)
            return threadsafe(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting
        calls, session = Calls(), FakeSession()
        waits = calls.waits(loop)
        futs = [waits.write(session, "http.chunk", {"n": i}) for i in range(100)]
        # The writer acks all 100 while the loop is busy (here: blocked on the join).
        session.ack_from_thread(None).join()
        assert [await within(f) for f in futs] == [None] * 100
        assert len(wakeups) == 1
        # The next batch schedules a wake-up of its own.
        more = [waits.write(session, "http.chunk", {"n": i}) for i in range(2)]
        session.ack_from_thread(None).join()
        assert [await within(f) for f in more] == [None, None]
        assert len(wakeups) == 2

    asyncio.run(main())


def test_a_lost_record_is_reported_for_its_flow_and_is_no_storage_failure():
    async def main():
        loop = asyncio.get_running_loop()
        calls = Calls()
        waits = calls.waits(loop)
        lost = StorageError(RECORD_LOST, "a value could not be encoded", flow="f1")
        waits.storage_error(lost)
        waits.storage_error(lost)
        assert calls.record_errors == [lost, lost] and calls.failing == [] and waits.failing == set()

    asyncio.run(main())
