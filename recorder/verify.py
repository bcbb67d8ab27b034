"""Verification of session files: is every chain intact, and what state is each file in.

Today only the hash chains (and the record format) are checked. Signatures over
checkpoints and seals, and the storage-wide ledger, come with their own issues.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from recorder.reader import SessionRead, iter_session_files, read_session

MAX_PROBLEMS_SHOWN = 20

CHAINS_ONLY_NOTE = (
    "only the hash chains were checked: signatures are not checked (without --key nothing proves "
    "who wrote these files)"
)
KEY_NOT_YET_NOTE = (
    "--key given, but signature checking arrives with format checkpoints; only the hash chains were checked"
)


@dataclass
class FileVerdict:
    path: Path
    read: SessionRead

    @property
    def ok(self) -> bool:
        return self.read.state != "broken"

    def describe(self) -> list[str]:
        """One headline, then one line per problem (broken files)."""
        r = self.read
        n = len(r.records)
        last = r.last_seq
        if r.state == "sealed":
            return [f"OK      {self.path}: sealed, {n} records, last seq {last}"]
        if r.state == "closed":
            return [f"OK      {self.path}: closed cleanly, {n} records, last seq {last}"]
        if r.state == "unsealed":
            why = []
            if not r.frame_ended:
                why.append("zstd frame not ended")
            if not r.records or r.records[-1].get("t") != "session.close":
                why.append("no session.close")
            if r.truncated_tail:
                why.append("a partial last write was dropped")
            return [
                f"OK      {self.path}: unsealed (crash?): {n} records readable, last seq {last}"
                + (f" ({'; '.join(why)})" if why else "")
            ]
        out = [f"FAILED  {self.path}: {len(r.problems)} problem(s), {n} records read"]
        for p in r.problems[:MAX_PROBLEMS_SHOWN]:
            out.append(f"        {self.path}: {p}")
        if len(r.problems) > MAX_PROBLEMS_SHOWN:
            out.append(f"        ... and {len(r.problems) - MAX_PROBLEMS_SHOWN} more")
        return out


def verify_file(path: str | Path) -> FileVerdict:
    return FileVerdict(Path(path), read_session(path))


def collect_files(paths: list[str | Path]) -> list[Path]:
    """Every session file named by `paths` (files, or directories searched recursively).
    Raises FileNotFoundError naming the first path that does not exist."""
    files: list[Path] = []
    for p in paths:
        files.extend(iter_session_files(p))
    return files


def summarize(verdicts: list[FileVerdict]) -> str:
    counts: dict[str, int] = {}
    for v in verdicts:
        counts[v.read.state] = counts.get(v.read.state, 0) + 1
    parts = [f"{counts[s]} {s}" for s in ("sealed", "closed", "unsealed", "broken") if counts.get(s)]
    return f"{len(verdicts)} file(s) checked: " + ", ".join(parts)
