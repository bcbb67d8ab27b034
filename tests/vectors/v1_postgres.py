"""The database test vector (docs/format.md, "Database records" vector): what one psycopg-style
extended-protocol statement becomes on the record.

The client's Parse/Bind/Describe/Execute/Sync and the server's answer are fixed wire bytes; the
pg.* records are made from them by recorder/protocols/postgres/records.py (the code the gateway runs),
then chained with format_v1. Run `python tests/vectors/v1_postgres.py` to (re)write
v1-postgres.jsonl next to this file and print the lines.
"""
from __future__ import annotations

from pathlib import Path

from recorder.protocols.postgres import protocol as pg
from recorder.protocols.postgres.records import Tracker
from recorder.store import format_v1

HERE = Path(__file__).resolve().parent
JSONL = HERE / "v1-postgres.jsonl"

SESSION_ID = "01KDVDNA00B8Y9W7VV5N66X2GB"
CONN = "7d1c0c7e-3b7a-4a51-8f0e-5e8a8a2a9c10"
T0 = 1767225600.0

CLIENT = (pg.parse_message("", "SELECT id, note FROM notes WHERE owner = $1 AND id > $2", [25, 23])
          + pg.bind_message("", "", [b"alice", (7).to_bytes(4, "big")], [0, 1])
          + pg.describe_message("P", "") + pg.execute_message() + pg.SYNC)


def _row_description() -> bytes:
    body = (2).to_bytes(2, "big")
    for name, oid in (("id", 23), ("note", 25)):
        body += pg.cstr(name) + bytes(4) + bytes(2) + oid.to_bytes(4, "big") + bytes(2) + bytes(4) + bytes(2)
    return pg.message(b"T", body)


def _data_row(*cells: bytes) -> bytes:
    body = len(cells).to_bytes(2, "big")
    for c in cells:
        body += len(c).to_bytes(4, "big") + c
    return pg.message(b"D", body)


SERVER = (pg.message(b"1") + pg.message(b"2") + _row_description() + _data_row(b"8", b"first")
          + _data_row(b"9", b"second") + pg.message(b"C", pg.cstr("SELECT 2")) + pg.ready_for_query(b"I"))


def records() -> list[tuple[str, float, dict]]:
    out: list[tuple[str, float, dict]] = [
        ("session.open", T0, {
            "session": SESSION_ID,
            "identity": {"sub": "alice", "email": "alice@example.com", "groups": ["engineering"],
                         "iss": "https://idp.example.com/", "method": "jwt", "authenticated": True},
            "client": {"ip": "127.0.0.1", "port": 50124}, "gateway": {"host": "gw1", "version": "0.1.0"},
            "key": None, "opened": T0}),
        ("pg.connect", T0 + 0.01, {
            "conn": CONN, "connection": "prod-db",
            "client": {"ip": "127.0.0.1", "port": 50124,
                       "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384", "direct": False},
                       "params": {"user": "alice", "database": "app", "application_name": "psql"}},
            "upstream": {"host": "db.internal", "port": 5432, "user": "app_ro", "database": "app",
                         "tls": {"version": "TLSv1.3", "cipher": "TLS_AES_256_GCM_SHA384"},
                         "auth": "scram-sha-256-plus", "backend_pid": 4242},
            "server_version": "15.18"}),
    ]
    clock = iter([0.5, 0.5021]).__next__  # forwarded at 0.5 s; answered 2.1 ms later
    results: list[dict] = []
    tracker = Tracker(CONN, lambda t, f: results.append((t, f)), lambda: None, clock=clock)
    for rtype, fields in tracker.client(pg.Splitter().feed(CLIENT)):
        out.append((rtype, T0 + 0.02, fields))
    tracker.started()
    tracker.server(pg.Splitter().feed(SERVER))
    out += [(rtype, T0 + 0.03, fields) for rtype, fields in results]
    out.append(("pg.end", T0 + 1.0, {"conn": CONN, "reason": "client", "duration_s": 0.99,
                                      "bytes": {"client": len(CLIENT), "server": len(SERVER)}, "statements": 1}))
    out.append(("session.close", T0 + 1.5, {"reason": "shutdown", "counts": {"flows": 1, "records": len(out) + 1,
                                                                               "errors": 0}, "duration_s": 1.5}))
    return out


def build_lines() -> list[bytes]:
    chain = format_v1.Chain()
    return [chain.next_line(t, ts, fields) for t, ts, fields in records()]


if __name__ == "__main__":
    lines = build_lines()
    JSONL.write_bytes(b"".join(line + b"\n" for line in lines))
    for line in lines:
        print(line.decode())
