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
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path

from recorder.forensics.transcript import build
from recorder.forensics.verify import (
    FileVerdict,
    LedgerVerdict,
    check_against_ledger,
    check_missing,
    verify_file,
)
from recorder.review.integrity import integrity_of
from recorder.review.listing import Filters, SessionRow, make_row
from recorder.store import format_v1
from recorder.store.ledger import LEDGER_NAME, LedgerRead, check_lines
from recorder.store.signing import Verifier

# Crockford base32 -> the digits int(x, 32) reads ("0-9a-v"), for the time in a session id.
_TO_BASE32 = str.maketrans("0123456789ABCDEFGHJKMNPQRSTVWXYZ", "0123456789abcdefghijklmnopqrstuv")
_SESSION_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")


def ulid_time(stem: str) -> float | None:
    """The start time a session id carries (its first 10 characters: milliseconds)."""
    if not _SESSION_ID.fullmatch(stem):
        return None
    return int(stem[:10].translate(_TO_BASE32), 32) / 1000.0


class FileEntry:
    """One session file. Entries live as long as their directory is unchanged; the stat is taken
    at most once per scan, when first needed: the first page of a large store stats only the
    files it shows."""

    __slots__ = ("full", "rel", "stem", "started", "_stat", "_gen", "_scan")

    def __init__(self, full: str, rel: str, stem: str, scan: "StoreScan"):
        self.full, self.rel, self.stem = full, rel, stem
        self.started = ulid_time(stem)  # the id's time; None for a file not named by a session id
        self._stat: os.stat_result | None = None
        self._gen = -1
        self._scan = scan

    @property
    def path(self) -> Path:
        return Path(self.full)

    def stat(self) -> os.stat_result | None:
        if self._gen != self._scan.gen:
            self._gen = self._scan.gen
            try:
                self._stat = os.stat(self.full)
            except OSError:
                self._stat = None
        return self._stat

    @property
    def key(self) -> tuple:
        st = self.stat()
        return _stat_key(st) if st is not None else ("gone",)

    @property
    def mtime(self) -> float:
        st = self.stat()
        return st.st_mtime if st is not None else 0.0

    @property
    def order(self) -> float:
        return self.started if self.started is not None else self.mtime


def _stat_key(st: os.stat_result) -> tuple:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class StoreScan:
    """The store's session files, newest first. A directory whose mtime did not change is not
    listed again (only the current day's directory changes while the gateway writes). Not
    thread-safe: the index calls it under its lock."""

    def __init__(self, store: Path):
        self.store = str(store)
        self.gen = 0  # one per scan: stats taken in an earlier scan are taken again
        self._dirs: dict[str, tuple[int, list[str], list[FileEntry]]] = {}  # rel dir -> (mtime_ns, subdirs, files)
        self._sorted: tuple[tuple, list[FileEntry]] | None = None

    def _list(self, rel: str) -> tuple[int, list[str], list[FileEntry]]:
        full = os.path.join(self.store, rel) if rel else self.store
        try:
            mtime = os.stat(full).st_mtime_ns
        except OSError:
            return -1, [], []
        hit = self._dirs.get(rel)
        if hit is not None and hit[0] == mtime:
            return hit
        subdirs, files = [], []
        cut = len(format_v1.FILE_SUFFIX)
        try:
            with os.scandir(full) as it:
                for e in it:
                    try:
                        if e.is_dir(follow_symlinks=False):
                            subdirs.append(e.name)
                        elif e.name.endswith(format_v1.FILE_SUFFIX) and e.is_file(follow_symlinks=False):
                            files.append(FileEntry(e.path, f"{rel}/{e.name}" if rel else e.name, e.name[:-cut], self))
                    except OSError:
                        continue
        except OSError:
            return -1, [], []
        self._dirs[rel] = (mtime, subdirs, files)
        return self._dirs[rel]

    def files(self) -> list[FileEntry]:
        self.gen += 1
        parts: list[list[FileEntry]] = []
        seen = []
        stack = [""]
        while stack:
            rel = stack.pop()
            mtime, subdirs, files = self._list(rel)
            seen.append((rel, mtime))
            stack.extend(f"{rel}/{d}" if rel else d for d in subdirs)
            parts.append(files)
        key = tuple(seen)
        if self._sorted is not None and self._sorted[0] == key:
            return self._sorted[1]
        out = [f for part in parts for f in part]
        out.sort(key=lambda f: (f.order, f.stem), reverse=True)
        self._sorted = (key, out)
        return out


