"""A session's database traffic as a readable SQL log, for `wiretrail show`.

Each statement appears once, as it ran: simple queries as sent; extended-protocol statements as
the SQL of their prepared statement with the bound parameters under it; then what the database
answered (tag, rows, columns, errors with SQLSTATE, COPY byte counts, timing). Connections are
numbered in the order they opened; cancels, refusals and disconnects are shown where they
happened.
"""
from __future__ import annotations

import time

from recorder.protocols.postgres.values import display

INDENT = " " * 17


def _clock(ts) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "?" * 12
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


class _Conn:
    def __init__(self, number: int):
        self.number = number
        self.statements: dict[str, str] = {}  # prepared statement -> SQL
        self.portals: dict[str, tuple[str, list]] = {}  # portal -> (SQL, params)


def statements(records: list[dict]) -> list[dict]:
    """The statements of a session in order: {"conn", "n", "ts", "sql", "params", "results": [...]}."""
    conns: dict[str, _Conn] = {}
    out: list[dict] = []
    by_key: dict[tuple[str, int], dict] = {}
    pending_errors: dict[tuple[str, int], dict] = {}  # Parse/Bind that may get an error result

    def conn_of(cid) -> _Conn:
        if cid not in conns:
            conns[cid] = _Conn(len(conns) + 1)
        return conns[cid]

    for r in records:
        t = r.get("t")
        if not isinstance(t, str) or not t.startswith("pg."):
            continue
        cid = r.get("conn")
        c = conn_of(cid)
        entry = None
        if t == "pg.query":
            entry = {"sql": r.get("sql", "")}
        elif t == "pg.parse":
            c.statements[r.get("statement", "")] = r.get("sql", "")
            pending_errors[(cid, r.get("n"))] = {"sql": r.get("sql", ""), "phase": "parse"}
        elif t == "pg.bind":
            sql = c.statements.get(r.get("statement", ""), f"<prepared statement {r.get('statement')!r}>")
            c.portals[r.get("portal", "")] = (sql, r.get("params") or [])
            pending_errors[(cid, r.get("n"))] = {"sql": sql, "params": r.get("params") or [], "phase": "bind"}
        elif t == "pg.execute":
            sql, params = c.portals.get(r.get("portal", ""), (f"<portal {r.get('portal')!r}>", []))
            entry = {"sql": sql, "params": params}
        elif t == "pg.function":
            entry = {"sql": f"<function call, oid {r.get('oid')}>", "params": r.get("args") or []}
        elif t == "pg.result":
            key = (cid, r.get("n"))
            target = by_key.get(key)
            if target is None and key in pending_errors:  # an error at Parse or Bind
                failed = pending_errors.pop(key)
                # Its Execute, recorded before the answer came, never ran: the error is its answer.
                target = next((e for e in reversed(out) if e["kind"] == "statement" and e["conn"] == c.number
                               and not e["results"] and e["sql"] == failed["sql"]
                               and isinstance(e.get("n"), int) and isinstance(r.get("n"), int) and e["n"] > r["n"]),
                              None)
                if target is None:
                    target = dict(failed, kind="statement", conn=c.number, n=r.get("n"), ts=r.get("ts"), results=[])
                    out.append(target)
                target["failed_at"] = failed["phase"]
                by_key[key] = target
            if target is None:
                target = {"kind": "statement", "conn": c.number, "n": r.get("n"), "ts": r.get("ts"),
                          "sql": "<no statement recorded>", "results": []}
                out.append(target)
            target["results"].append(r)
            continue
        else:
            out.append({"kind": t[3:], "conn": c.number, "ts": r.get("ts"), "record": r})
            continue
        if entry is not None:
            entry.update(kind="statement", conn=c.number, n=r.get("n"), ts=r.get("ts"), results=[])
            by_key[(cid, r.get("n"))] = entry
            out.append(entry)
    return out


