"""The writer thread: the one place that touches session files.

Hooks on the event loop hand plain operations over an ordered queue. This thread turns them
into lines (orjson), chains the hashes, compresses each session into one zstd stream
(FLUSH_BLOCK after every batch, so a crash leaves a decodable prefix), writes, and
fsyncs in groups. The loop never waits on disk; a caller that must know a record is
written (a request about to go upstream) passes an `ack` callback.

With a signing key it also signs: a `checkpoint` once a session has records that no
signature covers yet and `checkpoint_interval` seconds passed since its last one, and a
`seal` after every `session.close`. With a storage dir it keeps the ledger
(recorder/store/ledger.py): recovery of crashed sessions when it starts, an entry per session
open and end, and retention tombstones. Time is known here, not on the event loop.

The ledger never lags behind the files in a way that looks like tampering: a session file
is created only once its `session.open` entry is written, a session whose storage fails
gets its `session.failed` entry at once, and a file is removed only once the entry that
says so is written. With `anchors`, each durable ledger head is handed to
recorder/store/anchors.py, whose thread sends it outside the store.
"""
from __future__ import annotations

import collections
import errno
import os
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import zstandard

from recorder.protocols.ws_masking import held_records
from recorder.store import format_v1, record_repair, recovery, retention, ledger as ledger_mod
from recorder.store.anchors import Anchorer
from recorder.store.bodies import BodyBytes, ChunkBytes, render_bodies
from recorder.store.fleet import STDIO_STORES
from recorder.store.records import CHECKPOINT, SEAL, SESSION_CLOSE, SESSION_OPEN
from recorder.store.signing import Signer
from recorder.store.spare_files import SpareFiles
from recorder.store.syncer import Syncer, fsync_dir
from recorder.store.writer_protocol import FSYNC_POLICIES, Ack, WriterSettings


_MAX_BATCH = 512
# Sessions opened in one batch: with hundreds opening at once, the first ones' requests are
# acknowledged (and go upstream) while the writer makes the next ones' files, not after all of them.
_OPENS_PER_BATCH = 32
COALESCE = 0.02  # seconds a record nobody waits for may sit before it is written
# How long the thread sleeps when nothing is queued and no time-based work is due sooner: an idle
# gateway does not wake its writer 50 times a second (a record queued meanwhile wakes it).
IDLE_WAIT = 1.0
_ZSTD_LEVEL = 3
# Level 3 with small match tables: a new session's compressor costs ~0.15 ms to set up instead of
# ~0.9 ms (level 3's own 128K/64K-entry tables are cleared at every start), and memory per open
# session falls with them. The window, which finds the history an LLM request resends, is level 3's.
# Measured on the bench's 100-turn chat: 158x against level 3's 159x.
_ZSTD_PARAMS = zstandard.ZstdCompressionParameters.from_level(_ZSTD_LEVEL, hash_log=13, chain_log=13)
_CHECKPOINTS_PER_TICK = 32  # checkpoints of quiet sessions made between two looks at the queue
# Compressors ready for new sessions: those of closed sessions, and new ones warmed while the writer
# is idle (a compressor's first use costs ~80 us here, a reused one's ~8 us).
_COMPRESSOR_POOL = 64


def _chained(chain: format_v1.Chain, records: list[tuple]) -> list[bytes]:
    """Lines for several records, all or none: the chain moves only once every one encoded."""
    scratch = format_v1.Chain(chain.seq, chain.prev)
    lines = [scratch.next_line(rtype, ts, render_bodies(fields, ts)) for rtype, ts, fields in records]
    chain.seq, chain.prev = scratch.seq, scratch.prev
    return lines


class StorageError(OSError):
    """A record could not be persisted. `cause` says why, for logging once per cause; `flow`
    names the flow when one record of it is concerned (RECORD_LOST, RECORD_REPAIRED)."""

    def __init__(self, cause: str, detail: str, flow: str | None = None):
        super().__init__(f"{cause}: {detail}")
        self.cause = cause
        self.detail = detail
        self.flow = flow
        self.at = time.time()


RECORD_LOST = "record lost"  # it could not be written at all: an http.error stands in its place
RECORD_REPAIRED = "record repaired"  # written, with the values that could not be encoded repaired


class Alarm(str):
    """An `on_event` text to log as an error, not a warning (it pickles as itself)."""


