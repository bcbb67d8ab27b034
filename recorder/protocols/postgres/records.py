"""What a database connection becomes on the record: the `pg.*` records (docs/format.md).

`Tracker` watches both directions of one connection. `client(messages)` turns the client's
messages into the records that must be written before they are forwarded (Query, Parse,
Bind, Execute, FunctionCall); `server(messages)` follows the answers and emits one
`pg.result` per statement when its CommandComplete, EmptyQueryResponse, PortalSuspended or
ErrorResponse arrives. It pairs answers with requests the way the server does: in order,
and after an error in the extended protocol everything up to the next Sync is skipped.
SQL text, parameters, error messages and sampled rows are masked here, before any record
leaves the event loop.
"""
from __future__ import annotations

import collections
import time
from typing import Callable

from recorder.protocols.postgres import protocol as pg
from recorder.protocols.postgres.values import recorded_value, type_name
from recorder.store.records import PG_BIND, PG_ERROR, PG_EXECUTE, PG_FUNCTION, PG_PARSE, PG_QUERY, PG_RESULT

# The fields of each pg.* record are in the one table of record types, recorder/store/records.py.

# Message types whose bodies are read; the others (DataRow, CopyData) are only counted.
CLIENT_KEEP = frozenset(bytes([c]) for c in b"QPBEDCSHFXcf")
# What a client may send once it is in. Anything else is refused, not forwarded unrecorded.
CLIENT_TYPES = CLIENT_KEEP | {b"d"}
SERVER_KEEP = frozenset(bytes([c]) for c in b"TCEIsZGHW12n3tS")
SERVER_KEEP_SAMPLED = SERVER_KEEP | {b"D"}
SAMPLE_VALUE_MAX = 1024  # characters (or bytes) kept of one sampled cell


class _Pending:
    """A client message that the server will answer."""

    __slots__ = ("kind", "n", "t0", "columns", "rows", "i", "sample", "copy", "name")

    def __init__(self, kind: bytes, n: int | None, name: str = ""):
        self.kind = kind  # Q, P, B, E, D, C, S, F
        self.n = n  # the record number of the request, when it was recorded
        self.name = name  # portal (E), statement (P), "S<name>"/"P<name>" (D)
        self.t0 = 0.0
        self.columns: list | None = None
        self.rows = 0
        self.i = 0  # results so far (a Query may hold several statements)
        self.sample: list | None = None
        self.copy: dict | None = None


def _error(fields: dict[str, str], masker) -> dict:
    def m(text):
        return masker.mask_text(text) if masker is not None and text else text

    out = {"sqlstate": fields.get("C"), "severity": fields.get("V") or fields.get("S"), "message": m(fields.get("M", ""))}
    for code, name in (("D", "detail"), ("H", "hint"), ("P", "position")):
        if fields.get(code):
            out[name] = m(fields[code]) if code != "P" else fields[code]
    return out


