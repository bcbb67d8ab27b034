"""Retention: delete session files older than `storage.retention_days`.

Runs on the writer thread (at start, then periodically), because it writes a
`session.deleted` tombstone to the ledger for each file it removes: the ledger keeps
the session's open and end entries, so its chain still verifies and the deletion is
accounted for. Only sessions the ledger knows are touched, and only once they ended
(closed, failed or recovered); the age counts from the end.
"""
from __future__ import annotations

import os
from pathlib import Path

from recorder.store.ledger import LedgerState, SessionEntry

DAY = 86400.0


def expired(state: LedgerState, now: float, days: float) -> list[SessionEntry]:
    if days <= 0:
        return []
    cutoff = now - days * DAY
    out = []
    for s in state.sessions.values():
        if s.state in ("closed", "failed", "recovered") and s.end is not None and s.end.get("ts", now) < cutoff:
            out.append(s)
    return out


def delete_file(storage_dir: Path, entry: SessionEntry) -> bool:
    """Remove the session file and its now-empty day directories. True if a file was removed."""
    storage_dir = Path(storage_dir)
    path = storage_dir / entry.path
    try:
        path.unlink()
        removed = True
    except FileNotFoundError:
        removed = False
    parent = path.parent
    while parent != storage_dir and storage_dir in parent.parents:
        try:
            os.rmdir(parent)
        except OSError:
            break  # not empty (or gone): stop climbing
        parent = parent.parent
    return removed


def check_interval(days: float) -> float:
    """Seconds between retention runs: hourly, or more often for very short retention."""
    return max(1.0, min(3600.0, days * DAY / 24))
