"""Crash recovery: sessions the ledger saw open but never saw end.

At start, before any new record, the writer thread reads each such file (it appends
nothing to it: a session file is never reopened for writing) and writes a signed
`session.recovered` ledger entry that covers the head it found. From then on, cutting
or extending that file is visible against the ledger.
"""
from __future__ import annotations

from pathlib import Path

from recorder.forensics.reader import read_session
from recorder.store.ledger import SessionEntry

SIGNING_TYPES = ("checkpoint", "seal")


def last_signed(records: list[dict], upto: int) -> int | None:
    """seq of the last checkpoint or seal among the first `upto` records."""
    for rec in reversed(records[:upto]):
        if rec.get("t") in SIGNING_TYPES and isinstance(rec.get("seq"), int):
            return rec["seq"]
    return None


def recovered_fields(storage_dir: Path, entry: SessionEntry) -> dict:
    """The fields of the `session.recovered` entry for one unfinished session."""
    path = Path(storage_dir) / entry.path
    fields: dict = {"session": entry.session, "path": entry.path}
    if not path.exists():
        # The file is made before its ledger entry, so a missing file was removed by someone.
        return fields | {"file": "missing", "records": 0, "last_seq": None, "head": None, "checkpoint": None}
    read = read_session(path)
    n = read.intact
    fields |= {
        "file": read.state,
        "records": n,
        "last_seq": n - 1 if n else None,
        "head": read.head if n else None,
        "checkpoint": last_signed(read.records, n),
    }
    if read.problems:
        fields["problem"] = str(read.problems[0])
    return fields
