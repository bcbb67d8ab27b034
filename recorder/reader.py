"""Reading session files (format v1) without ever raising on damage.

A session file is one zstd frame of JSON lines, hash-chained (docs/format.md). The
reader walks the frame block by block, so that everything in complete blocks is read
even when the file was cut mid-write or a block further on is corrupt, then checks
the chain and every record's fields. Damage becomes a `Problem`, never an exception.
"""
from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import zstandard

from recorder import format_v1
from recorder.postgres.records import REQUIRED as PG_REQUIRED

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_HEX64 = re.compile(r"[0-9a-f]{64}")
_SESSION_ID = re.compile(r"[0-9A-HJKMNP-TV-Z]{26}")

# Fields each record type must carry (beyond the envelope), and the JSON types allowed.
_ANY = object()
_DICT_OR_NULL = (dict, type(None))
_STR_OR_NULL = (str, type(None))
REQUIRED: dict[str, dict[str, object]] = {
    "session.open": {"session": str, "identity": dict, "client": dict, "gateway": dict, "key": _STR_OR_NULL},
    "http.request": {
        "flow": str,
        "conn": _ANY,
        "connection": _STR_OR_NULL,
        "method": str,
        "url": str,
        "http_version": str,
        "headers": list,
        "body": _DICT_OR_NULL,
    },
    "http.response": {"flow": str, "status": int, "headers": list, "body": _DICT_OR_NULL, "streamed": bool},
    "http.chunk": {"flow": str, "dir": str, "body": dict},
    "http.end": {"flow": str, "size": _ANY, "duration_ms": _ANY, "ttfb_ms": _ANY},
    "http.error": {"flow": str, "phase": str, "message": str},
    "ws.open": {"flow": str, "conn": _ANY, "connection": _STR_OR_NULL, "url": str},
    "ws.message": {"flow": str, "from": str, "n": int, "kind": str, "body": dict},
    "ws.close": {"flow": str, "code": _ANY, "by": _STR_OR_NULL, "messages": dict},
    "tcp.open": {"flow": str, "conn": _ANY, "connection": _STR_OR_NULL, "host": _STR_OR_NULL, "port": _ANY},
    "tcp.message": {"flow": str, "from": str, "n": int, "body": dict},
    "tcp.close": {"flow": str, "messages": dict, "size": dict},
    "tcp.refused": {"conn": _ANY, "host": _STR_OR_NULL, "port": _ANY, "reason": str, "message": str},
    "mcp.open": {"flow": str, "command": list, "pid": int},
    "mcp.message": {"flow": str, "from": str, "n": int, "body": dict},
    "mcp.close": {"flow": str, "by": str},
    "session.close": {"reason": str, "counts": dict},
    "checkpoint": {"key": str, "sig": str},
    "seal": {"key": str, "sig": str},
    **PG_REQUIRED,
}
# Fields a record may carry (newer gateways write them), and the JSON types they must have then.
_DEST = object()  # {"host": str, "port": int, "address": str or null}, or null
OPTIONAL: dict[str, dict[str, object]] = {
    "http.request": {"dest": _DEST},
    "auth.refused": {"dest": _DEST},
    "http.end": {"address": _STR_OR_NULL},
    "tunnel": {"address": _STR_OR_NULL, "sni": _STR_OR_NULL},
}


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


# -- zstd -------------------------------------------------------------------------------


class _Frame:
    """Where the units of one zstd frame lie in the file (RFC 8878 block headers)."""

    __slots__ = ("pieces", "end", "partial", "error")

    def __init__(self):
        self.pieces: list[tuple[int, int]] = []  # (start, end): header + first block, then one block each
        self.end: int | None = None  # offset just past the frame, when it is ended
        self.partial = False  # the data stops inside the header, a block or the checksum
        self.error: str | None = None  # a block header that no encoder writes


