"""Empty files made ahead of time, so that opening a session costs a rename, not a create.

On ext4 on a virtual disk, creating a file (allocating its inode) took 0.4 to 1.4 ms here, and a
rename 0.04 ms. A new session's file must exist before its first record is acknowledged (rule 2:
the record is handed to the OS before the request goes upstream), so with 500 sessions opening at
once, 500 creates sat on the first requests' path. This thread keeps empty files in
`<store>/.spare/` (no session suffix: no reader, verifier or upload looks at them), and the writer
renames one to the session's path once the session's ledger entry is written, as it created one
before. A file the gateway made under a session's name is still always in the ledger.

When a burst of opens empties the pool, it grows (up to MAX) to twice that burst, so the next one
like it finds its files ready; the files left at a stop are used by the next start. Without a spare (none left, another file system, a spare
tampered with) the writer creates the file as before.
"""
from __future__ import annotations

import ctypes
import errno
import os
import secrets
import stat
import threading
import time
from collections import deque
from pathlib import Path

SPARE_DIR = ".spare"
START = 64  # files kept ready at first
MAX = 1024  # the most the pool grows to
QUIET = 0.1  # seconds without a take before refilling: never compete with a burst for the disk

_RENAME_NOREPLACE = 1
_AT_FDCWD = -100
_renameat2 = None


def rename_noreplace(src: str, dst: str) -> None:
    """rename(2) that fails with EEXIST rather than replace `dst` (renameat2 RENAME_NOREPLACE;
    link + unlink where the kernel or libc has no renameat2)."""
    global _renameat2
    if _renameat2 is None:
        fn = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
        if fn is not None:
            fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
            fn.restype = ctypes.c_int
        _renameat2 = fn or False
    if _renameat2:
        if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), _RENAME_NOREPLACE) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err), dst)
    os.link(src, dst)  # EEXIST if dst exists
    os.unlink(src)


class SpareFiles:
    def __init__(self, store: Path):
        self.dir = Path(store) / SPARE_DIR
        self.target = START
        self._names: deque[str] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._last_take = 0.0
        self._burst = 0  # sessions opened since the pool was last full
        self._thread = threading.Thread(target=self._run, name="wiretrail-spares", daemon=True)

    def __len__(self) -> int:
        return len(self._names)

    def start(self) -> None:
        try:
            self.dir.mkdir(mode=0o700, exist_ok=True)
            found = [e.name for e in os.scandir(self.dir) if e.name.startswith("s-")]
        except OSError:
            found = []
        self._names.extend(found)
        self.target = min(MAX, max(START, len(found)))
        self._thread.start()
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(5.0)

    def take(self, path: Path) -> int | None:
        """An open, empty file now at `path`, or None when there is no usable spare (then the
        caller creates it). Raises OSError if `path` exists or its directory is unusable."""
        self._last_take = time.monotonic()
        self._burst += 1
        while True:
            try:
                name = self._names.popleft()
            except IndexError:
                self.target = min(MAX, max(self.target, 2 * self._burst))
                self._wake.set()
                return None
            src = str(self.dir / name)
            try:
                fd = os.open(src, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError:
                continue  # gone or replaced by a link: not ours to use
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode) or st.st_size or st.st_nlink != 1:
                    raise ValueError(name)  # written to or linked elsewhere: not a spare any more
                rename_noreplace(src, str(path))
            except ValueError:
                os.close(fd)
                continue
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EEXIST, errno.ENOENT) and os.path.lexists(src):
                    self._names.appendleft(name)  # the spare is fine: the destination is not
                    raise
                if e.errno == errno.EXDEV:
                    self._names.appendleft(name)
                    return None  # the session's folder is on another file system
                continue
            self._wake.set()
            return fd

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait()
            self._wake.clear()
            while not self._stopping and len(self._names) < self.target:
                idle = time.monotonic() - self._last_take
                if idle < QUIET:
                    time.sleep(QUIET - idle)  # a burst is opening sessions: the disk is theirs
                    continue
                name = "s-" + secrets.token_hex(8)
                try:
                    os.close(os.open(self.dir / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600))
                except OSError:
                    break  # a full disk or a removed folder: try again at the next take
                self._names.append(name)
            if len(self._names) >= self.target:
                self._burst = 0
