"""The storage-wide ledger: `<storage.dir>/ledger.jsonl`, one line per event that a
verifier needs to see the store as a whole (docs/format.md §10).

Each line is a JSON object with the same envelope as a session record (`v`, `seq`, `t`,
`ts`, `prev` = SHA-256 of the previous line), then its fields, then `key` (signing key id
or null) and, when signed, `sig` as the very last field. The signature covers the line's
own bytes up to the signature: `LEDGER_CONTEXT + line_without_sig`, where
`line_without_sig` is the line with its final `,"sig":"..."` removed (so a verifier
checks the exact bytes on disk and never re-serializes).

The writer thread owns the file (`LedgerFile`); `read_ledger` reads it for verify and
for crash recovery; `LedgerState` folds the entries into what is known per session.
"""
from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from recorder.store import format_v1
from recorder.store.live import clear_live, mark_live
from recorder.store.signing import Signer, Verifier

LEDGER_NAME = "ledger.jsonl"
LEDGER_CONTEXT = b"wiretrail-ledger-v1\n"
# Disk space held past the ledger's end (fallocate, KEEP_SIZE), so that its entries, a
# session.failed above all, are still written when session files hit a full disk.
RESERVE = 512 * 1024
_SIG_TAIL = re.compile(rb',"sig":"([A-Za-z0-9+/=]*)"\}\Z')

# Entry types. A session's entries: one "session.open", then at most one of the endings,
# then (retention) "session.deleted".
GATEWAY_START = "gateway.start"
SESSION_OPEN = "session.open"
SESSION_CLOSE = "session.close"  # closed cleanly: records and head of the whole file
SESSION_FAILED = "session.failed"  # storage failed: records and head of what reached the disk
SESSION_RECOVERED = "session.recovered"  # found unsealed at the next start: its head then
SESSION_DELETED = "session.deleted"  # retention removed the file (a tombstone)
ENDINGS = (SESSION_CLOSE, SESSION_FAILED, SESSION_RECOVERED)


def encode_entry(seq: int, prev: str, t: str, ts: float, fields: dict, signer: Signer | None) -> bytes:
    return _encode(seq, prev, t, ts, fields, signer)[0]


def _encode(seq: int, prev: str, t: str, ts: float, fields: dict, signer: Signer | None) -> tuple[bytes, dict]:
    """The line, and the entry it holds (without its signature)."""
    entry = {"v": format_v1.VERSION, "seq": seq, "t": t, "ts": ts, "prev": prev}
    for k, v in fields.items():
        if k not in entry and k not in ("key", "sig"):
            entry[k] = v
    entry["key"] = signer.key_id if signer else None
    unsigned = orjson.dumps(entry)
    if signer is None:
        return unsigned, entry
    sig = signer.sign(LEDGER_CONTEXT + unsigned)
    return unsigned[:-1] + b',"sig":"' + sig.encode("ascii") + b'"}', entry


def ledger_id(first_line: bytes) -> str:
    """A ledger's identity: the hash of its first line (the signed gateway.start that made it).
    Anchors name it, so a ledger replaced by another one cannot pass as the anchored one."""
    return format_v1.line_hash(first_line)


def split_signature(line: bytes) -> tuple[bytes, str | None]:
    """(the signed bytes without the context, the base64 signature) or (line, None)."""
    m = _SIG_TAIL.search(line)
    if not m:
        return line, None
    return line[: m.start()] + b"}", m.group(1).decode("ascii")


# -- what the ledger says about each session ----------------------------------------------


@dataclass
class SessionEntry:
    session: str
    path: str  # relative to the storage dir, "/"-separated
    opened: float
    open_seq: int  # ledger seq of the open entry
    first: str | None  # hash of the session file's line 0
    state: str = "open"  # open | closed | failed | recovered | deleted
    end: dict | None = None  # the ending entry (close / failed / recovered)
    end_seq: int | None = None
    deleted: dict | None = None
    deleted_seq: int | None = None