def scan_store(store: Path) -> list[FileEntry]:
    """Every session file below the store, newest first."""
    return StoreScan(store).files()


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
        check_lines(r, complete, self.verifiers, every_signature=False)
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
    # Sessions the gateway's ledger says failed before any record reached the disk (no file, so
    # no row): damage the gateway suffered, not tampering (`wiretrail verify` exit 3).
    ledger_damage: list[str] = field(default_factory=list)


class SessionIndex:
    """Rows for the list, cached; thread-safe (the server renders on worker threads)."""

    def __init__(self, store: Path, verifiers: list[Verifier] | None):
        self.store = Path(store)
        self.verifiers = verifiers or None
        self._scan = StoreScan(self.store)
        self._ledger = _LedgerFollower(self.store / LEDGER_NAME, self.verifiers)
        self._rows: dict[str, tuple[tuple, SessionRow]] = {}  # rel -> (cache key, row)
        self._lock = threading.Lock()  # guards the scan, the ledger follower and _rows
        self._by_stem: dict[str, FileEntry] = {}
        self._verdict: tuple[tuple, LedgerVerdict] | None = None  # (ledger read, listing) -> verdict
        self._serving = 0  # requests in progress: the background pass waits for them
        self._idle = threading.Condition(self._lock)

    # -- requests before the background pass --------------------------------------------------------

    def serving(self):
        index = self

        class _Serving:
            def __enter__(self):
                with index._lock:
                    index._serving += 1

            def __exit__(self, *exc):
                with index._lock:
                    index._serving -= 1
                    index._idle.notify_all()

        return _Serving()

    def _wait_idle(self, stop: threading.Event | None) -> None:
        with self._lock:
            while self._serving and not (stop is not None and stop.is_set()):
                self._idle.wait(0.5)

    # -- the store ----------------------------------------------------------------------------

    def files(self) -> list[FileEntry]:
        with self._lock:
            files = self._scan.files()
            by_stem: dict[str, FileEntry] = {}
            for f in files:
                by_stem.setdefault(f.stem, f)
            self._by_stem = by_stem
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
            if files is None:
                return LedgerVerdict(read.path, read)
            key = (id(read), len(read.lines), len(files), files[0].rel if files else None)
            if self._verdict is not None and self._verdict[0] == key:
                return self._verdict[1]
        lv = LedgerVerdict(read.path, read)
        check_missing(lv, {f.rel for f in files})
        with self._lock:
            self._verdict = (key, lv)
        return lv

    # -- one session ----------------------------------------------------------------------------

    def verdict(self, entry: FileEntry, lv: LedgerVerdict | None) -> FileVerdict:
        """The full check of one file (reader, signatures, ledger), as `wiretrail verify` makes it."""
        v = verify_file(entry.path, self.verifiers)
        if lv is not None:
            check_against_ledger(v, lv.by_path.get(entry.rel), lv.path)
        return v

    def _cache_key(self, entry: FileEntry, lv: LedgerVerdict | None) -> tuple:
        e = lv.by_path.get(entry.rel) if lv is not None else None
        return entry.key, (None if e is None else (e.session, e.state, e.end_seq, e.first))

    def row(self, entry: FileEntry, lv: LedgerVerdict | None) -> SessionRow:
        key = self._cache_key(entry, lv)
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
        if hit is not None and hit[0] == self._cache_key(entry, lv):
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
            if until is not None and f.started is not None and f.started > until + 1:
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
        damage = [f"damaged, not tampered with: {what}" for _, what in lv.damage] if lv is not None else []
        return ListPage(rows, max(1, page), size, count > start + size, count if complete else None,
                        len(files), indexed, lv, problems, damage)

    def warm(self, stop: threading.Event | None = None) -> int:
        """Make every row now, newest first (the background pass), giving way to requests.
        Returns how many rows were made or found."""
        files = self.files()
        lv = self.ledger_verdict()
        n = 0
        for f in files:
            if stop is not None and stop.is_set():
                break
            self._wait_idle(stop)
            try:
                self.row(f, lv)
            except Exception:  # one unreadable file must not stop the pass; its page says what is wrong
                continue
            n += 1
        return n
