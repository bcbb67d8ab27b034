"""The store as the review list sees it: every session file, newest first, each row cached.

A row is cached under the file's identity (inode, size, mtime and ctime in ns) and the ledger's
word on that session. ctime is in the key because mtime can be set back by anyone who can write
the file (`touch -r`) and ctime cannot: an edit that keeps the size and resets mtime is still
seen. Rows are made on demand, newest first, so the first page of an unfiltered list reads only
the files it shows; a background pass fills the rest so that filters are fast too.

The ledger is followed as it grows: only appended lines are checked again (chain and signature);
a ledger that was rewritten rather than appended to is read from scratch.
"""
from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from recorder import format_v1
from recorder.ids import is_session_id
from recorder.ledger import LEDGER_NAME, LedgerRead, check_lines
from recorder.review.integrity import integrity_of
from recorder.review.listing import Filters, SessionRow, make_row
from recorder.signing import Verifier
from recorder.transcript import build
from recorder.verify import FileVerdict, LedgerVerdict, check_against_ledger, check_missing, verify_file

_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def ulid_time(stem: str) -> float | None:
    """The start time a session id carries (its first 10 characters: milliseconds)."""
    if not is_session_id(stem):
        return None
    ms = 0
    for c in stem[:10]:
        ms = ms * 32 + _CROCKFORD[c]
    return ms / 1000.0


@dataclass(frozen=True)
class FileEntry:
    path: Path
    rel: str  # relative to the store, "/"-separated (as the ledger names it)
    stem: str
    stat: tuple  # (ino, size, mtime_ns, ctime_ns)
    started: float  # for ordering: the id's time, else the file's mtime
    mtime: float


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def scan_store(store: Path) -> list[FileEntry]:
    """Every session file below the store, newest first."""
    out: list[FileEntry] = []
    stack = [store]
    while stack:
        d = stack.pop()
        try:
            it = os.scandir(d)
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(Path(e.path))
                    elif e.name.endswith(format_v1.FILE_SUFFIX) and e.is_file(follow_symlinks=False):
                        st = e.stat(follow_symlinks=False)
                        stem = e.name[: -len(format_v1.FILE_SUFFIX)]
                        rel = os.path.relpath(e.path, store).replace(os.sep, "/")
                        started = ulid_time(stem)
                        out.append(FileEntry(Path(e.path), rel, stem, _stat_key(st),
                                             started if started is not None else st.st_mtime, st.st_mtime))
                except OSError:
                    continue
    out.sort(key=lambda f: (f.started, f.stem), reverse=True)
    return out


class _LedgerFollower:
    """The store's ledger, checked once and then followed as it grows."""

    def __init__(self, path: Path, verifiers: list[Verifier] | None):
        self.path = path
        self.verifiers = verifiers
        self.stat: tuple | None = None
        self.read: LedgerRead | None = None
        self.prefix_hash: bytes = b""  # SHA-256 of the complete lines already checked

    def current(self) -> LedgerRead | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            self.stat, self.read = None, None
            return None
        except OSError as e:
            r = LedgerRead(path=self.path)
            r.problems.append((None, f"cannot read the ledger: {e.strerror or e}"))
            return r
        key = _stat_key(st)
        if key == self.stat and self.read is not None:
            return self.read
        try:
            data = self.path.read_bytes()
        except OSError as e:
            r = LedgerRead(path=self.path)
            r.problems.append((None, f"cannot read the ledger: {e.strerror or e}"))
            return r
        r = self.read
        done = r.size_complete if r is not None else 0
        if r is None or len(data) < done or hashlib.sha256(data[:done]).digest() != self.prefix_hash:
            r, done = LedgerRead(path=self.path), 0  # new, or rewritten: check it all
        *complete, tail = data[done:].split(b"\n")
        check_lines(r, complete, self.verifiers)
        r.partial_tail = len(tail)
        r.size_complete = len(data) - len(tail)
        self.prefix_hash = hashlib.sha256(data[: r.size_complete]).digest()
        self.stat, self.read = key, r
        return r


@dataclass
class ListPage:
    rows: list[SessionRow]
    page: int
    size: int
    has_next: bool
    matched: int | None  # all sessions that match, when every row is known; None while indexing
    total_files: int
    indexed: int  # rows known
    ledger: LedgerVerdict | None
    ledger_problems: list[str] = field(default_factory=list)