def _walk_frame(data: bytes) -> _Frame:
    frame = _Frame()
    if len(data) < 5:
        frame.partial = True
        return frame
    fhd = data[4]
    if fhd & 0x08:
        frame.error = "reserved bit set in the zstd frame header"
        return frame
    fcs_flag, single, checksum, did_flag = fhd >> 6, fhd & 0x20, fhd & 0x04, fhd & 0x03
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[did_flag] + (1 if single else 0, 2, 4, 8)[fcs_flag]
    start = 0  # the frame header is fed together with the first block
    while True:
        if pos + 3 > len(data):
            frame.partial = pos != len(data)  # cut inside the frame header or a block header
            return frame
        header = int.from_bytes(data[pos : pos + 3], "little")
        last, btype, bsize = header & 1, (header >> 1) & 3, header >> 3
        if btype == 3:
            frame.error = f"reserved zstd block type at byte {pos}; records after it are lost"
            return frame
        end = pos + 3 + (1 if btype == 1 else bsize)  # an RLE block stores one byte
        if last and checksum:
            end += 4
        if end > len(data):
            frame.partial = True
            return frame
        frame.pieces.append((start, end))
        start = pos = end
        if last:
            frame.end = end
            return frame


def _decompress(data: bytes, result: SessionRead) -> bytes:
    """The decodable content of the file. Records problems on `result`."""
    if not data:
        result.problems.append(Problem(None, "empty", "the file is empty (no zstd frame, no records)"))
        return b""
    if data[:4] != ZSTD_MAGIC[: len(data[:4])]:
        result.problems.append(
            Problem(None, "not-zstd", "not a zstd stream (the file does not start with the zstd magic number)")
        )
        return b""
    frame = _walk_frame(data)
    if frame.error:
        result.problems.append(Problem(None, "zstd", frame.error))
    result.truncated_tail = frame.partial
    result.frame_ended = frame.end is not None
    out = []
    dobj = zstandard.ZstdDecompressor().decompressobj()
    for start, end in frame.pieces:
        try:
            out.append(dobj.decompress(data[start:end]))
        except zstandard.ZstdError as e:
            result.problems.append(
                Problem(None, "zstd", f"zstd block at byte {start} does not decode ({e}); records after it are lost")
            )
            result.frame_ended = False
            break
    if frame.end is not None and frame.end < len(data):
        result.problems.append(
            Problem(None, "trailing-data", f"{len(data) - frame.end} bytes after the end of the zstd frame")
        )
    return b"".join(out)


# -- records ----------------------------------------------------------------------------


def _type_ok(value, expected) -> bool:
    if expected is _ANY:
        return True
    types = expected if isinstance(expected, tuple) else (expected,)
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true/false is not a number
    return isinstance(value, types)


def _dest_ok(dest) -> bool:
    return dest is None or (isinstance(dest, dict) and isinstance(dest.get("host"), str)
                            and _type_ok(dest.get("port"), int) and _type_ok(dest.get("address"), _STR_OR_NULL))


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
    for key, expected in REQUIRED.get(t, {}).items():
        if key not in rec:
            out.append(Problem(seq, "field", f"{t}: missing field \"{key}\""))
        elif not _type_ok(rec[key], expected):
            out.append(Problem(seq, "field", f"{t}: field \"{key}\" has the wrong type ({type(rec[key]).__name__})"))
    for key, expected in OPTIONAL.get(t, {}).items():
        if key in rec and not (_dest_ok(rec[key]) if expected is _DEST else _type_ok(rec[key], expected)):
            out.append(Problem(seq, "field", f"{t}: field \"{key}\" has the wrong type or shape"))
    if t == "http.chunk" and rec.get("dir") not in ("request", "response", None):
        out.append(Problem(seq, "field", f"http.chunk: dir {rec.get('dir')!r} is not \"request\" or \"response\""))
    if t in ("ws.message", "tcp.message", "mcp.message") and rec.get("from") not in ("client", "server", None):
        out.append(Problem(seq, "field", f"{t}: from {rec.get('from')!r} is not \"client\" or \"server\""))
    if t == "ws.message" and rec.get("kind") not in ("text", "binary", None):
        out.append(Problem(seq, "field", f"ws.message: kind {rec.get('kind')!r} is not \"text\" or \"binary\""))
    if t in ("http.request", "http.response", "http.chunk", "ws.message", "tcp.message", "mcp.message") and isinstance(rec.get("body"), dict):
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
    content = _decompress(data, result)
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