@dataclass
class LedgerState:
    sessions: dict[str, SessionEntry] = field(default_factory=dict)
    problems: list[tuple[int | None, str]] = field(default_factory=list)  # inconsistent entries

    def apply(self, e: dict) -> None:
        t, seq, sid = e.get("t"), e.get("seq"), e.get("session")
        if t == SESSION_OPEN:
            if sid in self.sessions:
                self.problems.append((seq, f"session {sid} opened twice in the ledger"))
                return
            self.sessions[sid] = SessionEntry(
                session=sid, path=str(e.get("path")), opened=e.get("ts", 0.0), open_seq=seq, first=e.get("first")
            )
            return
        if t in ENDINGS or t == SESSION_DELETED:
            s = self.sessions.get(sid)
            if s is None:
                self.problems.append((seq, f"{t} for session {sid}, which the ledger never opened"))
                return
            if t == SESSION_DELETED:
                if s.state == "deleted":
                    self.problems.append((seq, f"session {sid} deleted twice"))
                s.state, s.deleted, s.deleted_seq = "deleted", e, seq
                return
            if s.end is not None:
                self.problems.append((seq, f"{t} for session {sid}, which already ended at ledger seq {s.end_seq}"))
                return
            s.end, s.end_seq = e, seq
            s.state = {SESSION_CLOSE: "closed", SESSION_FAILED: "failed", SESSION_RECOVERED: "recovered"}[t]

    def unfinished(self) -> list[SessionEntry]:
        return [s for s in self.sessions.values() if s.state == "open"]


# -- reading ----------------------------------------------------------------------------


@dataclass
class LedgerRead:
    path: Path
    lines: list[bytes] = field(default_factory=list)
    entries: list[dict] = field(default_factory=list)
    problems: list[tuple[int | None, str]] = field(default_factory=list)  # (seq, what): damage
    partial_tail: int = 0  # bytes of an unfinished last line (a crash mid-write)
    head: str = format_v1.ZERO_HASH  # hash of the last complete line
    unsigned: int = 0  # entries without a signature
    signed_by: set[str] = field(default_factory=set)  # key ids entries claim
    state: LedgerState = field(default_factory=LedgerState)
    size_complete: int = 0  # bytes of the complete lines


def read_ledger(path: str | os.PathLike, verifiers: list[Verifier] | None = None) -> LedgerRead:
    """Read and check the ledger: chain, seq, signatures (when `verifiers` are given)."""
    path = Path(path)
    result = LedgerRead(path=path)
    try:
        data = path.read_bytes()
    except OSError as e:
        result.problems.append((None, f"cannot read the ledger: {e.strerror or e}"))
        return result
    *complete, tail = data.split(b"\n")
    result.partial_tail = len(tail)
    result.size_complete = len(data) - len(tail)
    check_lines(result, complete, verifiers)
    result.problems.extend(result.state.problems)
    return result