class Tracker:
    def __init__(self, conn_id: str, emit: Callable[[str, dict], None], masker_of: Callable[[], object],
                 *, sample_rows: int = 0, max_value: int = 0, clock: Callable[[], float] = time.monotonic):
        self.conn = conn_id
        self.emit = emit  # records nobody waits for (results)
        self.masker_of = masker_of
        self.sample_rows = sample_rows
        self.max_value = max_value
        self.clock = clock
        self.n = 0
        self.pending: collections.deque[_Pending] = collections.deque()
        self.statements: dict[str, list[int]] = {}  # prepared statement -> parameter type oids
        self.stmt_columns: dict[str, list] = {}
        self.portals: dict[str, tuple[str, list | None]] = {}  # portal -> (statement, columns)
        self.copy: dict | None = None  # the COPY in progress: {"dir", "bytes", "messages"}
        self.status = b"I"  # transaction status from the last ReadyForQuery
        self.terminated = False  # the client sent Terminate
        self.statements_run = 0

    # -- client -> server ----------------------------------------------------------------

    def _next(self) -> int:
        n = self.n
        self.n += 1
        return n

    def _mask(self, text: str) -> str:
        masker = self.masker_of()
        text = masker.mask_text(text) if masker is not None and text else text
        if self.max_value and len(text) > self.max_value:
            text = text[: self.max_value]
        return text

    def client(self, messages: list[tuple[bytes, bytes | None]]) -> list[tuple[str, dict]]:
        """Records for these client messages, in order (to be written before they are forwarded)."""
        out: list[tuple[str, dict]] = []
        for mtype, body, size in messages:
            if mtype == b"d":
                self._copy_data(size)
                continue
            if mtype == b"Q":
                n = self._next()
                out.append((PG_QUERY, {"conn": self.conn, "n": n, "sql": self._mask(pg.parse_query(body))}))
                self.pending.append(_Pending(b"Q", n))
            elif mtype == b"P":
                name, sql, types = pg.parse_parse(body)
                n = self._next()
                self.statements[name] = types
                self.stmt_columns.pop(name, None)
                out.append((PG_PARSE, {"conn": self.conn, "n": n, "statement": name, "sql": self._mask(sql),
                                         "param_types": [type_name(t) for t in types]}))
                self.pending.append(_Pending(b"P", n, name))
            elif mtype == b"B":
                portal, stmt, formats, values, result_formats = pg.parse_bind(body)
                n = self._next()
                types = self.statements.get(stmt, [])
                masker = self.masker_of()
                params = []
                for i, v in enumerate(values):
                    fmt = formats[i] if len(formats) > 1 else (formats[0] if formats else 0)
                    oid = types[i] if i < len(types) else 0
                    params.append(recorded_value(v, oid, fmt == 1, masker, self.max_value))
                fields = {"conn": self.conn, "n": n, "portal": portal, "statement": stmt, "params": params}
                if any(result_formats):
                    fields["result_formats"] = "binary" if all(result_formats) else result_formats
                out.append((PG_BIND, fields))
                cols = self.stmt_columns.get(stmt)
                if cols is not None:  # a statement's description has no formats: the Bind chooses them
                    cols = [(c[0], c[1], result_formats[i] if len(result_formats) > 1 else
                             (result_formats[0] if result_formats else 0)) for i, c in enumerate(cols)]
                self.portals[portal] = (stmt, cols)
                self.pending.append(_Pending(b"B", n, portal))
            elif mtype == b"E":
                portal, max_rows = pg.parse_execute(body)
                n = self._next()
                stmt, columns = self.portals.get(portal, ("", None))
                fields = {"conn": self.conn, "n": n, "portal": portal, "statement": stmt}
                if max_rows:
                    fields["max_rows"] = max_rows
                out.append((PG_EXECUTE, fields))
                p = _Pending(b"E", n, portal)
                p.columns = columns
                self.pending.append(p)
            elif mtype == b"F":
                oid, formats, args = pg.parse_function_call(body)
                n = self._next()
                masker = self.masker_of()
                out.append((PG_FUNCTION, {"conn": self.conn, "n": n, "oid": oid, "args": [
                    recorded_value(a, 0, (formats[i] if len(formats) > 1 else (formats[0] if formats else 0)) == 1,
                                   masker, self.max_value) for i, a in enumerate(args)]}))
                self.pending.append(_Pending(b"F", n))
            elif mtype == b"D":
                kind, name = pg.parse_describe_close(body)
                self.pending.append(_Pending(b"D", None, kind + name))
            elif mtype == b"C":
                kind, name = pg.parse_describe_close(body)
                if kind == "S":
                    self.statements.pop(name, None)
                    self.stmt_columns.pop(name, None)
                else:
                    self.portals.pop(name, None)
                self.pending.append(_Pending(b"C", None))
            elif mtype == b"S":
                self.pending.append(_Pending(b"S", None))
            elif mtype in (b"c", b"f"):
                if self.copy is not None and mtype == b"f":
                    self.copy["failed"] = True
            elif mtype == b"X":
                self.terminated = True
            elif mtype not in CLIENT_TYPES:
                raise pg.ProtocolError(f"unexpected message type {mtype!r} from the client")
        return out

    def _copy_data(self, size: int) -> None:
        """CopyData of the COPY in progress, either way: counted, never kept."""
        if self.copy is not None:
            self.copy["bytes"] += size
            self.copy["messages"] += 1

    def started(self) -> None:
        """The messages just recorded were forwarded now: their durations start here."""
        now = self.clock()
        for p in self.pending:
            if not p.t0:
                p.t0 = now

    # -- server -> client ----------------------------------------------------------------

    def _head(self) -> _Pending | None:
        return self.pending[0] if self.pending else None

    def _result(self, p: _Pending | None, *, tag: str | None = None, error: dict | None = None,
                suspended: bool = False) -> None:
        fields: dict = {"conn": self.conn, "n": p.n if p is not None else None, "tag": tag,
                        "rows": pg.rows_from_tag(tag) if tag else (p.rows if p is not None and p.rows else None)}
        if p is not None:
            if p.kind == b"Q":
                fields["i"] = p.i
                p.i += 1
            if p.columns:
                fields["columns"] = [[c[0], type_name(c[1])] for c in p.columns]
            fields["duration_ms"] = round((self.clock() - p.t0) * 1000, 3) if p.t0 else None
            if p.copy is not None:
                fields["copy"] = p.copy
            if p.sample:
                fields["sample"] = p.sample
            self.statements_run += 1
        if suspended:
            fields["suspended"] = True
        if error is not None:
            fields["error"] = error
        self.emit(PG_RESULT, fields)
        if p is not None:  # a Query's next statement starts afresh
            p.columns, p.rows, p.sample, p.copy = None, 0, None, None
        self.copy = None

    def server(self, messages: list[tuple[bytes, bytes | None]]) -> None:
        for mtype, body, size in messages:
            if mtype == b"D":
                p = self._head()
                if p is not None:
                    p.rows += 1
                    if self.sample_rows and body is not None and (p.sample is None or len(p.sample) < self.sample_rows):
                        self._sample(p, body)
                continue
            if mtype == b"d":
                self._copy_data(size)
                continue
            if mtype == b"T":
                cols = pg.parse_row_description(body)
                p = self._head()
                if p is None:
                    continue
                if p.kind == b"D":
                    self.pending.popleft()
                    if p.name.startswith("S"):
                        self.stmt_columns[p.name[1:]] = cols
                    else:
                        stmt = self.portals.get(p.name[1:], ("", None))[0]
                        self.portals[p.name[1:]] = (stmt, cols)
                        for q in self.pending:  # an Execute of this portal already queued
                            if q.kind == b"E" and q.name == p.name[1:] and q.columns is None:
                                q.columns = cols
                else:
                    p.columns = cols
            elif mtype == b"V":  # FunctionCallResponse
                p = self._head()
                if p is not None and p.kind == b"F":
                    self._result(p, tag="FUNCTION CALL")
            elif mtype == b"t":
                p = self._head()
                if p is not None and p.kind == b"D" and p.name.startswith("S"):
                    self.statements[p.name[1:]] = pg.parse_parameter_description(body)  # types the server chose
            elif mtype == b"C":
                self._complete(pg.Reader(body).cstr())
            elif mtype == b"I":
                self._complete("")
            elif mtype == b"s":
                p = self._head()
                if p is not None and p.kind == b"E":
                    self.pending.popleft()
                    self._result(p, suspended=True)
            elif mtype == b"E":
                self._error(pg.parse_fields(body))
            elif mtype == b"Z":
                self.status = body[:1] or b"I"
                while self.pending:
                    p = self.pending.popleft()
                    if p.kind in (b"Q", b"S", b"F"):
                        break
            elif mtype in (b"1", b"2", b"3", b"n"):
                want = {b"1": b"P", b"2": b"B", b"3": b"C", b"n": b"D"}[mtype]
                p = self._head()
                if p is not None and p.kind == want:
                    self.pending.popleft()
            elif mtype in (b"G", b"H", b"W"):
                p = self._head()
                self.copy = {"dir": "in" if mtype == b"G" else "out" if mtype == b"H" else "both",
                             "bytes": 0, "messages": 0}
                if p is not None:
                    p.copy = self.copy

    def _complete(self, tag: str) -> None:
        p = self._head()
        if p is None:
            self._result(None, tag=tag)
            return
        if p.kind == b"E":
            self.pending.popleft()
        self._result(p, tag=tag)

    def _error(self, fields: dict[str, str]) -> None:
        error = _error(fields, self.masker_of())
        p = self._head()
        if p is None or p.kind in (b"S",):
            # Not an answer to a statement: a FATAL (the server shutting down) or an error at Sync.
            self.emit(PG_ERROR, {"conn": self.conn, "phase": "server", "message": error["message"],
                                   "sqlstate": error["sqlstate"], "severity": error["severity"]})
            return
        if p.kind in (b"Q", b"F"):
            self._result(p, error=error)
            return
        # Extended protocol: the server skips every message up to the next Sync.
        self.pending.popleft()
        self._result(p if p.n is not None else None, error=error)
        while self.pending and self.pending[0].kind != b"S":
            self.pending.popleft()

    def _sample(self, p: _Pending, body: bytes) -> None:
        if p.sample is None:
            p.sample = []
        masker = self.masker_of()
        cols = p.columns or []
        row = []
        for i, cell in enumerate(pg.parse_data_row(body)):
            oid, fmt = (cols[i][1], cols[i][2]) if i < len(cols) else (0, 0)
            row.append(recorded_value(cell, oid, fmt == 1, masker, SAMPLE_VALUE_MAX))
        p.sample.append(row)