def rebuild_body(records: list[dict], flow_id: str, dir: str) -> bytes:
    """The recorded body of one direction of a flow: the buffered body, or the
    http.chunk bodies of that direction joined in order. Bytes as stored (decoded
    Content-Encoding, masked, cut where the gateway truncated)."""
    if dir not in ("request", "response"):
        raise ValueError(f"dir must be 'request' or 'response', not {dir!r}")
    head_type = "http." + dir
    mine = [r for r in records if r.get("flow") == flow_id]
    if not mine:
        raise KeyError(f"no records for flow {flow_id}")
    for rec in mine:
        if rec.get("t") == head_type and rec.get("body") is not None:
            return format_v1.decode_body(rec["body"])
    chunks = [r for r in mine if r.get("t") == "http.chunk" and r.get("dir") == dir]
    return b"".join(format_v1.decode_body(r.get("body")) for r in chunks)


EXCHANGE_TYPES = ("http.request", "pg.query", "pg.execute", "pg.function")  # a database statement is an exchange


@dataclass(frozen=True)
class SessionSummary:
    """What `wiretrail ls` and the header of `wiretrail show` say about a session."""

    session_id: str | None
    path: Path
    state: str
    start: float | None  # Unix seconds (session.open ts)
    end: float | None  # Unix seconds of the last readable record
    duration: float | None  # seconds
    sub: str | None
    authenticated: bool | None
    client: str | None  # "ip:port"
    client_ip: str | None
    exchanges: int  # http.request records and database statements (EXCHANGE_TYPES)
    bytes: int  # body bytes per flow: http.end sizes, else the recorded body sizes
    records: int
    agent: str | None = None  # session.open's agent.name: the agent run the client named
    run: str | None = None  # session.open's agent.run


def _number(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _flow_bytes(recs: list[dict]) -> int:
    # A WebSocket's or raw TCP flow's messages are counted in its ws.close / tcp.close.
    after = sum(sum(_number(v) for v in rec["size"].values()) for rec in recs
                if rec.get("t") in ("ws.close", "tcp.close") and isinstance(rec.get("size"), dict))
    for rec in recs:
        if rec.get("t") == "http.end" and isinstance(rec.get("size"), dict):
            return sum(_number(v) for v in rec["size"].values()) + after
    if after:
        return after
    total = 0
    for rec in recs:
        if rec.get("t") in ("http.request", "http.response", "http.chunk") and isinstance(rec.get("body"), dict):
            total += _number(rec["body"].get("size"))
    return total


def summarize(read: SessionRead) -> SessionSummary:
    opened = read.open_record or {}
    identity = opened.get("identity") if isinstance(opened.get("identity"), dict) else {}
    client = opened.get("client") if isinstance(opened.get("client"), dict) else {}
    agent = opened.get("agent") if isinstance(opened.get("agent"), dict) else {}
    times = [r["ts"] for r in read.records if isinstance(r.get("ts"), (int, float)) and not isinstance(r.get("ts"), bool)]
    start = opened.get("ts") if isinstance(opened.get("ts"), (int, float)) else (times[0] if times else None)
    end = times[-1] if times else None
    duration = None
    for rec in reversed(read.records):
        if rec.get("t") == "session.close" and isinstance(rec.get("duration_s"), (int, float)):
            duration = float(rec["duration_s"])
            break
    if duration is None and start is not None and end is not None:
        duration = max(0.0, end - start)
    ip, port = client.get("ip"), client.get("port")
    return SessionSummary(
        session_id=read.session_id,
        path=read.path,
        state=read.state,
        start=start,
        end=end,
        duration=duration,
        sub=identity.get("sub"),
        authenticated=identity.get("authenticated"),
        client=None if ip is None else (f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"),
        client_ip=ip,
        exchanges=sum(1 for r in read.records if r.get("t") in EXCHANGE_TYPES),
        bytes=sum(_flow_bytes(recs) for recs in flow_records(read.records).values())
        + sum(_number(v) for r in read.records if r.get("t") == "pg.end" and isinstance(r.get("bytes"), dict)
              for v in r["bytes"].values()),  # database connections: bytes from both sides
        records=len(read.records),
        agent=_text(agent.get("name")),
        run=_text(agent.get("run")),
    )


def _text(value) -> str | None:
    return value if isinstance(value, str) else None