def check_lines(result: LedgerRead, lines: list[bytes], verifiers: list[Verifier] | None, *,
                every_signature: bool = True) -> None:
    """Check complete ledger lines that follow result.lines (chain from result.head, seq, signatures)
    and fold them into result. A reader that follows a growing ledger calls it with each new part.
    Problems of the folded state (result.state.problems) are the caller's to collect.

    every_signature=False checks the signature of the last signed line only, when every line
    before it is chained intact: each signature covers its line's `prev`, so it commits to every
    line before it. If anything is wrong, every signature is checked, to name the lines."""
    by_id = {v.key_id: v for v in verifiers or []}
    prev = result.head
    problems_before = len(result.problems)
    deferred: list[tuple[int, Verifier, bytes, str]] = []
    for i, line in enumerate(lines, start=len(result.lines)):
        result.lines.append(line)
        try:
            e = orjson.loads(line)
            if not isinstance(e, dict):
                raise ValueError("not an object")
        except ValueError:
            result.problems.append((i, f"ledger line {i + 1} is not a JSON object"))
            prev = format_v1.line_hash(line)
            continue
        seq = e.get("seq")
        if seq != i:
            result.problems.append((i, f"ledger seq {seq!r} where {i} was expected: entries removed, inserted or moved"))
        if e.get("prev") != prev:
            result.problems.append(
                (i, "ledger prev does not match the line before it: an entry was edited, removed, inserted or moved")
            )
        unsigned, sig = split_signature(line)
        kid = e.get("key")
        if sig is None:
            result.unsigned += 1
            if verifiers:
                result.problems.append((i, f"ledger entry {e.get('t')} is not signed (--key was given)"))
        else:
            result.signed_by.add(str(kid))
            if verifiers:
                v = by_id.get(kid)
                if v is None:
                    result.problems.append((i, f"ledger entry signed by key {kid}, not by the --key given"))
                elif every_signature:
                    if not v.verify(LEDGER_CONTEXT + unsigned, sig):
                        result.problems.append((i, _BAD_LEDGER_SIG))
                else:
                    deferred.append((i, v, unsigned, sig))
        result.entries.append(e)
        result.state.apply(e)
        prev = format_v1.line_hash(line)
    result.head = prev
    if deferred:
        i, v, unsigned, sig = deferred[-1]
        if len(result.problems) > problems_before or not v.verify(LEDGER_CONTEXT + unsigned, sig):
            for i, v, unsigned, sig in deferred:
                if not v.verify(LEDGER_CONTEXT + unsigned, sig):
                    result.problems.append((i, _BAD_LEDGER_SIG))
            result.problems.sort(key=lambda p: -1 if p[0] is None else p[0])


_BAD_LEDGER_SIG = "ledger signature does not verify: the entry was altered or forged"


# -- writing (the writer thread) -----------------------------------------------------------


class LedgerError(OSError):
    pass


