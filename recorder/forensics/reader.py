"""Reading session files (format v1) without ever raising on damage.

A session file is one zstd frame of JSON lines, hash-chained (docs/format.md). The reader
decodes what the frame's complete blocks hold (recorder/forensics/zstd_blocks.py), then checks
the chain, the order and every record's fields. Damage becomes a `Problem`, never an exception.
Summaries for `ls` and the review page are in recorder/forensics/summary.py.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from recorder.forensics import zstd_blocks
from recorder.store import format_v1, records

_HEX64 = re.compile(r"[0-9a-f]{64}")
_SESSION_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")

# Fields each record type must and may carry, and their JSON types: the one table.
REQUIRED: dict[str, tuple[str, ...]] = {t: spec.required for t, spec in records.RECORDS.items()}
OPTIONAL: dict[str, tuple[str, ...]] = {t: spec.optional for t, spec in records.RECORDS.items()}


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a file. `seq` is the record's (or the expected) seq; None
    when the problem is not about one record (the file, the zstd frame)."""

    seq: int | None
    kind: str
    message: str

    def __str__(self) -> str:
        return self.message if self.seq is None else f"seq {self.seq}: {self.message}"


@dataclass
class SessionRead:
    path: Path
    session_id: str | None = None
    records: list[dict] = field(default_factory=list)  # every line that parsed as a JSON object
    lines: list[bytes] = field(default_factory=list)  # every complete line, exact bytes, no newline
    problems: list[Problem] = field(default_factory=list)
    frame_ended: bool = False
    truncated_tail: bool = False  # a partial last line or a partial zstd block was dropped
    head: str = format_v1.ZERO_HASH  # hash of the last line of the intact prefix
    intact: int = 0  # lines in the intact prefix (before the first damaged one)

    @property
    def closed(self) -> bool:
        return self.state in ("closed", "sealed")

    @property
    def state(self) -> str:
        if self.problems:
            return "broken"
        last = self.records[-1]["t"] if self.records else None
        if last == "seal":
            return "sealed"
        if last == "session.close" and self.frame_ended and not self.truncated_tail:
            return "closed"
        return "unsealed"

    @property
    def last_seq(self) -> int | None:
        for rec in reversed(self.records):
            if isinstance(rec.get("seq"), int):
                return rec["seq"]
        return None

    @property
    def open_record(self) -> dict | None:
        if self.records and self.records[0].get("t") == "session.open":
            return self.records[0]
        return None


# -- records ----------------------------------------------------------------------------


def _check_body(seq: int, key: str, body) -> Problem | None:
    if body is None:
        return None
    rpc = "messages" in body  # Connect/gRPC messages (docs/format.md)
    if not (rpc or isinstance(body.get("text"), str) or isinstance(body.get("b64"), str)):
        return Problem(seq, "field", f"{key} has neither \"text\" nor \"b64\"")
    if not isinstance(body.get("size"), int):
        return Problem(seq, "field", f"{key} has no integer \"size\"")
    if "b64" in body or rpc:
        try:
            format_v1.decode_body(body)
        except (ValueError, TypeError, RecursionError):
            return Problem(seq, "field", f"{key}.{'messages are not valid' if rpc else 'b64 is not valid base64'}")
    return None


def _check_fields(seq: int, rec: dict) -> list[Problem]:
    out = []
    v = rec.get("v")
    if v != format_v1.VERSION:
        out.append(Problem(seq, "version", f"format version v={v!r}, this reader reads v={format_v1.VERSION}"))
    t = rec.get("t")
    if not isinstance(t, str) or not t:
        out.append(Problem(seq, "field", "missing record type \"t\""))
        return out
    ts = rec.get("ts")
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        out.append(Problem(seq, "field", f"{t}: \"ts\" is not a number"))
    out += [Problem(seq, "field", text) for text in records.field_problems(rec)]
    if t in records.BODY_TYPES and isinstance(rec.get("body"), dict):
        p = _check_body(seq, f"{t}: body", rec["body"])
        if p:
            out.append(p)
    return out