def describe_oserror(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "disk full"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return "no permission to write"
    if e.errno in (errno.ENOENT, errno.ENODEV, errno.ESTALE, errno.EIO):
        return "storage gone"
    return errno.errorcode.get(e.errno or 0, "I/O error")


class _Open:
    __slots__ = ("session_id", "path", "ts", "fields", "ack")

    def __init__(self, session_id, path, ts, fields, ack):
        self.session_id, self.path, self.ts, self.fields, self.ack = session_id, path, ts, fields, ack


class _Record:
    __slots__ = ("session_id", "rtype", "ts", "fields", "ack", "size")

    def __init__(self, session_id, rtype, ts, fields, ack, size=0):
        self.session_id, self.rtype, self.ts, self.fields, self.ack = session_id, rtype, ts, fields, ack
        self.size = size  # body bytes it carries, for the queue's back-pressure


def body_size(fields: dict) -> int:
    """The body bytes a record's fields carry (what makes a writer queue large)."""
    n = 0
    for value in fields.values():
        if isinstance(value, (BodyBytes, ChunkBytes)):
            n += len(value.data)
    return n


class _Close:
    __slots__ = ("session_id", "ts", "fields", "ack")

    def __init__(self, session_id, ts, fields, ack):
        self.session_id, self.ts, self.fields, self.ack = session_id, ts, fields, ack


class _Barrier:
    __slots__ = ("ack",)

    def __init__(self, ack):
        self.ack = ack


_STOP = object()


class _SessionFile:
    """Writer-thread state of one open session file."""

    __slots__ = (
        "session_id", "path", "fd", "compressor", "cobj", "chain", "pending", "error", "records",
        "unsigned", "last_signed", "durable_records", "durable_head", "in_ledger", "created", "ended",
    )

    def __init__(self, session_id: str, path: Path, fd: int, compressor: zstandard.ZstdCompressor | None = None):
        self.session_id = session_id
        self.path = path
        self.fd = fd
        self.compressor = compressor or zstandard.ZstdCompressor(compression_params=_ZSTD_PARAMS)
        self.cobj = self.compressor.compressobj()
        self.chain = format_v1.Chain()
        self.pending: list[bytes] = []
        self.error: StorageError | None = None
        self.records = 0
        self.unsigned = 0  # lines no checkpoint or seal covers yet
        self.last_signed = time.monotonic()  # when the last checkpoint was made (or the open)
        self.durable_records = 0  # lines handed to the OS in complete blocks
        self.durable_head = format_v1.ZERO_HASH
        self.in_ledger = False
        self.created = fd >= 0  # the file exists (it is made after its ledger entry)
        self.ended = False  # its ledger ending (close or failed) is made


class RecordWriter:
    """One writer thread per gateway, shared by every session."""

    def __init__(
        self,
        *,
        on_error: Callable[[StorageError], None] | None = None,
        signer: Signer | None = None,
        on_event: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.time,
        pid: int | None = None,
        **settings,
    ):
        """`settings`: writer_protocol.WriterSettings. `signer` given: checkpoints, seals and ledger
        signatures. `on_event` gets one-line notes worth logging (recoveries, retention, a damaged
        ledger; an `Alarm` is an error)."""
        self.settings = s = WriterSettings(**settings)
        self.fsync = s.fsync
        self.fsync_interval = s.fsync_interval
        self.on_error = on_error
        self.on_event = on_event
        self.signer = signer
        self.checkpoint_interval = s.checkpoint_interval
        self.retention_days = s.retention_days
        self.queue_limit = s.queue_limit
        self.clock = clock
        self.pid = pid if pid is not None else os.getpid()  # the gateway's, for the ledger's gateway.start
        self.storage_dir = s.storage_dir
        anchors = s.anchors
        self._ledger = ledger_mod.LedgerFile(self.storage_dir, signer) if self.storage_dir is not None else None
        self._ledger_error: StorageError | None = None
        self._opened = threading.Event()  # set once the first try to open the ledger is done
        self._open_error: StorageError | None = None
        self._after_ledger: list[Callable[[], None]] = []  # removals waiting for their entry to be written
        self._anchorer: Anchorer | None = None
        if anchors is not None and anchors.any and self._ledger is not None:
            self._anchorer = Anchorer(anchors, signer=signer, store=self.storage_dir, host=os.uname().nodename,
                                      on_event=self._event, alarm=Alarm)
        self._anchored: tuple | None = None  # the head last handed to the anchorer
        self._anchors_refusing = False
        self._next_scan = 0.0
        self._checkpoints_due = False  # _tick left due checkpoints for its next call
        self._next_retention = 0.0
        self._last_ledger_try = 0.0
        # One ordered queue; only operations someone waits for wake the thread at once.
        # The rest are picked up within COALESCE seconds, so a small exchange costs one
        # wake-up (and one GIL hand-off with the event loop) instead of four.
        self._ops: collections.deque = collections.deque()
        self._wake = threading.Event()
        self._idle = False  # the thread sleeps past COALESCE: the next op wakes it (_put)
        self._urgent = False  # an op someone waits for was queued since the thread last looked
        self._files: dict[str, _SessionFile] = {}
        self._dirty_fds: set[int] = set()
        self._compressors: list[zstandard.ZstdCompressor] = []  # of closed sessions, for new ones
        self._syncer: Syncer | None = None  # the group fsyncs of "batch", beside this thread
        self._made_dirs: set[Path] = set()
        # Files made ahead of time: a new session's file is a rename, not a create (spare_files.py).
        self._spares: SpareFiles | None = SpareFiles(self.storage_dir) if self.storage_dir is not None else None
        self._spares_started = False
        self._dirty_dirs: set[Path] = set()
        # When the oldest write not yet fsynced was made: the group's fsync is due one
        # fsync_interval later, not at once after a quiet spell, when it would compete with
        # the request that was just acknowledged on its way upstream.
        self._oldest_unsynced = time.monotonic()
        self._inflight: list | None = None  # the batch being written, until its acks are called
        self._queued_in = 0  # body bytes handed over (the loop's count)
        self._queued_out = 0  # body bytes written, or failed (the writer thread's count)
        self._thread = threading.Thread(target=self._run, name="wiretrail-writer", daemon=True)
        self._started = False

    # -- called from the event loop (or any thread) -------------------------------

    def start(self) -> None:
        if not self._started:
            self._started = True
            self._thread.start()

    def open_session(self, session_id: str, path: Path, ts: float, fields: dict, ack: Ack | None = None) -> None:
        self._put(_Open(session_id, path, ts, fields, ack), ack is not None)

    def record(self, session_id: str, rtype: str, ts: float, fields: dict, ack: Ack | None = None) -> None:
        size = body_size(fields)
        self._queued_in += size  # only the loop adds; only the writer thread adds to _queued_out
        self._put(_Record(session_id, rtype, ts, fields, ack, size), ack is not None)

    def pending_bytes(self) -> int:
        """Body bytes handed over and not yet written: what back-pressure watches."""
        return self._queued_in - self._queued_out

    def unwritten(self) -> str:
        """What is queued or being written, in words (for a stop that timed out)."""
        for _ in range(3):
            try:
                ops = list(self._inflight or ()) + list(self._ops)
                break
            except RuntimeError:  # the deque moved under us: the writer is alive after all
                continue
        else:
            return "unknown (the writer was busy)"
        records = [op for op in ops if isinstance(op, (_Open, _Record, _Close))]
        if not records:
            return "nothing"
        sessions = sorted({op.session_id for op in records})
        shown = ", ".join(sessions[:5]) + (f" and {len(sessions) - 5} more" if len(sessions) > 5 else "")
        return (f"{len(records)} record(s) with {self.pending_bytes()} body bytes, of {len(sessions)} session(s) "
                f"({shown})")

    def wait_opened(self, timeout: float) -> StorageError | None:
        """Blocks until the writer has tried to open its ledger (at most `timeout` s): why it could
        not (locked by another gateway, unwritable), or None (opened, or still trying)."""
        self._opened.wait(timeout)
        return self._open_error

    def _store_opened(self, err: StorageError | None) -> None:
        self._open_error = err
        self._opened.set()

    def close_session(self, session_id: str, ts: float, fields: dict, ack: Ack | None = None) -> None:
        self._put(_Close(session_id, ts, fields, ack), True)

    def barrier(self, ack: Ack) -> None:
        """`ack` runs once everything queued before it is written and fsynced."""
        self._put(_Barrier(ack), True)

    def flush_soon(self) -> None:
        """Write what is queued now rather than within COALESCE. For the end of an exchange:
        done while the loop is idle, that work is not in the way of the next request's ack."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> bool:
        """Write everything queued, fsync, and end the thread. True if it ended in time."""
        if not self._started:
            return True
        self._put(_STOP, True)
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def _put(self, op, urgent: bool) -> None:
        self._ops.append(op)  # deque.append is atomic: safe from any thread
        if urgent or len(self._ops) >= _MAX_BATCH:
            self._urgent = True
            self._wake.set()
        elif self._idle:
            self._wake.set()  # the thread then gathers for COALESCE, as if it had been polling

    # -- the writer thread ---------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except Exception as e:
            # A bug, not a storage error. Waiting callers must not hang: from here on every
            # operation is answered with this error (fail closed), until the stop.
            where = traceback.extract_tb(e.__traceback__)[-1]
            err = StorageError("writer failed", f"the record writer failed ({type(e).__name__}: {e}, at "
                               f"{os.path.basename(where.filename)}:{where.lineno}); records queued since its "
                               "last write are lost and nothing more can be recorded: restart the gateway")
            self._report(err)
            if not self._opened.is_set():
                self._store_opened(err)
            self._refuse_until_stop(err)

    def _refuse_until_stop(self, err: StorageError) -> None:
        # The failed batch first (none of its acks ran), then everything queued after it.
        self._ops.extendleft(reversed(self._inflight or ()))
        self._inflight = None
        while True:
            while self._ops:
                op = self._ops.popleft()
                if op is _STOP:
                    return
                if isinstance(op, _Record):
                    self._queued_out += op.size  # not written, but no longer held for writing
                if op.ack is not None:
                    self._call_ack(op.ack, err)
            self._wait(COALESCE)

    def _serve(self) -> None:
        if self.fsync == "batch":
            self._syncer = Syncer(on_failure=self._wake.set)
        if self._anchorer is not None:  # here, not in start(): writer_child.py runs _run() itself
            self._anchorer.start()
        if self._ledger is not None:
            self._open_ledger()
        self._store_opened(self._ledger_error)
        while True:
            self._urgent = False  # before the look at the queue: one queued after it sets it again
            timeout = COALESCE
            if self._dirty_fds or self._dirty_dirs:
                timeout = min(timeout, max(0.0, self._oldest_unsynced + self.fsync_interval - time.monotonic()))
            if self._checkpoints_due:
                timeout = min(timeout, max(0.0, self._next_scan - time.monotonic()))
            elif not self._ops and self._nothing_due_soon():
                if self.fsync != "never":
                    self._anchor()  # the ledger head the syncer made durable, before a long sleep
                timeout = self._idle_wait()
                self._idle = True
                if self._ops:  # queued before _put could see _idle
                    timeout = 0.0
            self._wait(timeout)
            if self._idle and self._ops and not self._urgent:
                # Woken from a long sleep by a record nobody waits for: gather the ones that
                # follow it for COALESCE, as the 20 ms poll did (an urgent one ends this at once).
                self._idle = False
                self._wait(COALESCE)
            self._idle = False
            if not self._ops:
                self._tick()
                if self._dirty_fds or self._dirty_dirs or self._ledger_dirty():
                    self._fsync_dirty(wait=False)
                self._sync_failures()
                if self.fsync != "never":
                    self._anchor()  # the ledger's fsync ran on the syncer thread: its head, once durable
                self._warm_compressors()
                continue
            while self._ops:
                batch = []
                opens = 0
                while self._ops and len(batch) < _MAX_BATCH and opens < _OPENS_PER_BATCH:
                    op = self._ops.popleft()
                    batch.append(op)
                    opens += isinstance(op, _Open)
                self._inflight = batch  # answered with the error if this batch fails unexpectedly
                if self._write_batch(batch):
                    self._fsync_dirty()
                    if self._syncer is not None:
                        self._syncer.stop()
                    if self._spares_started:
                        self._spares.stop()
                    if self._ledger is not None:
                        self._ledger.close()
                    if self._anchorer is not None:  # the last head, sent within the sink's timeout
                        self._anchorer.stop(self._anchorer.spec.timeout + 1.0)
                    return
            self._tick()
            if self.fsync == "batch" and (self._dirty_fds or self._dirty_dirs or self._ledger_dirty()) and \
                    time.monotonic() - self._oldest_unsynced >= self.fsync_interval:
                self._fsync_dirty(wait=False)
            self._sync_failures()

    def _nothing_due_soon(self) -> bool:
        """Nothing to write, fsync, retry or hand on within COALESCE (checked while idle)."""
        return not (self._dirty_fds or self._dirty_dirs or self._ledger_dirty() or self._after_ledger
                    or (self._ledger is not None and (self._ledger.pending or self._ledger.fd < 0))
                    or (self._syncer is not None and self._syncer.busy())
                    or (self._syncer is not None and self._syncer.failures)
                    or len(self._compressors) < _COMPRESSOR_POOL)

    def _idle_wait(self) -> float:
        """Until the next checkpoint of an open session or retention pass is due (_tick looks at
        most every 0.1 s), at most IDLE_WAIT."""
        now = time.monotonic()
        due = now + IDLE_WAIT
        if self.retention_days > 0:
            due = min(due, self._next_retention)
        if self.signer is not None:
            for sf in self._files.values():
                if sf.unsigned and sf.error is None and sf.fd >= 0:
                    due = min(due, sf.last_signed + self.checkpoint_interval)
        return max(0.0, max(due, self._next_scan) - now)

    def _wait(self, timeout: float) -> None:
        """Until an urgent op or the timeout. (recorder/store/writer_child.py reads its socket here.)"""
        self._wake.wait(timeout)
        # Clear before draining: an op added after this point sets the event again.
        self._wake.clear()

    def _write_batch(self, batch: list) -> bool:
        acks: list[tuple[Ack, str, BaseException | None]] = []
        barriers: list[Ack] = []
        touched: dict[str, _SessionFile] = {}
        closing: list[tuple[_SessionFile, _Close]] = []
        opening: list[_SessionFile] = []
        stop = False
        for op in batch:
            if op is _STOP:
                stop = True
                continue
            if isinstance(op, _Barrier):
                barriers.append(op.ack)
                continue
            err = self._apply(op, touched, closing, opening)
            if op.ack is not None:
                acks.append((op.ack, op.session_id, err))
        if opening:
            self._create_files(opening)

        if self.signer is not None:
            now = time.monotonic()
            ending = {sf.session_id for sf, _ in closing}
            for sf in touched.values():
                if sf.session_id not in ending and sf.error is None and sf.unsigned and \
                        now - sf.last_signed >= self.checkpoint_interval:
                    self._sign(sf, CHECKPOINT)
        for sf in touched.values():
            self._flush_block(sf)
        for sf, op in closing:
            self._finish(sf)
        # The ledger goes after the session blocks: an entry never names a head that is not
        # on disk yet. If the ledger cannot be written, nothing in this batch counts as written.
        ledger_err = self._flush_ledger()
        if self.fsync == "always" or barriers or stop or closing:
            self._fsync_dirty()

        # A record is acknowledged once its block was handed to the OS; with
        # fsync = "batch" its fsync follows with the group, after the ack.
        for ack, sid, err in acks:
            if err is None and sid in touched:
                err = touched[sid].error  # the write (or, with "always", the fsync) failed
            if err is None:
                err = ledger_err
            if err is None and self._anchorer is not None:
                err = self._anchor_refusal()
            self._call_ack(ack, err)
        for ack in barriers:
            self._call_ack(ack, None)
        self._queued_out += sum(op.size for op in batch if isinstance(op, _Record))
        self._inflight = None
        if self.fsync == "batch" and time.monotonic() - self._oldest_unsynced >= self.fsync_interval:
            self._fsync_dirty(wait=False)
        return stop

    def _apply(self, op, touched: dict, closing: list, opening: list) -> BaseException | None:
        """Serialize one operation into its session's pending lines."""
        if isinstance(op, _Open):
            try:
                if self._ledger is not None and self._ledger.fd < 0 and not self._open_ledger():
                    raise self._ledger_error
                if self._ledger is None:
                    sf = self._create(op.session_id, op.path)
                else:
                    sf = self._session_file(op.session_id, op.path, -1)  # made by _create_files
                    opening.append(sf)
            except StorageError as e:
                self._report(e)
                # Remember the failure so that later records of this session fail too.
                sf = _SessionFile(op.session_id, op.path, -1)
                sf.error = e
                self._files[op.session_id] = sf
                return e
            self._files[op.session_id] = sf
            rtype, fields = SESSION_OPEN, op.fields
        else:
            sf = self._files.get(op.session_id)
            if sf is None:
                return StorageError("unknown session", op.session_id)
            if isinstance(op, _Close):
                rtype, fields = SESSION_CLOSE, op.fields
            else:
                rtype, fields = op.rtype, op.fields
        if sf.error is not None:
            if isinstance(op, _Close):
                self._abandon(sf)
            return sf.error
        if isinstance(op, _Close) and isinstance(fields.get("counts"), dict):
            # What the file holds, counted here: checkpoints included, the seal not.
            fields = dict(fields, counts=dict(fields["counts"], records=sf.chain.seq + 1))
        # A record that cannot be rendered or encoded is written repaired, or an http.error
        # takes its place: nothing is dropped without a trace (recorder/store/record_repair.py).
        try:
            held = held_records(rtype, op.ts, fields)  # WebSocket messages masking holds (ws_masking.py)
        except Exception as e:
            held, lines, problem = None, [record_repair.lost_line(sf.chain, rtype, op.ts, fields, e)[0]], "lost"
        else:
            problem = None
            if held is None:
                line, problem = record_repair.line_for(sf.chain, rtype, op.ts, fields)
                lines = [] if line is None else [line]  # None: a streamed body's tick that released nothing
            else:
                try:
                    lines = _chained(sf.chain, held)
                except Exception:  # each on its own, repaired as need be
                    lines = []
                    for h_rtype, h_ts, h_fields in held:
                        line, p = record_repair.line_for(sf.chain, h_rtype, h_ts, h_fields)
                        lines.append(line)
                        problem = problem or p
        err = None
        if problem is not None:
            lost = problem.startswith("lost")
            err = StorageError(RECORD_LOST if lost else RECORD_REPAIRED, f"{rtype} in session {sf.session_id}: "
                               f"{problem}", flow=fields.get("flow") if isinstance(fields.get("flow"), str) else None)
            self._report(err)
            if not lost:
                err = None
        if not lines:
            return None
        sf.pending.extend(lines)
        sf.records += len(lines)
        sf.unsigned += len(lines)
        touched[sf.session_id] = sf
        if isinstance(op, _Open) and self._ledger is not None:
            self._ledger.append(ledger_mod.SESSION_OPEN, op.ts, {
                "session": sf.session_id, "path": self._ledger.relative(sf.path), "first": sf.chain.prev,
            })
            sf.in_ledger = True
        if isinstance(op, _Close):
            if self.signer is not None:
                self._sign(sf, SEAL)
            closing.append((sf, op))
        return err

    def _sign(self, sf: _SessionFile, rtype: str) -> None:
        """Append a checkpoint or seal: it signs its own seq and prev (docs/format.md)."""
        sig = self.signer.sign(format_v1.signed_bytes(sf.session_id, sf.chain.seq, sf.chain.prev))
        sf.pending.append(sf.chain.next_line(rtype, self.clock(), {"key": self.signer.key_id, "sig": sig}))
        sf.records += 1
        sf.unsigned = 0
        sf.last_signed = time.monotonic()

    def _abandon(self, sf: _SessionFile) -> None:
        """Close a session whose storage failed (its session.failed entry is made already)."""
        self._close_fd(sf)
        self._files.pop(sf.session_id, None)
        if sf.in_ledger and not sf.ended:
            self._ledger_end(sf)

    def _failed(self, sf: _SessionFile, err: StorageError) -> None:
        """A write for this session failed: no more records go to its file, and the ledger
        says so now, not when the session closes (a crash before then would leave a ledger that
        no longer matches the disk, which verify would have to call tampering)."""
        if sf.error is not None:
            return
        sf.error = err
        self._report(err)
        self._close_fd(sf)
        if sf.in_ledger and not sf.ended:
            self._ledger_end(sf)

    def _create_files(self, opening: list[_SessionFile]) -> None:
        """Make the files of sessions opened in this batch, once their session.open entries are
        written: a file the gateway made is always in the ledger, even if it stops right after."""
        err = self._flush_ledger()
        for sf in opening:
            if sf.error is not None:
                continue
            if err is not None:
                self._failed(sf, err)
                continue
            if not sf.in_ledger:  # its session.open could not be encoded: no entry, so no file
                self._failed(sf, StorageError("record could not be encoded", f"session.open of {sf.session_id}"))
                continue
            try:
                sf.fd = self._create_fd(sf.path)
            except StorageError as e:
                self._failed(sf, e)
                continue
            sf.created = True

    def _close_fd(self, sf: _SessionFile) -> None:
        if sf.compressor is not None:
            if len(self._compressors) < _COMPRESSOR_POOL:
                self._compressors.append(sf.compressor)  # compressobj() starts it afresh
            sf.compressor = None
        if sf.fd >= 0:
            self._dirty_fds.discard(sf.fd)
            if self._syncer is not None:
                self._syncer.release(sf.fd)
            try:
                os.close(sf.fd)
            except OSError:
                pass
            sf.fd = -1

    def _create(self, session_id: str, path: Path) -> _SessionFile:
        return self._session_file(session_id, path, self._create_fd(path))

    def _warm_compressors(self) -> None:
        """Top up the pool while nothing is queued, a few at a time."""
        for _ in range(8):
            if self._ops or len(self._compressors) >= _COMPRESSOR_POOL:
                return
            c = zstandard.ZstdCompressor(compression_params=_ZSTD_PARAMS)
            cobj = c.compressobj()
            cobj.compress(b"\n")
            cobj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)  # its context is allocated now
            self._compressors.append(c)

    def _session_file(self, session_id: str, path: Path, fd: int) -> _SessionFile:
        return _SessionFile(session_id, path, fd, self._compressors.pop() if self._compressors else None)

    def _create_fd(self, path: Path) -> int:
        try:
            try:
                if path.parent not in self._made_dirs:
                    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                    self._made_dirs.add(path.parent)
                fd = self._open_new(path)
            except FileNotFoundError:  # its folder was removed since (retention removes empty ones)
                path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                fd = self._open_new(path)
        except OSError as e:
            raise StorageError(describe_oserror(e), f"cannot create {path}: {e.strerror}") from e
        self._mark_unsynced()
        self._dirty_dirs.add(path.parent)
        return fd

    def _open_new(self, path: Path) -> int:
        # Each call here lets go of the GIL, and getting it back from a busy event loop is what a
        # new session costs the most: no stat of a folder known to exist.
        fd = self._spares.take(path) if self._spares_started else None
        if fd is None:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600)
        return fd

    def _flush_block(self, sf: _SessionFile) -> None:
        if not sf.pending or sf.error is not None:
            sf.pending.clear()
            return
        data = b"\n".join(sf.pending) + b"\n"
        sf.pending.clear()
        out = sf.cobj.compress(data) + sf.cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        self._write_all(sf, out)
        if sf.error is None:
            sf.durable_records, sf.durable_head = sf.chain.seq, sf.chain.prev

    def _finish(self, sf: _SessionFile) -> None:
        if sf.error is None:
            self._write_all(sf, sf.cobj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
        if sf.fd >= 0 and sf.error is None and self.fsync != "never":
            self._fsync_fd(sf)
        self._close_fd(sf)
        self._files.pop(sf.session_id, None)
        if sf.in_ledger and not sf.ended:
            self._ledger_end(sf)

    def _write_all(self, sf: _SessionFile, data: bytes) -> None:
        view = memoryview(data)
        try:
            while view:
                n = os.write(sf.fd, view)
                view = view[n:]
        except OSError as e:
            self._failed(sf, StorageError(describe_oserror(e), f"cannot write {sf.path}: {e.strerror}"))
            return
        if self.fsync != "never":
            self._mark_unsynced()
            self._dirty_fds.add(sf.fd)

    def _fsync_fd(self, sf: _SessionFile) -> None:
        try:
            os.fsync(sf.fd)
        except OSError as e:
            self._failed(sf, StorageError(describe_oserror(e), f"cannot fsync {sf.path}: {e.strerror}"))

    def _fsync_dirty(self, wait: bool = True) -> None:
        """fsync what was written since the last group. `wait=False` (the periodic group of "batch"):
        the session files are fsynced by the syncer thread, while this one goes on writing."""
        if self.fsync != "never" and self._ledger is not None:
            # First in the group: a session file is never durable before the entry that names it.
            if not wait and self._syncer is not None:
                job = self._ledger.fsync_job()
                if job is not None:
                    self._syncer.submit_call("ledger", lambda: job(self._ledger_sync_failed))
            else:
                if self._syncer is not None:
                    self._syncer.drain()  # a ledger fsync it holds must be done when this returns
                try:
                    self._ledger.fsync()
                except OSError as e:
                    self._report(StorageError(describe_oserror(e), f"cannot fsync {self._ledger.path}: {e.strerror}"))
            self._anchor()
        if self.fsync != "never":
            by_fd = {sf.fd: sf for sf in self._files.values() if sf.fd >= 0}
            if not wait and self._syncer is not None:
                self._syncer.submit([(fd, by_fd[fd].session_id, by_fd[fd].path) for fd in self._dirty_fds
                                     if fd in by_fd], self._dirty_dirs)
                self._dirty_dirs.clear()
            else:
                if self._syncer is not None:
                    self._syncer.drain()  # what it holds was written before: it is part of this group
                    self._sync_failures()
                for fd in list(self._dirty_fds):
                    sf = by_fd.get(fd)
                    if sf is not None:
                        self._fsync_fd(sf)
            for d in list(self._dirty_dirs):
                fsync_dir(d)
        self._dirty_fds.clear()
        self._dirty_dirs.clear()

    def _ledger_sync_failed(self, e: OSError) -> None:  # on the syncer thread
        self._syncer.failures.append((None, self._ledger.path, e))
        self._wake.set()

    def _sync_failures(self) -> None:
        """Sessions whose fsync failed on the syncer thread end as for any storage error; the
        ledger's is reported (and retried with the next group)."""
        while self._syncer is not None and self._syncer.failures:
            sid, path, e = self._syncer.failures.popleft()
            if sid is None:
                self._report(StorageError(describe_oserror(e), f"cannot fsync {path}: {e.strerror}"))
                continue
            sf = self._files.get(sid)
            if sf is not None:
                self._failed(sf, StorageError(describe_oserror(e), f"cannot fsync {path}: {e.strerror}"))

    def _mark_unsynced(self) -> None:
        """Before a write that an fsync must follow: a clean writer starts a new group."""
        if not (self._dirty_fds or self._dirty_dirs or self._ledger_dirty()):
            self._oldest_unsynced = time.monotonic()

    # -- ledger, checkpoints on a timer, retention ---------------------------------------

    def _ledger_dirty(self) -> bool:
        return self._ledger is not None and self._ledger.dirty and self.fsync != "never"

    def _open_ledger(self) -> bool:
        """Open the ledger, then recover crashed sessions. False (and reported) if it cannot."""
        lg = self._ledger
        self._last_ledger_try = time.monotonic()
        try:
            lg.open()
        except OSError as e:
            self._ledger_error = StorageError(
                describe_oserror(e) if e.errno != errno.EBUSY else "ledger locked",
                f"cannot open the ledger {lg.path}: {e.strerror or e}")
            self._report(self._ledger_error)
            return False
        self._ledger_error = None
        if self._spares is not None and not self._spares_started:
            self._spares_started = True  # after the lock: one gateway per store uses its spares
            self._spares.start()
        now = self.clock()
        start = {"host": os.uname().nodename, "pid": self.pid}
        if lg.created:
            # The stores of `wiretrail mcp-stdio` below it have ledgers of their own.
            stdio = self.storage_dir / STDIO_STORES
            orphans = sum(1 for f in self.storage_dir.rglob("*" + format_v1.FILE_SUFFIX) if stdio not in f.parents)
            if orphans:
                # Signed, so that deleting the ledger cannot pass as a store that never had one.
                start["ledger_missing"] = {"session_files": orphans}
                self._event(Alarm(
                    f"the ledger {lg.path} was MISSING (or empty) while the store holds {orphans} session file(s): "
                    "it was deleted, moved or emptied; starting a new ledger, and `wiretrail verify` will report "
                    "those files as not in the ledger"))
        if lg.reserve_error is not None:
            self._event(f"ledger: cannot hold {ledger_mod.RESERVE // 1024} KiB in reserve past its end "
                        f"({lg.reserve_error}); on a full disk its entries may fail with the session files")
        if lg.dropped_tail:
            start["dropped_partial_bytes"] = lg.dropped_tail
            self._event(f"ledger: dropped {lg.dropped_tail} bytes of a half-written last line (a crash mid-write)")
        if lg.found_broken:
            start["found_damaged"] = lg.found_broken[:5]
            self._event(f"ledger {lg.path} is DAMAGED: {'; '.join(lg.found_broken[:3])}; "
                        "appending after its last line; `wiretrail verify` will report it")
        lg.append(ledger_mod.GATEWAY_START, now, start)
        for entry in lg.state.unfinished():
            fields = recovery.recovered_fields(self.storage_dir, entry)
            lg.append(ledger_mod.SESSION_RECOVERED, now, fields)
            cp = fields.get("checkpoint")
            self._event(
                f"recovered session {entry.session} after a crash: {fields['file']}, {fields['records']} records, "
                f"last seq {fields['last_seq']}, last signed checkpoint "
                + (f"seq {cp}" if cp is not None else "none"))
        self._flush_ledger()
        if self.fsync != "never":
            try:
                lg.fsync()
            except OSError:
                pass
        self._anchor()
        return True

    def _ledger_end(self, sf: _SessionFile) -> None:
        if self._ledger is None:
            return
        sf.ended = True
        fields = {"session": sf.session_id, "path": self._ledger.relative(sf.path)}
        if sf.error is None:
            self._ledger.append(ledger_mod.SESSION_CLOSE, self.clock(), fields | {
                "records": sf.chain.seq, "head": sf.chain.prev, "sealed": self.signer is not None,
            })
            return
        kept = sf.durable_records > 0
        self._ledger.append(ledger_mod.SESSION_FAILED, self.clock(), fields | {
            "records": sf.durable_records,
            "head": sf.durable_head if kept else None,
            "cause": sf.error.cause,
            "error": sf.error.detail,
            "failed_at": getattr(sf.error, "at", None),
            # kept: what reached the disk stays; removed: nothing complete did, and the file goes
            # once this entry is written; none: the file was never made.
            "file": "kept" if kept else "removed" if sf.created else "none",
        })
        if sf.created and not kept:
            path = sf.path
            self._after_ledger.append(lambda: path.unlink(missing_ok=True))

    def _flush_ledger(self) -> StorageError | None:
        lg = self._ledger
        if lg is None:
            return None
        if lg.fd < 0:
            if self._ledger_error is None:
                return None
            if time.monotonic() - self._last_ledger_try < 1.0 or not self._open_ledger():
                return self._ledger_error
        self._mark_unsynced()
        try:
            lg.flush()
        except OSError as e:
            err = StorageError(describe_oserror(e), f"cannot write the ledger {lg.path}: {e.strerror}")
            self._report(err)
            return err
        if self._after_ledger:
            self._run_after_ledger()
        if self.fsync == "never":
            self._anchor()
        return None

    def _run_after_ledger(self) -> None:
        """File removals whose ledger entries are now written (fsynced first where we can)."""
        if self.fsync != "never":
            try:
                self._ledger.fsync()
            except OSError:
                return  # try again after the next write
        todo, self._after_ledger = self._after_ledger, []
        for remove in todo:
            try:
                remove()
            except OSError as e:
                self._event(f"cannot remove {getattr(e, 'filename', None) or 'a file'}: {e.strerror or e}")

    def _anchor(self) -> None:
        """Hand the newest durable ledger head to the anchor thread."""
        lg = self._ledger
        if self._anchorer is None or lg is None or lg.id is None:
            return
        head = lg.synced if self.fsync != "never" else lg.flushed
        if head is not None and head != self._anchored:
            self._anchored = head
            self._anchorer.offer(lg.id, *head)

    def _anchor_refusal(self) -> StorageError | None:
        """[anchors] fail_closed: the error records are answered with while a sink fails too long."""
        why = self._anchorer.refusal()
        if why is None:
            self._anchors_refusing = False
            return None
        err = StorageError("anchors failing", why)
        if not self._anchors_refusing:
            self._anchors_refusing = True
            self._report(err)  # logged once, as any cause of refusal
        return err

    def _tick(self) -> None:
        """Work due by time: checkpoints of quiet sessions, a ledger retry, retention."""
        now = time.monotonic()
        if now < self._next_scan:
            return
        self._next_scan = now + 0.1
        self._checkpoints_due = False
        if self.signer is not None:
            budget = _CHECKPOINTS_PER_TICK
            for sf in list(self._files.values()):
                if sf.error is None and sf.fd >= 0 and sf.unsigned and \
                        now - sf.last_signed >= self.checkpoint_interval:
                    if not budget:
                        # Sessions that opened together come due together: sign the rest after the
                        # records queued meanwhile, not ahead of them.
                        self._next_scan = now + 0.005
                        self._checkpoints_due = True
                        break
                    budget -= 1
                    self._sign(sf, CHECKPOINT)
                    self._flush_block(sf)
        if self._ledger is not None:
            if self._ledger.pending or self._ledger.fd < 0:
                self._flush_ledger()
            if self.retention_days > 0 and self._ledger.fd >= 0 and now >= self._next_retention:
                self._next_retention = now + retention.check_interval(self.retention_days)
                self._apply_retention()

    def _apply_retention(self) -> None:
        lg = self._ledger
        gone = retention.expired(lg.state, self.clock(), self.retention_days)
        for entry in gone:
            # The tombstone is written first; the file goes once it is (_run_after_ledger).
            present = (self.storage_dir / entry.path).exists()
            lg.append(ledger_mod.SESSION_DELETED, self.clock(), {
                "session": entry.session, "path": entry.path, "reason": "retention",
                "retention_days": self.retention_days, "file": "deleted" if present else "already missing",
            })
            self._after_ledger.append(lambda e=entry: retention.delete_file(self.storage_dir, e))
        if gone:
            self._event(f"retention: deleted {len(gone)} session(s) older than {self.retention_days} days")
            self._flush_ledger()

    def _event(self, text: str) -> None:
        if self.on_event is not None:
            try:
                self.on_event(text)
            except Exception:
                pass

    def _report(self, err: StorageError) -> None:
        if self.on_error is not None:
            try:
                self.on_error(err)
            except Exception:
                pass

    @staticmethod
    def _call_ack(ack: Ack, err: BaseException | None) -> None:
        try:
            ack(err)
        except Exception:
            pass
