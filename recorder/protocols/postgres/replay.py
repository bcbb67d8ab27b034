"""Re-running a recorded database session against a sandbox database, and comparing.

`scripts/replay.py SESSION --pg "host=... dbname=sandbox user=..."` is its command line. Each
recorded statement (a simple query, or an extended-protocol statement with its bound
parameters, sent as text) runs in order on one connection to the sandbox, and its row count and
error (SQLSTATE) are compared with the recorded ones.

Read-only by default: only statements that recorder/protocols/postgres/sqlkind.py marks as reads run, each
in a READ ONLY transaction that is rolled back, so even a function with side effects cannot
write. `--allow-writes` runs every statement as recorded, transaction control included.
Masked values (`[MASKED:...]`) are sent as their masked text, and the result says so.
"""
from __future__ import annotations

import asyncio
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from recorder.forensics.replay import ReplayUsageError
from recorder.protocols.postgres import protocol as pg
from recorder.protocols.postgres.sqlkind import kind
from recorder.protocols.postgres.transcript import statements
from recorder.protocols.postgres.upstream import UpstreamError, UpstreamSettings, connect, read_message  # noqa: F401 (UpstreamError: for callers)

MASKED = "[MASKED:"



@dataclass
class Target:
    settings: UpstreamSettings
    password: str | None
    database: str


def parse_target(conninfo: str) -> Target:
    """A libpq-style "key=value ..." string or a postgresql:// URL. The password may come from
    PGPASSWORD."""
    params: dict[str, str] = {}
    if conninfo.startswith(("postgres://", "postgresql://")):
        u = urlsplit(conninfo)
        params.update({k: v[-1] for k, v in parse_qs(u.query).items()})
        if u.hostname:
            params["host"] = u.hostname
        if u.port:
            params["port"] = str(u.port)
        if u.username:
            params["user"] = unquote(u.username)
        if u.password:
            params["password"] = unquote(u.password)
        if u.path.strip("/"):
            params["dbname"] = unquote(u.path.strip("/"))
    else:
        for part in shlex.split(conninfo):
            k, sep, v = part.partition("=")
            if not sep:
                raise ReplayUsageError(f"--pg: {part!r} is not key=value")
            params[k.strip()] = v
    unknown = set(params) - {"host", "port", "dbname", "user", "password", "sslmode", "sslrootcert", "connect_timeout"}
    if unknown:
        raise ReplayUsageError(f"--pg: unknown key(s) {', '.join(sorted(unknown))}")
    sslmode = params.get("sslmode", "prefer")
    tls = {"disable": "disable", "allow": "prefer", "prefer": "prefer", "require": "require",
           "verify-ca": "verify-full", "verify-full": "verify-full"}.get(sslmode)
    if tls is None:
        raise ReplayUsageError(f"--pg: sslmode={sslmode} is not one of disable, prefer, require, verify-full")
    host = params.get("host", "/var/run/postgresql")
    user = params.get("user") or os.environ.get("PGUSER") or os.environ.get("USER", "postgres")
    database = params.get("dbname", user)
    if host.startswith("/"):
        tls = "disable"
    settings = UpstreamSettings(host=host, port=int(params.get("port", 5432)), user=user, database=database,
                                tls=tls, ca=Path(params["sslrootcert"]) if params.get("sslrootcert") else None,
                                connect_timeout=float(params.get("connect_timeout", 10)))
    return Target(settings, params.get("password") or os.environ.get("PGPASSWORD"), database)


@dataclass
class Statement:
    sql: str
    params: list = field(default_factory=list)
    recorded_rows: int | None = None
    recorded_error: str | None = None
    recorded_tag: str | None = None
    kind: str = "read"
    skip: str | None = None
    masked: bool = False
    replayed_rows: int | None = None
    replayed_error: str | None = None
    replayed_tag: str | None = None
    replayed_message: str | None = None
    ran: bool = False

    @property
    def same(self) -> bool:
        return self.skip is None and self.ran and self.recorded_rows == self.replayed_rows and \
            self.recorded_error == self.replayed_error

    def json(self) -> dict:
        out = {"sql": self.sql, "kind": self.kind, "recorded_rows": self.recorded_rows,
               "recorded_error": self.recorded_error, "recorded_tag": self.recorded_tag}
        if self.skip:
            out["skipped"] = self.skip
        elif not self.ran:
            out["would_run"] = True
        else:
            out.update(replayed_rows=self.replayed_rows, replayed_error=self.replayed_error,
                       replayed_tag=self.replayed_tag, same=self.same)
            if self.replayed_message:
                out["replayed_message"] = self.replayed_message
        if self.masked:
            out["masked"] = True
        return out