class LedgerFile:
    """The ledger as the writer thread appends to it. Entries are chained as they are made
    and written with the next flush; a failed write is rolled back to the last complete line
    and retried, so an entry is never lost and a half line never stays."""

    def __init__(self, storage_dir: Path, signer: Signer | None):
        self.dir = Path(storage_dir)
        self.path = self.dir / LEDGER_NAME
        self._prefix = str(self.dir).rstrip("/") + "/"
        self.signer = signer
        self.fd = -1
        self.seq = 0
        self.prev = format_v1.ZERO_HASH
        self.state = LedgerState()
        self.pending: list[bytes] = []
        self.good_size = 0
        self.dirty = False
        self.found_broken: list[str] = []  # problems seen in the existing ledger at open
        self.dropped_tail = 0
        self.created = False  # there was no ledger (or an empty one) at open
        self.id: str | None = None  # ledger_id(), once it has a first line
        self.last_t: str | None = None  # type of the newest entry made
        self.flushed: tuple[int, str, str] | None = None  # (seq, head, t) of the newest line written
        self.synced: tuple[int, str, str] | None = None  # the same, once fsynced
        self.reserved_to = 0  # the reserve ends here (0: none held)
        self.reserve_error: str | None = None  # why no reserve could be held, when it cannot

    def open(self) -> None:
        """Open (or create) the ledger, lock it, and load its state. Raises OSError."""
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise LedgerError(errno.EBUSY, f"another gateway holds the ledger {self.path}") from None
            raise
        existing = read_ledger(self.path)
        if existing.partial_tail:
            # A crash mid-write left half a line: it was never acknowledged; drop it.
            os.ftruncate(fd, existing.size_complete)
            self.dropped_tail = existing.partial_tail
        self.found_broken = [m if s is None else f"ledger seq {s}: {m}" for s, m in existing.problems]
        self.created = not existing.lines
        self.seq = len(existing.lines)
        self.prev = existing.head
        self.state = existing.state
        self.good_size = existing.size_complete
        if existing.lines:
            self.id = ledger_id(existing.lines[0])
            self.last_t = existing.entries[-1].get("t") if existing.entries else None
            self.flushed = self.synced = (self.seq - 1, self.prev, self.last_t)
        os.lseek(fd, 0, os.SEEK_END)
        self.fd = fd
        self.reserve()  # first: on a filling disk the reserve is what keeps session.failed writable
        mark_live(self.dir)  # readers tell "open" from "gateway stopped" by it (recorder/store/live.py)

    def append(self, t: str, ts: float, fields: dict) -> dict:
        line, entry = _encode(self.seq, self.prev, t, ts, fields, self.signer)
        if self.seq == 0:
            self.id = ledger_id(line)
        self.pending.append(line)
        self.seq += 1
        self.prev = format_v1.line_hash(line)
        self.last_t = t
        self.state.apply(entry)
        return entry

    def flush(self) -> None:
        """Write pending entries. Raises OSError (after rolling back a partial write)."""
        if not self.pending or self.fd < 0:
            return
        data = b"".join(line + b"\n" for line in self.pending)
        view = memoryview(data)
        try:
            os.lseek(self.fd, self.good_size, os.SEEK_SET)
            while view:
                n = os.write(self.fd, view)
                view = view[n:]
        except OSError:
            try:
                os.ftruncate(self.fd, self.good_size)  # this frees the reserve too
                self.reserved_to = 0
            except OSError:
                pass
            raise
        self.good_size += len(data)
        self.pending.clear()
        self.dirty = True
        self.flushed = (self.seq - 1, self.prev, self.last_t)
        if self.good_size + RESERVE // 2 > self.reserved_to:
            self.reserve()

    def reserve(self) -> None:
        """Hold RESERVE bytes past the end, so the next entries need no new disk space. Best
        effort: where it fails (a full disk now, a file system without it) the ledger just
        competes for space like any file, and `reserve_error` says why."""
        try:
            _fallocate_keep_size(self.fd, self.good_size, RESERVE)
        except OSError as e:
            self.reserve_error = e.strerror or str(e)
            return
        self.reserved_to = self.good_size + RESERVE
        self.reserve_error = None

    def fsync(self) -> None:
        if self.dirty and self.fd >= 0:
            self.dirty = False
            upto = self.flushed
            try:
                os.fsync(self.fd)
            except OSError:
                self.dirty = True
                raise
            self.mark_synced(upto)

    def fsync_job(self):
        """The fsync of what is written now, as a call for another thread (recorder/store/syncer.py),
        which reports an OSError to `on_error`; None if nothing is waiting for one. The writer
        drains that thread before it closes the ledger, so the descriptor stays this file's."""
        if not self.dirty or self.fd < 0:
            return None
        self.dirty = False
        fd = self.fd

        def job(on_error) -> None:
            upto = self.flushed  # read here: a write made since the call was queued is covered too
            try:
                os.fsync(fd)
            except OSError as e:
                self.dirty = True
                on_error(e)
                return
            self.mark_synced(upto)

        return job

    def mark_synced(self, upto: tuple[int, str, str] | None) -> None:
        """The lines up to `upto` (a `flushed` value) are durable; never moves back."""
        if upto is not None and (self.synced is None or upto[0] > self.synced[0]):
            self.synced = upto

    def close(self) -> None:
        if self.fd >= 0:
            clear_live(self.dir)
            os.close(self.fd)  # releases the lock
            self.fd = -1

    def relative(self, path: Path) -> str:
        text, prefix = str(path), self._prefix
        if text.startswith(prefix) and os.sep == "/":  # pathlib's relative_to costs ~10x more
            return text[len(prefix):]
        try:
            return Path(path).relative_to(self.dir).as_posix()
        except ValueError:
            return text


_FALLOC_FL_KEEP_SIZE = 1
_libc_fallocate = None


def _fallocate_keep_size(fd: int, offset: int, length: int) -> None:
    """fallocate(2) with FALLOC_FL_KEEP_SIZE: blocks are allocated, the file size stays."""
    global _libc_fallocate
    if _libc_fallocate is None:
        fn = getattr(ctypes.CDLL(None, use_errno=True), "fallocate", None)
        if fn is None:
            raise OSError(errno.EOPNOTSUPP, "fallocate is not available on this system")
        fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
        fn.restype = ctypes.c_int
        _libc_fallocate = fn
    if _libc_fallocate(fd, _FALLOC_FL_KEEP_SIZE, offset, length) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