def _check_chain(result: SessionRead) -> None:
    """Chain, order and field checks over result.lines; fills records, problems, head."""
    prev_hash = format_v1.ZERO_HASH
    expected_seq = 0
    intact = True
    closed_at = None  # seq of session.close, once seen
    sealed_at = None
    before = None  # seq of the line before, for messages
    for index, line in enumerate(result.lines):
        seq = expected_seq
        found: list[Problem] = []
        try:
            rec = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            rec = None
            found.append(Problem(seq, "json", f"line {index + 1} is not valid JSON ({e})"))
        if rec is not None and not isinstance(rec, dict):
            found.append(Problem(seq, "json", f"line {index + 1} is not a JSON object"))
            rec = None
        if rec is not None:
            result.records.append(rec)
            got_seq = rec.get("seq")
            if not isinstance(got_seq, int) or isinstance(got_seq, bool):
                found.append(Problem(seq, "seq", f"line {index + 1} has no integer seq"))
            else:
                seq = got_seq
                if got_seq != expected_seq:
                    what = "gap: records missing" if got_seq > expected_seq else "out of order or repeated"
                    found.append(Problem(seq, "seq", f"expected seq {expected_seq}, found {got_seq} ({what})"))
            prev = rec.get("prev")
            if prev != prev_hash:
                if not isinstance(prev, str) or not _HEX64.fullmatch(prev):
                    found.append(Problem(seq, "prev", f"prev {prev!r} is not a lowercase hex SHA-256"))
                elif index == 0:
                    found.append(Problem(seq, "prev", "prev of the first record is not 64 zeros"))
                else:
                    found.append(
                        Problem(
                            seq,
                            "prev",
                            f"prev does not match the hash of the line before it (seq {before}): "
                            "a line was edited, removed, inserted or moved",
                        )
                    )
            found.extend(_check_fields(seq, rec))
            t = rec.get("t")
            if index == 0 and t != "session.open":
                found.append(Problem(seq, "order", f"the first record is {t!r}, not session.open"))
            elif index > 0 and t == "session.open":
                found.append(Problem(seq, "order", "a second session.open"))
            if sealed_at is not None:
                found.append(Problem(seq, "order", f"record after the seal (seq {sealed_at})"))
            elif closed_at is not None and t != "seal":
                found.append(Problem(seq, "order", f"{t} after session.close (seq {closed_at})"))
            if t == "session.close" and closed_at is None:
                closed_at = seq
            if t == "seal" and sealed_at is None:
                sealed_at = seq
        if found:
            result.problems.extend(found)
            intact = False
        elif intact:
            result.head = format_v1.line_hash(line)
            result.intact = index + 1
        prev_hash = format_v1.line_hash(line)
        before = seq
        expected_seq = seq + 1


def read_session(path: str | Path) -> SessionRead:
    """Read one session file. Never raises on damage: see SessionRead.problems/state."""
    path = Path(path)
    result = SessionRead(path=path)
    try:
        data = path.read_bytes()
    except OSError as e:
        result.problems.append(Problem(None, "io", f"cannot read the file: {e.strerror or e}"))
        return result
    decoded = zstd_blocks.decode(data)
    result.problems.extend(Problem(None, kind, message) for kind, message in decoded.problems)
    result.frame_ended, result.truncated_tail = decoded.frame_ended, decoded.truncated_tail
    content = decoded.content
    if content:
        *complete, tail = content.split(b"\n")
        result.lines = complete
        if tail:
            result.truncated_tail = True
            if result.frame_ended:
                # The writer ends every line with a newline before it ends the frame.
                result.problems.append(
                    Problem(None, "tail", "the last line has no newline although the zstd frame is ended")
                )
    _check_chain(result)
    opened = result.open_record
    if opened is not None and isinstance(opened.get("session"), str):
        result.session_id = opened["session"]
        stem = path.name[: -len(format_v1.FILE_SUFFIX)] if path.name.endswith(format_v1.FILE_SUFFIX) else None
        if stem and _SESSION_ID.fullmatch(stem) and stem != result.session_id:
            result.problems.append(
                Problem(0, "session", f"the file is named {stem} but holds session {result.session_id}")
            )
    if not result.lines and not result.problems:
        result.problems.append(
            Problem(None, "empty", "no complete record in the file" + (" (cut mid-write)" if result.truncated_tail else ""))
        )
    return result


def iter_session_files(path_or_dir: str | Path) -> Iterator[Path]:
    """The file itself, or every *.jsonl.zst below a directory, sorted (= by time)."""
    p = Path(path_or_dir)
    if p.is_dir():
        yield from sorted(f for f in p.rglob("*" + format_v1.FILE_SUFFIX) if f.is_file())
    elif p.exists():
        yield p
    else:
        raise FileNotFoundError(f"no such file or directory: {p}")


# -- helpers for consumers (replay, tests) ---------------------------------------------


def flow_records(records: list[dict]) -> dict[str, list[dict]]:
    """Records that name a flow, grouped by flow id, in file order."""
    flows: dict[str, list[dict]] = {}
    for rec in records:
        flow = rec.get("flow")
        if isinstance(flow, str):
            flows.setdefault(flow, []).append(rec)
    return flows