def plan(records: list[dict], *, allow_writes: bool) -> list[Statement]:
    out = []
    for e in statements(records):
        if e["kind"] != "statement":
            continue
        results = e["results"]
        res = results[-1] if results else None
        error = (res or {}).get("error") or {}
        st = Statement(sql=e["sql"], params=e.get("params") or [],
                       recorded_rows=(res or {}).get("rows") if res and not error else None,
                       recorded_error=error.get("sqlstate"), recorded_tag=(res or {}).get("tag"),
                       kind=kind(e["sql"]))
        st.masked = MASKED in st.sql or any(MASKED in (p or {}).get("text", "") for p in st.params)
        if not results:
            st.skip = "not run when recorded"
        elif st.sql.startswith("<"):
            st.skip = "no SQL recorded"
        elif any(p is not None and "text" not in p for p in st.params):
            st.skip = "a binary parameter that was not decoded"
        elif not allow_writes and st.kind != "read":
            st.skip = st.kind  # "write" or "control"
        out.append(st)
    return out


async def _run_one(up, st: Statement, read_only: bool) -> None:
    st.ran = True
    w, r = up.writer, up.reader
    if read_only:
        w.write(pg.query_message("BEGIN TRANSACTION READ ONLY"))
    if st.params:
        values = [None if p is None else p["text"].encode("utf-8") for p in st.params]
        w.write(pg.parse_message("", st.sql) + pg.bind_message("", "", values) + pg.execute_message() + pg.SYNC)
    else:
        w.write(pg.query_message(st.sql))
    if read_only:
        w.write(pg.query_message("ROLLBACK"))
    await w.drain()
    waits = 3 if read_only else 1  # one ReadyForQuery per Query/Sync
    index = 0  # which of the (BEGIN, statement, ROLLBACK) answers we are in
    rows = 0
    target = 1 if read_only else 0
    while waits:
        mtype, body = await read_message(r, limit=1 << 30)
        if index == target:
            if mtype == b"D":
                rows += 1
            elif mtype == b"C":
                st.replayed_tag = pg.Reader(body).cstr()
                tagged = pg.rows_from_tag(st.replayed_tag)
                st.replayed_rows = tagged if tagged is not None else None
            elif mtype == b"E":
                fields = pg.parse_fields(body)
                st.replayed_error, st.replayed_message = fields.get("C"), fields.get("M")
        if mtype == b"Z":
            waits -= 1
            index += 1
    if st.replayed_rows is None and rows and st.replayed_error is None:
        st.replayed_rows = rows


async def run(target: Target, planned: list[Statement], *, allow_writes: bool) -> None:
    up = await connect(target.settings, target.password, {"application_name": "wiretrail-replay"})
    try:
        for st in planned:
            if st.skip is None:
                await _run_one(up, st, read_only=not allow_writes)
        up.writer.write(pg.TERMINATE)
    finally:
        up.writer.close()


def table(planned: list[Statement]) -> list[str]:
    out = []
    for i, st in enumerate(planned, 1):
        sql = " ".join(st.sql.split())
        sql = sql if len(sql) <= 100 else sql[:97] + "..."
        out.append(f"[{i}] {sql}")
        rec = f"recorded {st.recorded_tag or ''}" + (f" ERROR {st.recorded_error}" if st.recorded_error else "")
        if st.skip:
            out.append(f"     skipped ({st.skip})  {rec.strip()}")
            continue
        if not st.ran:
            out.append(f"     would run (dry run)  {rec.strip()}")
            continue
        got = f"replayed {st.replayed_tag or ''}" + (f" ERROR {st.replayed_error}: {st.replayed_message}"
                                                      if st.replayed_error else "")
        verdict = "same" if st.same else "DIFFERENT"
        out.append(f"     {verdict}: {rec.strip()} (rows {st.recorded_rows});  {got.strip()} (rows {st.replayed_rows})"
                   + ("  [masked values sent as masked text]" if st.masked else ""))
    ran = [s for s in planned if s.ran]
    differ = [s for s in ran if not s.same]
    skipped = sum(1 for s in planned if s.skip)
    out.append(f"{len(ran)} statement(s) replayed, {len(differ)} different, {skipped} skipped"
               + ("" if ran or not planned else " (dry run: nothing sent)"))
    return out


def replay(read, conninfo: str, *, allow_writes: bool) -> list[Statement]:
    target = parse_target(conninfo)
    planned = plan(read.records, allow_writes=allow_writes)
    asyncio.run(run(target, planned, allow_writes=allow_writes))
    return planned