class SessionIndex:
    """Rows for the list, cached; thread-safe (the server renders on worker threads)."""

    def __init__(self, store: Path, verifiers: list[Verifier] | None):
        self.store = Path(store)
        self.verifiers = verifiers or None
        self._ledger = _LedgerFollower(self.store / LEDGER_NAME, self.verifiers)
        self._rows: dict[str, tuple[tuple, SessionRow]] = {}  # rel -> (cache key, row)
        self._lock = threading.Lock()  # guards _rows and the ledger follower
        self._files: list[FileEntry] = []
        self._by_stem: dict[str, FileEntry] = {}

    # -- the store ----------------------------------------------------------------------------

    def files(self) -> list[FileEntry]:
        files = scan_store(self.store)
        by_stem = {}
        for f in files:
            by_stem.setdefault(f.stem, f)
        with self._lock:
            self._files, self._by_stem = files, by_stem
        return files

    def find(self, stem: str) -> FileEntry | None:
        with self._lock:
            hit = self._by_stem.get(stem)
        if hit is not None and hit.path.exists():
            return hit
        self.files()
        with self._lock:
            return self._by_stem.get(stem)

    def ledger_verdict(self, files: list[FileEntry] | None = None) -> LedgerVerdict | None:
        """The ledger's verdict; with `files`, the sessions it names that are missing too."""
        with self._lock:
            read = self._ledger.current()
        if read is None:
            return None
        lv = LedgerVerdict(read.path, read)
        if files is not None:
            check_missing(lv, {f.rel for f in files})
        return lv

    # -- one session ----------------------------------------------------------------------------

    def verdict(self, entry: FileEntry, lv: LedgerVerdict | None) -> FileVerdict:
        """The full check of one file (reader, signatures, ledger), as `wiretrail verify` makes it."""
        v = verify_file(entry.path, self.verifiers)
        if lv is not None:
            check_against_ledger(v, lv.by_path.get(entry.rel), lv.path)
        return v

    def _ledger_key(self, entry: FileEntry, lv: LedgerVerdict | None):
        if lv is None:
            return None
        e = lv.by_path.get(entry.rel)
        return None if e is None else (e.session, e.state, e.end_seq, e.first)

    def row(self, entry: FileEntry, lv: LedgerVerdict | None) -> SessionRow:
        key = (entry.stat, self._ledger_key(entry, lv))
        with self._lock:
            hit = self._rows.get(entry.rel)
        if hit is not None and hit[0] == key:
            return hit[1]
        v = self.verdict(entry, lv)
        row = make_row(entry.stem, entry.rel, v, integrity_of(v, bool(self.verifiers)), build(v.read.records))
        with self._lock:
            self._rows[entry.rel] = (key, row)
        return row

    def cached_row(self, entry: FileEntry, lv: LedgerVerdict | None) -> SessionRow | None:
        with self._lock:
            hit = self._rows.get(entry.rel)
        if hit is not None and hit[0] == (entry.stat, self._ledger_key(entry, lv)):
            return hit[1]
        return None

    # -- the list -------------------------------------------------------------------------------

    def page(self, filters: Filters, page: int = 1, size: int = 50) -> ListPage:
        files = self.files()
        lv = self.ledger_verdict(files)
        since, until = filters.times()
        start = (max(1, page) - 1) * size
        rows: list[SessionRow] = []
        count = 0  # matches so far
        complete = True
        for f in files:
            if until is not None and f.started > until + 1:
                continue  # started after `until` (the id's time is the open time, to the ms)
            if since is not None and f.mtime < since:
                continue  # last written before `since`, so its last record is older too
            # Rows are made until the page is full and one more match shows there is a next page;
            # past that, only rows already known are counted.
            row = self.row(f, lv) if count <= start + size else self.cached_row(f, lv)
            if row is None:
                complete = False
                break
            if not filters.matches(row, since, until):
                continue
            if start <= count < start + size:
                rows.append(row)
            count += 1
        with self._lock:
            indexed = len(self._rows)
        problems = []
        if lv is not None:
            problems = [m if s is None else f"ledger seq {s}: {m}"
                        for s, m in [*lv.read.problems, *lv.read.state.problems]]
            problems += [what for _, what in lv.missing]
        return ListPage(rows, max(1, page), size, count > start + size, count if complete else None,
                        len(files), indexed, lv, problems)

    def warm(self, stop: threading.Event | None = None) -> int:
        """Make every row now (the background pass). Returns how many were made."""
        files = self.files()
        lv = self.ledger_verdict()
        n = 0
        for f in files:
            if stop is not None and stop.is_set():
                break
            try:
                self.row(f, lv)
            except Exception:  # one unreadable file must not stop the pass; the page shows it
                continue
            n += 1
        return n
