"""The store as the review list sees it: every session file, newest first, each row cached.

A row is cached under the file's identity (inode, size, mtime and ctime in ns) and the ledger's
word on that session. ctime is in the key because mtime can be set back by anyone who can write
the file (`touch -r`) and ctime cannot: an edit that keeps the size and resets mtime is still
seen. Rows are made on demand, newest first, so the first page of an unfiltered list reads only
the files it shows; a background pass fills the rest so that filters are fast too.

The ledger is followed as it grows: only appended lines are checked again (chain and signature);
a ledger that was rewritten rather than appended to is read from scratch.

A fleet's root (recorder/store/fleet.py) is read as its parts: each gateway's store (and each
`wiretrail mcp-stdio` store) is scanned and checked against its own ledger, as `wiretrail verify`
checks it; session files under the root outside every part are listed as verify reports them.
A session is named by its part and its id, so a link never opens a namesake in another part.
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
    verify_stray,
)
from recorder.review.integrity import integrity_of
from recorder.review.listing import Filters, SessionRow, make_row
from recorder.store import fleet, format_v1
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

    __slots__ = ("full", "rel", "stem", "part", "started", "_stat", "_gen", "_scan")

    def __init__(self, full: str, rel: str, stem: str, scan: "StoreScan"):
        self.full, self.rel, self.stem = full, rel, stem  # rel: relative to its part's store
        self.part = scan.part  # the key of the part (fleet.Part) it lies in
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

    def __init__(self, store: Path, prune: frozenset[str] = frozenset(), part: str = ""):
        self.store = str(store)
        self.prune = prune  # folders whose subfolders are not this store's (other parts)
        self.part = part
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
            if rel not in self.prune:
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
    ledger: LedgerVerdict | None  # the root's own store's (None on a fleet's root)
    ledger_problems: list[str] = field(default_factory=list)
    # Sessions the gateway's ledger says failed before any record reached the disk (no file, so
    # no row): damage the gateway suffered, not tampering (`wiretrail verify` exit 3).
    ledger_damage: list[str] = field(default_factory=list)
    no_ledger: list[str] = field(default_factory=list)  # parts without a ledger ("" = the store itself)
    gateways: list[str] = field(default_factory=list)  # the parts' names, when there is more than the store


_LOOK_UP = object()


class _Part:
    """One part of the root (fleet.Part): its scan and its ledger."""

    def __init__(self, part: fleet.Part, verifiers: list[Verifier] | None):
        self.part = part
        self.scan = StoreScan(part.path, part.prune, part.key)
        self.ledger = None if part.key == fleet.STRAY else _LedgerFollower(part.path / LEDGER_NAME, verifiers)
        self.verdict: tuple[tuple, LedgerVerdict] | None = None  # (ledger read, listing) -> verdict

    def label(self, text: str) -> str:
        return f"{self.part.name}: {text}" if self.part.name else text


class SessionIndex:
    """Rows for the list, cached; thread-safe (the server renders on worker threads).
    `uploaded_copy`: the store is a copy of a bucket (recorder/store/s3.py), where a session
    still open when its ledger was uploaded has no file yet (as `wiretrail verify s3://` says)."""

    def __init__(self, store: Path, verifiers: list[Verifier] | None, uploaded_copy: bool = False):
        self.store = Path(store)
        self.verifiers = verifiers or None
        self.uploaded_copy = uploaded_copy
        self._parts: dict[str, _Part] = {}
        self._active: list[_Part] = []
        self._refused: list[str] = []  # parts not read: a symbolic link out of the store
        self._merged: tuple[tuple, list[FileEntry]] | None = None  # (the parts' lists, merged)
        self._rows: dict[tuple[str, str], tuple[tuple, SessionRow]] = {}  # (part, rel) -> (cache key, row)
        self._lock = threading.Lock()  # guards the scans, the ledger followers and _rows
        self._by_ref: dict[tuple[str, str], FileEntry] = {}  # (part, stem) -> entry
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

    def _current_parts(self) -> list[_Part]:
        """The root's parts now (a gateway may join while the page runs). Under the lock."""
        try:
            found = fleet.parts(self.store)
        except OSError:
            found = []
        active, refused = [], []
        for part in found:
            if part.path != self.store and part.path.is_symlink():
                refused.append(f"{part.name}: a symbolic link, not read: the page reads only what lies in the store")
                continue
            hit = self._parts.get(part.key)
            if hit is None or hit.part != part:
                hit = self._parts[part.key] = _Part(part, self.verifiers)
            active.append(hit)
        self._active, self._refused = active, refused
        return active

    @property
    def is_fleet(self) -> bool:
        return len(self._active) > 1 or any(p.part.key for p in self._active)

    def files(self) -> list[FileEntry]:
        """Every session file of every part, newest first."""
        with self._lock:
            parts = self._current_parts()
            lists = [p.scan.files() for p in parts]  # each the same list object while its part is unchanged
            last = self._merged
            if len(lists) == 1:
                files = lists[0]
            elif last is not None and len(last[0]) == len(lists) and all(a is b for a, b in zip(last[0], lists)):
                files = last[1]
            else:
                files = sorted((f for part in lists for f in part), key=lambda f: (f.order, f.stem), reverse=True)
            self._merged = (tuple(lists), files)
            by_ref: dict[tuple[str, str], FileEntry] = {}
            for f in files:
                by_ref.setdefault((f.part, f.stem), f)
            self._by_ref = by_ref
        return files

    def find(self, stem: str, part: str = "") -> FileEntry | None:
        """The session `stem` of the part `part` ("" = the store itself)."""
        with self._lock:
            hit = self._by_ref.get((part, stem))
        if hit is not None and hit.path.exists():
            return hit
        self.files()
        with self._lock:
            return self._by_ref.get((part, stem))

    def part_name(self, key: str) -> str:
        with self._lock:
            p = self._parts.get(key)
        return p.part.name if p is not None else key

    def ledgers(self) -> list[tuple[str, LedgerRead | None]]:
        """(part name, its ledger as checked) for each part that has one to check."""
        with self._lock:
            self._current_parts()
            return [(p.part.name, p.ledger.current()) for p in self._active if p.ledger is not None]

    def ledger_verdict(self, files: list[FileEntry] | None = None, part: str = "") -> LedgerVerdict | None:
        """The ledger's verdict of one part; with `files` (that part's), the sessions it names
        that are missing too."""
        with self._lock:
            p = self._parts.get(part)
            if p is None or p.ledger is None:
                return None
            read = p.ledger.current()
            if read is None:
                return None
            if files is None:
                return LedgerVerdict(read.path, read)
            key = (id(read), len(read.lines), len(files), files[0].rel if files else None)
            if p.verdict is not None and p.verdict[0] == key:
                return p.verdict[1]
        lv = LedgerVerdict(read.path, read)
        check_missing(lv, {f.rel for f in files}, uploaded_copy=self.uploaded_copy)
        with self._lock:
            p.verdict = (key, lv)
        return lv

    # -- one session ----------------------------------------------------------------------------

    def verdict(self, entry: FileEntry, lv=_LOOK_UP) -> FileVerdict:
        """The full check of one file (reader, signatures, its part's ledger), as `wiretrail verify`
        makes it. `lv`: its part's ledger verdict, when the caller has it."""
        if entry.part == fleet.STRAY:
            return verify_stray(entry.path, self.store, self.verifiers)
        if lv is _LOOK_UP:
            lv = self.ledger_verdict(part=entry.part)
        v = verify_file(entry.path, self.verifiers)
        if lv is not None:
            check_against_ledger(v, lv.by_path.get(entry.rel), lv.path)
        return v

    def _cache_key(self, entry: FileEntry, lv: LedgerVerdict | None) -> tuple:
        e = lv.by_path.get(entry.rel) if lv is not None else None
        return entry.key, (None if e is None else (e.session, e.state, e.end_seq, e.first))

    def row(self, entry: FileEntry, lv: LedgerVerdict | None) -> SessionRow:
        """`lv`: the ledger verdict of the entry's part."""
        key = self._cache_key(entry, lv)
        with self._lock:
            hit = self._rows.get((entry.part, entry.rel))
        if hit is not None and hit[0] == key:
            return hit[1]
        v = self.verdict(entry, lv)
        row = make_row(entry.stem, entry.rel, v, integrity_of(v, bool(self.verifiers)), build(v.read.records),
                       part=entry.part, gateway=self.part_name(entry.part) if entry.part else "")
        with self._lock:
            self._rows[(entry.part, entry.rel)] = (key, row)
        return row

    def cached_row(self, entry: FileEntry, lv: LedgerVerdict | None) -> SessionRow | None:
        with self._lock:
            hit = self._rows.get((entry.part, entry.rel))
        if hit is not None and hit[0] == self._cache_key(entry, lv):
            return hit[1]
        return None

    def _verdicts(self, files: list[FileEntry] | None) -> dict[str, LedgerVerdict | None]:
        """Each part's ledger verdict (with its missing sessions, given `files`)."""
        with self._lock:
            keys = [p.part.key for p in self._active]
        by_part: dict[str, list[FileEntry]] = {k: [] for k in keys}
        for f in files or []:
            by_part.setdefault(f.part, []).append(f)
        return {k: self.ledger_verdict(by_part[k] if files is not None else None, part=k) for k in keys}

    # -- the list -------------------------------------------------------------------------------

    def page(self, filters: Filters, page: int = 1, size: int = 50) -> ListPage:
        files = self.files()
        lvs = self._verdicts(files)
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
            lv = lvs.get(f.part)
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
            parts = list(self._active)
            problems = list(self._refused)
        damage, no_ledger = [], []
        for p in parts:
            if p.ledger is None:
                continue
            lv = lvs.get(p.part.key)
            if lv is None:
                no_ledger.append(p.part.name)
                continue
            problems += [p.label(m if s is None else f"ledger seq {s}: {m}")
                         for s, m in [*lv.read.problems, *lv.read.state.problems]]
            problems += [p.label(what) for _, what in lv.missing]
            damage += [p.label(f"damaged, not tampered with: {what}") for _, what in lv.damage]
        gateways = [p.part.name for p in parts if p.part.key != fleet.STRAY] if self.is_fleet else []
        return ListPage(rows, max(1, page), size, count > start + size, count if complete else None,
                        len(files), indexed, lvs.get(""), problems, damage, no_ledger, gateways)

    def warm(self, stop: threading.Event | None = None) -> int:
        """Make every row now, newest first (the background pass), giving way to requests.
        Returns how many rows were made or found."""
        files = self.files()
        lvs = self._verdicts(None)
        n = 0
        for f in files:
            if stop is not None and stop.is_set():
                break
            self._wait_idle(stop)
            try:
                self.row(f, lvs.get(f.part))
            except Exception:  # one unreadable file must not stop the pass; its page says what is wrong
                continue
            n += 1
        return n
