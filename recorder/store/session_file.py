"""Writing a whole session file in one go, synchronously (for offline tools such as
`wiretrail mask`). The gateway's writer thread (recorder/store/writer.py) does the same
job incrementally; both produce docs/format.md: JSON lines, hash-chained, one zstd
frame with a block flushed every FLUSH_EVERY records."""
from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import zstandard

from recorder.store import format_v1

FLUSH_EVERY = 256
ZSTD_LEVEL = 3


def write_session_file(path: Path, records: Iterable[tuple[str, float, dict]]) -> tuple[int, str]:
    """Write (type, ts, fields) records to a new file at path; returns (count, head hash).
    Refuses to overwrite (FileExistsError). A failure removes the partial file."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    chain = format_v1.Chain()
    cobj = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
    try:
        with os.fdopen(fd, "wb") as f:
            pending: list[bytes] = []
            for rtype, ts, fields in records:
                pending.append(chain.next_line(rtype, ts, fields))
                if len(pending) >= FLUSH_EVERY:
                    f.write(cobj.compress(b"\n".join(pending) + b"\n") + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
                    pending.clear()
            if pending:
                f.write(cobj.compress(b"\n".join(pending) + b"\n"))
            f.write(cobj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH))
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        try:
            path.unlink()
        except OSError:
            pass
        raise
    return chain.seq, chain.prev