def _result_line(res: dict, failed_at: str | None = None) -> str:
    err = res.get("error")
    ms = res.get("duration_ms")
    timing = f"  ({ms} ms)" if isinstance(ms, (int, float)) else ""
    if err:
        text = f"-- ERROR {err.get('sqlstate')}" + (f" at {failed_at}" if failed_at else "") + f": {err.get('message')}"
        if err.get("detail"):
            text += f" ({err['detail']})"
        return text + timing
    tag = res.get("tag")
    rows = res.get("rows")
    cols = res.get("columns")
    parts = []
    if tag and not (tag.startswith("SELECT") and cols):
        parts.append(tag)
    if cols or (tag or "").startswith("SELECT") or res.get("suspended"):
        n = rows if isinstance(rows, int) else 0
        parts.append(f"{n} row{'s' if n != 1 else ''}" + (" so far (portal suspended)" if res.get("suspended") else ""))
        if cols:
            parts.append("(" + ", ".join(f"{c[0]} {c[1]}" for c in cols) + ")")
    if tag == "":
        parts.append("(empty query)")
    copy = res.get("copy")
    if copy:
        parts.append(f"COPY {copy.get('dir')}: {copy.get('bytes')} bytes in {copy.get('messages')} messages"
                     + (" (failed)" if copy.get("failed") else ""))
    return "-- " + "  ".join(parts) + timing


def sql_log_lines(records: list[dict]) -> list[str]:
    entries = statements(records)
    if not entries:
        return []
    multi = len({e["conn"] for e in entries}) > 1
    out = ["database"]
    for e in entries:
        prefix = f"{_clock(e['ts'])}  " + (f"[{e['conn']}] " if multi else "")
        kind = e["kind"]
        if kind == "statement":
            sql = e["sql"].strip() or "(empty)"
            first, *rest = sql.splitlines() or [""]
            out.append(prefix + first)
            out.extend(INDENT + (" " * 4 if multi else "") + line for line in rest)
            pad = INDENT + (" " * 4 if multi else "")
            if e.get("params"):
                out.append(pad + "-- " + ", ".join(f"${i + 1} = {display(p)}" for i, p in enumerate(e["params"])))
            for res in e["results"]:
                out.append(pad + _result_line(res, e.get("failed_at")))
                for row in (res.get("sample") or []):
                    out.append(pad + "--   " + " | ".join(display(v) for v in row))
            if not e["results"]:
                out.append(pad + "-- (no answer recorded)")
            continue
        r = e["record"]
        if kind == "connect":
            client, up = r.get("client") or {}, r.get("upstream") or {}
            params = client.get("params") or {}
            tls = client.get("tls") or {}
            out.append(prefix + f"-- connected to {r.get('connection')}: {up.get('user')}@{up.get('host')}:"
                       f"{up.get('port')}/{up.get('database')} (PostgreSQL {r.get('server_version')}), "
                       f"client user {params.get('user')!s}"
                       + (f", {params['application_name']}" if params.get("application_name") else "")
                       + (f", {tls.get('version')}" if tls else ", NO TLS"))
        elif kind == "refused":
            out.append(prefix + f"-- REFUSED ({r.get('reason')}, {r.get('sqlstate')}) on {r.get('connection')}: "
                       f"{r.get('message')}")
        elif kind == "cancel":
            out.append(prefix + "-- cancel request " + ("forwarded to the database" if r.get("forwarded")
                                                         else f"not forwarded: {r.get('error')}"))
        elif kind == "error":
            out.append(prefix + f"-- {r.get('phase')} error {r.get('sqlstate') or ''}: {r.get('message')}")
        elif kind == "end":
            out.append(prefix + f"-- disconnected ({r.get('reason')})"
                       + (f": {r.get('message')}" if r.get("message") else "")
                       + (f", {r.get('statements')} statements" if r.get("statements") is not None else ""))
    return out


def databases(records: list[dict]) -> list[str]:
    """Names of the database connections a session used (or was refused on)."""
    names = []
    for r in records:
        if r.get("t") in ("pg.connect", "pg.refused") and isinstance(r.get("connection"), str):
            if r["connection"] not in names:
                names.append(r["connection"])
    return names
