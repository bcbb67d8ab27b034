"""Database sessions end to end: a real PostgreSQL 15 (scram-sha-256, TLS on), a real gateway
(mitmdump -s addons/gateway.py) with a connection of kind "postgres", and real clients: psql
(simple queries), psycopg 3 (extended protocol with parameters) and asyncpg (named prepared
statements, binary parameters, direct TLS).

The database's own log (log_statement = 'all', log_connections) is the ground truth of what
reached it; the session files are read with the code under test.
"""
from __future__ import annotations

import asyncio
import calendar
import json
import os
import re
import subprocess
import sys
import threading
import time

import psycopg
import pytest

from tests.e2e.test_integrity_e2e import fill, small_tmpfs  # noqa: F401 (a fixture)
from tests.support.artifacts import Artifacts
from tests.support.gateway import REPO_ROOT, WIRETRAIL
from tests.support.pg_gateway import PgGateway
from tests.support.postgres import PgServer, available, pg_bin

pytestmark = [pytest.mark.e2e, pytest.mark.skipif(not available(), reason="PostgreSQL is not installed "
                                                  "(apt-get install postgresql)")]

# A GitHub token shape the built-in rules mask; made at run time so the repository holds none.
SECRET_LITERAL = "ghp_" + "Q7rT9wXk2LmN4pZs8VbC1dFh6JyU3eGa5oRi"
SECRET_PARAM = "ghp_" + "Zx8Kc2Vb7Nm4Qw9Er1Ty6Ui3Op5As0DfGhJk"


@pytest.fixture(scope="module")
def pg(tmp_path_factory):
    from tests.support.tls import make_test_ca

    server = PgServer(make_test_ca(tmp_path_factory.mktemp("pg-ca"))).start()
    yield server
    server.stop()


@pytest.fixture
def db(start_gateway, pg, tmp_path):
    def start(**kw) -> PgGateway:
        return PgGateway(start_gateway, pg, tmp_path / f"pg{len(os.listdir(tmp_path))}", **kw)
    return start


def of(recs, t, **match):
    return [r for r in recs if r["t"] == t and all(r.get(k) == v for k, v in match.items())]


def show(gw, *args) -> str:
    sid = Artifacts(gw.store_dir).sessions[0].session_id if not args else None
    res = subprocess.run([str(WIRETRAIL), "show", "--dir", str(gw.store_dir), *(args or (sid,))],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout


def statement_logged(log: str, marker: str) -> bool:
    return any(marker in line for line in log.splitlines() if "statement:" in line or "execute" in line)


# -- statements, transactions, errors: psql, psycopg, asyncpg ----------------------------------


def test_psql_session_is_recorded_before_it_runs_and_reads_as_a_sql_log(db, pg):
    d = db()
    mark = pg.log_mark()
    script = (
        "CREATE TABLE t_psql (id int primary key, note text);\n"
        "INSERT INTO t_psql VALUES (1, 'one'), (2, 'two'), (3, 'three');\n"
        "BEGIN;\n"
        "UPDATE t_psql SET note = 'uno' WHERE id = 1;\n"
        "DELETE FROM t_psql WHERE id = 3;\n"
        "COMMIT;\n"
        "SELECT id, note FROM t_psql ORDER BY id;\n"
        "SELECT * FROM no_such_table;\n"
    )
    res = d.psql(input=script)
    assert "INSERT 0 3" in res.stdout and "uno" in res.stdout and " 2 | two" in res.stdout, res.stdout + res.stderr
    assert 'relation "no_such_table" does not exist' in res.stderr
    recs = d.wait_records(lambda rs: len(of(rs, "pg.result")) >= 8 and of(rs, "pg.end"))

    connect = of(recs, "pg.connect")[0]
    assert connect["connection"] == "appdb" and connect["client"]["tls"]["version"].startswith("TLS")
    assert connect["client"]["params"]["user"] == "alice" and connect["upstream"]["user"] == "app"
    assert connect["upstream"]["auth"] == "scram-sha-256-plus"  # channel binding over verify-full TLS
    assert connect["server_version"].startswith("15")
    queries = of(recs, "pg.query")
    assert [q["sql"] for q in queries] == [s for s in script.splitlines()]
    results = {r["n"]: r for r in of(recs, "pg.result")}
    by_sql = {q["sql"]: results[q["n"]] for q in queries}
    assert by_sql["INSERT INTO t_psql VALUES (1, 'one'), (2, 'two'), (3, 'three');"]["rows"] == 3
    assert by_sql["UPDATE t_psql SET note = 'uno' WHERE id = 1;"]["tag"] == "UPDATE 1"
    assert by_sql["DELETE FROM t_psql WHERE id = 3;"]["rows"] == 1
    select = by_sql["SELECT id, note FROM t_psql ORDER BY id;"]
    assert select["rows"] == 2 and select["columns"] == [["id", "int4"], ["note", "text"]]
    err = by_sql["SELECT * FROM no_such_table;"]["error"]
    assert err["sqlstate"] == "42P01" and "no_such_table" in err["message"]
    assert all(isinstance(r["duration_ms"], float) for r in results.values())

    # Ground truth: every statement reached the database after its record was made.
    log = pg.log_since(mark)
    for q in queries:
        line = next(ln for ln in log.splitlines() if ln.endswith("statement: " + q["sql"]))
        logged = calendar.timegm(time.strptime(line[:19], "%Y-%m-%d %H:%M:%S")) + float(line[19:23])
        assert q["ts"] <= logged + 0.001, (q, line)

    d.gw.stop()
    text = show(d.gw)
    for needle in ("appdb", "alice", "UPDATE t_psql SET note = 'uno' WHERE id = 1;", "-- UPDATE 1",
                   "-- ERROR 42P01", "SELECT id, note FROM t_psql ORDER BY id;", "-- 2 rows"):
        assert needle in text, text
    ls = subprocess.run([str(WIRETRAIL), "ls", str(d.gw.store_dir)], capture_output=True, text=True)
    assert "appdb" in ls.stdout and "alice" in ls.stdout, ls.stdout
    row = next(json.loads(ln) for ln in subprocess.run(
        [str(WIRETRAIL), "ls", "--json", str(d.gw.store_dir)], capture_output=True, text=True).stdout.splitlines()
        if "appdb" in ln)
    assert row["databases"] == ["appdb"] and row["exchanges"] == len(queries) and row["bytes"] > len(script)
    ver = d.gw.verify_cli()
    assert ver.returncode == 0, ver.stdout + ver.stderr
    # The gateway's database password is nowhere: not in the store, not in the gateway's log.
    assert pg.app_password.encode() not in d.store_text()
    assert pg.app_password not in d.gw.log_text()


def test_psycopg_extended_protocol_parameters_and_transaction(db, pg):
    d = db()
    with d.connect() as c:
        c.execute("CREATE TABLE t_psy (id int, name text, amount numeric)")
        with c.transaction():
            c.execute("INSERT INTO t_psy VALUES (%s, %s, %s)", (1, "ann", 12.5))
            c.execute("INSERT INTO t_psy VALUES (%s, %s, %s)", (2, "bob", 7))
        rows = c.execute("SELECT name FROM t_psy WHERE amount > %s ORDER BY id", (5,)).fetchall()
        assert rows == [("ann",), ("bob",)]
        with pytest.raises(psycopg.errors.DivisionByZero):
            c.execute("SELECT %s / 0", (1,))
        assert c.execute("SELECT 1").fetchone() == (1,)  # the connection is fine after the error
    recs = d.wait_records(lambda rs: of(rs, "pg.end"))
    parses = of(recs, "pg.parse")
    binds = of(recs, "pg.bind")
    insert = next(p for p in parses if p["sql"].startswith("INSERT INTO t_psy"))
    assert insert["sql"] == "INSERT INTO t_psy VALUES ($1, $2, $3)"
    bind = next(b for b in binds if b["n"] == insert["n"] + 1)
    assert [p["text"] for p in bind["params"]] == ["1", "ann", "12.5"]
    results = {r["n"]: r for r in of(recs, "pg.result")}
    execute = next(e for e in of(recs, "pg.execute") if e["n"] > bind["n"])
    assert results[execute["n"]]["tag"] == "INSERT 0 1"
    assert any(q["sql"] == "BEGIN" for q in of(recs, "pg.query")) or any(p["sql"] == "BEGIN" for p in parses)
    div = next(p for p in parses if "/ 0" in p["sql"])
    errors = [r for r in of(recs, "pg.result") if r.get("error")]
    assert any(r["error"]["sqlstate"] == "22012" and r["n"] > div["n"] for r in errors), errors
    d.gw.stop()
    text = show(d.gw)
    assert "INSERT INTO t_psy VALUES ($1, $2, $3)" in text and "-- $1 = 1, $2 = 'ann', $3 = 12.5" in text, text


def test_asyncpg_named_prepared_statements_binary_parameters_and_direct_tls(db, pg):
    d = db()

    async def run():
        conn = await d.asyncpg()
        try:
            await conn.execute("CREATE TABLE t_apg (id bigint, ok bool, at date)")
            stmt = await conn.prepare("INSERT INTO t_apg VALUES ($1, $2, $3)")
            import datetime
            await stmt.fetch(9000000001, True, datetime.date(2026, 1, 31))
            got = await conn.fetchval("SELECT count(*) FROM t_apg WHERE id = $1", 9000000001)
        finally:
            await conn.close()
        direct = await d.asyncpg(direct_tls=True)
        try:
            one = await direct.fetchval("SELECT 41 + $1::int", 1)
        finally:
            await direct.close()
        return got, one

    got, one = asyncio.run(run())
    assert got == 1 and one == 42
    recs = d.wait_records(lambda rs: len(of(rs, "pg.end")) >= 2)
    parse = next(p for p in of(recs, "pg.parse") if p["sql"] == "INSERT INTO t_apg VALUES ($1, $2, $3)")
    assert parse["statement"]  # asyncpg names its prepared statements
    bind = next(b for b in of(recs, "pg.bind") if b["statement"] == parse["statement"])
    assert [(p["type"], p["text"], p.get("binary")) for p in bind["params"]] == [
        ("int8", "9000000001", True), ("bool", "true", True), ("date", "2026-01-31", True)]
    tls = [c["client"]["tls"] for c in of(recs, "pg.connect")]
    assert [t["direct"] for t in tls] == [False, True]


def test_own_certificate_plaintext_on_loopback_and_md5_upstream(db, pg):
    d = db(user="app_md5", password=pg.md5_password, tls_cert=str(pg.ca.server_cert_path),
           tls_key=str(pg.ca.server_key_path), allow_plaintext=True)
    res = d.psql("-c", "SELECT current_user", sslmode="verify-full", sslrootcert=str(pg.ca.cert_path))
    assert "app_md5" in res.stdout, res.stderr  # the configured certificate verifies against its CA
    res = d.psql("-c", "SELECT 'over plain text'", sslmode="disable")
    assert "over plain text" in res.stdout, res.stderr  # allow_plaintext, on a loopback listen address
    recs = d.wait_records(lambda rs: len(of(rs, "pg.connect")) == 2)
    connects = of(recs, "pg.connect")
    assert [c["upstream"]["auth"] for c in connects] == ["md5", "md5"]
    assert connects[0]["client"]["tls"]["version"].startswith("TLS") and connects[1]["client"]["tls"] is None
    assert pg.md5_password.encode() not in d.store_text()


def test_client_certificate_upstream_login(db, pg):
    d = db(user="app_cert", credential=None, client_cert=str(pg.client_cert), client_key=str(pg.client_key))
    res = d.psql("-c", "SELECT current_user")
    assert "app_cert" in res.stdout, res.stderr
    recs = d.wait_records(lambda rs: of(rs, "pg.connect"))
    assert of(recs, "pg.connect")[0]["upstream"]["auth"] == "certificate"


# -- identity ---------------------------------------------------------------------------------


def test_refusals_reach_nothing_and_are_recorded(db, pg):
    d = db()
    cases = {
        "no token": (None, "sslmode=require", "no password supplied"),
        "bad token": ("not-a-jwt", "sslmode=require", "the token is not a JWT"),
        "expired": (d.token(ttl=1, clock=lambda: time.time() - 3600), "sslmode=require", "expired"),
        "wrong group": (d.token(groups=("sales",)), "sslmode=require", "not in a group allowed"),
        "plain text": (d.token(), "sslmode=disable", "only over TLS"),
    }
    mark = pg.log_mark()
    for name, (token, sslmode, expect) in cases.items():
        res = d.psql("-c", "SELECT 'should-never-run'", token=token, sslmode=sslmode.split("=")[1])
        assert res.returncode != 0 and expect in res.stderr, (name, res.stderr)
        if name != "no token":
            assert "sslmode=require" in res.stderr or "group" in res.stderr, (name, res.stderr)
    recs = d.wait_records(lambda rs: len(of(rs, "pg.refused")) >= 5)
    reasons = sorted(r["reason"] for r in of(recs, "pg.refused"))
    assert reasons == ["expired", "forbidden", "malformed", "missing", "tls_required"], reasons
    states = {r["reason"]: r["sqlstate"] for r in of(recs, "pg.refused")}
    assert states["malformed"] == "28P01" and states["forbidden"] == "28000" and states["tls_required"] == "28000"
    assert not of(recs, "pg.connect") and not of(recs, "pg.query")
    # Nothing reached the database: it logged no connection at all.
    assert "connection received" not in pg.log_since(mark) and "should-never-run" not in pg.log_since(mark)
    # Tokens are never recorded.
    store = d.store_text()
    for token, _, _ in cases.values():
        if token:
            assert token.encode() not in store
    # The refusal of a verified caller is in that caller's session.
    arts = Artifacts(d.gw.store_dir)
    subs = {s.records[0]["identity"]["sub"] for s in arts.sessions if any(r["t"] == "pg.refused" for r in s.records)}
    assert subs == {None, "alice"}


# -- cancel, streaming, COPY, disconnects -------------------------------------------------------


def test_cancel_reaches_the_right_backend(db, pg):
    d = db()
    with d.connect() as other, d.connect() as victim:
        outcome: dict = {}

        def run(name, conn, seconds):
            try:
                conn.execute(f"SELECT pg_sleep({seconds})")
                outcome[name] = "done"
            except Exception as e:  # noqa: BLE001
                outcome[name] = e

        threads = [threading.Thread(target=run, args=("other", other, 4)),
                   threading.Thread(target=run, args=("victim", victim, 30))]
        started = time.monotonic()
        for t in threads:
            t.start()
        d.wait_records(lambda rs: {"SELECT pg_sleep(4)", "SELECT pg_sleep(30)"} <= {
            q["sql"] for q in of(rs, "pg.parse") + of(rs, "pg.query")})
        time.sleep(0.2)
        victim.cancel()  # libpq sends a CancelRequest with the key the gateway gave this connection
        for t in threads:
            t.join(20)
        assert isinstance(outcome.get("victim"), psycopg.errors.QueryCanceled), outcome
        assert outcome.get("other") == "done", outcome  # the other backend's query was not touched
        assert time.monotonic() - started < 15
    recs = d.wait_records(lambda rs: of(rs, "pg.cancel"))
    cancel = of(recs, "pg.cancel")[0]
    assert cancel["forwarded"] is True
    assert any(r.get("error", {}).get("sqlstate") == "57014" for r in of(recs, "pg.result", conn=cancel["conn"]))
    assert not any(r.get("error") for r in of(recs, "pg.result") if r["conn"] != cancel["conn"])


def test_large_result_streams_row_by_row(db, pg):
    d = db()
    with d.connect() as c:
        cur = c.cursor()
        started = time.monotonic()
        arrivals = []
        for row in cur.stream("SELECT g, repeat('x', 200000), pg_sleep(0.4) FROM generate_series(1, 6) g"):
            arrivals.append(time.monotonic() - started)
        assert len(arrivals) == 6
        # The server spends ~0.4 s per row: rows that were forwarded as they came arrive spread out.
        assert arrivals[0] < arrivals[-1] - 1.2, arrivals
        count = c.execute("SELECT count(*) FROM (SELECT g FROM generate_series(1, 200000) g) s").fetchone()[0]
        assert count == 200000
        many = c.execute("SELECT g FROM generate_series(1, 200000) g").fetchall()
        assert len(many) == 200000
    recs = d.wait_records(lambda rs: of(rs, "pg.end"))
    assert any(r.get("rows") == 200000 and r.get("tag") == "SELECT 200000" for r in of(recs, "pg.result"))


def test_copy_in_and_out_are_recorded_as_byte_counts(db, pg):
    d = db()
    lines = "".join(f"{i}\trow {i}\n" for i in range(1000)).encode()
    with d.connect() as c:
        c.execute("CREATE TABLE t_copy (id int, note text)")
        with c.cursor().copy("COPY t_copy FROM STDIN") as cp:
            for i in range(0, len(lines), 4096):
                cp.write(lines[i:i + 4096])
        out = b""
        with c.cursor().copy("COPY t_copy TO STDOUT") as cp:
            for block in cp:
                out += bytes(block)
    assert out == lines
    assert pg.app().execute("SELECT count(*) FROM t_copy").fetchone()[0] == 1000
    recs = d.wait_records(lambda rs: len([r for r in of(rs, "pg.result") if r.get("copy")]) >= 2)
    copies = [r for r in of(recs, "pg.result") if r.get("copy")]
    cin = next(r for r in copies if r["copy"]["dir"] == "in")
    cout = next(r for r in copies if r["copy"]["dir"] == "out")
    assert cin["copy"]["bytes"] == len(lines) and cin["rows"] == 1000
    assert cout["copy"]["bytes"] == len(lines) and cout["rows"] == 1000
    assert b"row 999" not in d.store_text()  # COPY data is counted, not recorded


def test_client_gone_mid_result_ends_the_backend_query(db, pg):
    d = db()
    env = dict(os.environ, PGPASSWORD=d.token())
    proc = subprocess.Popen(["psql", "-X", d.conninfo(None), "-c",
                             "SELECT g, repeat('y', 20000), pg_sleep(0.05) FROM generate_series(1, 100000) g"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env)
    try:
        d.wait_records(lambda rs: of(rs, "pg.query"), what="the query")
        time.sleep(0.5)
        proc.kill()
    finally:
        proc.wait(10)
    recs = d.wait_records(lambda rs: of(rs, "pg.end"), what="pg.end")
    assert of(recs, "pg.end")[0]["reason"] == "client_gone"
    # The database stops working for the vanished client.
    with pg.superuser() as su:
        deadline = time.monotonic() + 15
        while su.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%repeat(''y''%' "
                         "AND pid <> pg_backend_pid()").fetchone()[0]:
            assert time.monotonic() < deadline, "the backend still runs the vanished client's query"
            time.sleep(0.1)


def test_database_restart_mid_session(db, start_gateway, tmp_path, pg):
    own = PgServer(pg.ca).start()
    try:
        d = PgGateway(start_gateway, own, tmp_path / "restart")
        c = d.connect()
        assert c.execute("SELECT 1").fetchone() == (1,)
        own.restart()
        with pytest.raises(psycopg.OperationalError):
            c.execute("SELECT 2")
        c.close()
        with d.connect() as again:
            assert again.execute("SELECT 3").fetchone() == (3,)
        recs = d.wait_records(lambda rs: len(of(rs, "pg.end")) >= 2 and len(of(rs, "pg.connect")) == 2)
        first = of(recs, "pg.connect")[0]["conn"]
        end = of(recs, "pg.end", conn=first)[0]
        assert end["reason"] == "server_closed", end
        assert any(e.get("sqlstate") == "57P01" for e in of(recs, "pg.error", conn=first)), recs
        assert len({s.session_id for s in Artifacts(d.gw.store_dir).sessions}) == 1  # one identity, one session
        # The database down: the client is told, and the attempt is on the record.
        own._run(pg_bin("pg_ctl"), "-D", str(own.data), "-m", "fast", "-w", "stop")
        with pytest.raises(psycopg.OperationalError, match="cannot reach the database"):
            d.connect()
        recs = d.wait_records(lambda rs: of(rs, "pg.error", phase="connect"))
        failed = of(recs, "pg.error", phase="connect")[-1]["conn"]
        # Its own pg.end: the second connection's may be recorded after it (the gateway sees that
        # client's close whenever it does).
        recs = d.wait_records(lambda rs: of(rs, "pg.end", conn=failed))
        assert of(recs, "pg.end", conn=failed)[-1]["reason"] == "connect_failed"
    finally:
        own.stop()


# -- fail closed -----------------------------------------------------------------------------------


def test_storage_failure_refuses_the_statement_and_nothing_runs(db, pg, small_tmpfs):  # noqa: F811
    d = db(config={"storage": {"dir": str(small_tmpfs / "store")}})
    with pg.app() as app:
        app.execute("CREATE TABLE IF NOT EXISTS t_fail (marker text, pad text)")
    c = d.connect()
    c.execute("INSERT INTO t_fail VALUES ('before', '')")
    filler = fill(small_tmpfs)
    mark = pg.log_mark()
    refused = None
    try:
        for i in range(8):
            marker = f"failclosed-{i}"
            try:
                c.execute(f"INSERT INTO t_fail VALUES ('{marker}', '{os.urandom(48 * 1024).hex()}')")
            except psycopg.OperationalError as e:
                refused = (marker, str(e))
                break
    finally:
        filler.unlink()
    assert refused is not None, "no statement was refused while the disk was full"
    marker, message = refused
    assert "could not record this statement" in message, message
    # Checked in the database itself: the refused statement never arrived, never ran.
    assert marker not in pg.log_since(mark)
    with pg.app() as app:
        assert app.execute("SELECT count(*) FROM t_fail WHERE marker = %s", (marker,)).fetchone()[0] == 0
    c.close()
    assert "cannot record (disk full)" in d.gw.log_text()


# -- masking -------------------------------------------------------------------------------------


def test_secrets_in_sql_parameters_and_samples_are_masked(db, pg):
    d = db(sample_rows=2)
    with d.connect() as c:
        c.execute(f"CREATE TABLE t_mask AS SELECT '{SECRET_LITERAL}'::text AS token")
        c.execute("INSERT INTO t_mask VALUES (%s)", (SECRET_PARAM,))
        assert len(c.execute("SELECT token FROM t_mask").fetchall()) == 2
    with pg.app() as app:  # the database got the real values
        assert {r[0] for r in app.execute("SELECT token FROM t_mask")} == {SECRET_LITERAL, SECRET_PARAM}
    recs = d.wait_records(lambda rs: of(rs, "pg.end"))
    store = d.store_text()
    assert SECRET_LITERAL.encode() not in store and SECRET_PARAM.encode() not in store
    assert SECRET_LITERAL[:12].encode() not in store
    sample = next(r["sample"] for r in of(recs, "pg.result") if r.get("sample") and r.get("rows") == 2)
    assert len(sample) == 2 and all(cell[0]["text"].startswith("[MASKED:github") for cell in sample), sample
    param = next(b for b in of(recs, "pg.bind") if b["params"])["params"][0]["text"]
    assert re.fullmatch(r"\[MASKED:github[a-z0-9-]*:[0-9a-f]{8}\]", param), param
    literal = next(q["sql"] for q in of(recs, "pg.query") + of(recs, "pg.parse") if "CREATE TABLE t_mask" in q["sql"])
    assert "[MASKED:github" in literal, literal


# -- replay --------------------------------------------------------------------------------------


def test_replay_against_a_second_database_gives_the_same_row_counts(db, pg):
    d = db()
    for dbname in ("app", "sandbox"):
        with pg.app(dbname) as app:
            app.execute("DROP TABLE IF EXISTS t_rep")
            app.execute("CREATE TABLE t_rep (id int, v text)")
            app.execute("INSERT INTO t_rep SELECT g, 'v' || g FROM generate_series(1, 50) g")
    with d.connect() as c:
        c.execute("SELECT * FROM t_rep WHERE id <= %s", (20,)).fetchall()
        c.execute("UPDATE t_rep SET v = 'changed' WHERE id <= 10")
        c.execute("SELECT count(*) FROM t_rep").fetchall()
    res = d.psql("-c", "SELECT id FROM t_rep WHERE id > 45", "-c", "SELECT * FROM nope")
    assert "(5 rows)" in res.stdout
    d.gw.stop()
    sid = Artifacts(d.gw.store_dir).sessions[0].session_id
    target = f"host={pg.root} port={pg.port} dbname=sandbox user=app"
    replay = [str(REPO_ROOT / ".venv" / "bin" / "python") if (REPO_ROOT / ".venv").exists() else "python",
              str(REPO_ROOT / "scripts" / "replay.py")]
    r = subprocess.run([*replay, sid, "--dir", str(d.gw.store_dir), "--pg", target, "--json"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    by_sql = {s["sql"]: s for s in doc["statements"]}
    assert by_sql["SELECT * FROM t_rep WHERE id <= $1"]["recorded_rows"] == 20
    assert by_sql["SELECT * FROM t_rep WHERE id <= $1"]["replayed_rows"] == 20
    assert by_sql["UPDATE t_rep SET v = 'changed' WHERE id <= 10"]["skipped"] == "write"
    assert by_sql["SELECT id FROM t_rep WHERE id > 45"]["replayed_rows"] == 5
    assert by_sql["SELECT * FROM nope"]["recorded_error"] == "42P01" == by_sql["SELECT * FROM nope"]["replayed_error"]
    assert all(s["same"] for s in doc["statements"] if not s.get("skipped")), doc
    with pg.app("sandbox") as app:  # read-only by default: the UPDATE did not run on the sandbox
        assert app.execute("SELECT count(*) FROM t_rep WHERE v = 'changed'").fetchone()[0] == 0
    r = subprocess.run([*replay, sid, "--dir", str(d.gw.store_dir), "--pg", target, "--allow-writes"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "UPDATE 10" in r.stdout, r.stdout
    with pg.app("sandbox") as app:
        assert app.execute("SELECT count(*) FROM t_rep WHERE v = 'changed'").fetchone()[0] == 10


# -- the README's path for a new user ---------------------------------------------------------


def test_readme_database_setup_works_as_written(pg, tmp_path, monkeypatch):
    from recorder.auth.dev_secret import ensure_dev_secret
    from tests.support.gateway import free_port
    from tests.support.pg_gateway import wait_listening

    readme = (REPO_ROOT / "README.md").read_text()
    section = readme.split("## Databases (PostgreSQL)", 1)[1].split("\n## ", 1)[0]
    setup = re.search(r"```sh\n(.*?\nTOML\n)", section, re.DOTALL).group(1)  # the lines that write gateway.toml
    psql_line = next(ln for ln in section.splitlines() if ln.startswith("psql "))
    token_line = next(ln for ln in section.splitlines() if "wiretrail token" in ln)
    port = free_port()
    setup = (setup.replace(".venv/bin/python", sys.executable).replace('"127.0.0.1:15432"', f'"127.0.0.1:{port}"')
             .replace('"127.0.0.1:5432"', f'"127.0.0.1:{pg.port}"'))
    assert f"127.0.0.1:{port}" in setup and f"127.0.0.1:{pg.port}" in setup, "the README's example changed shape"
    monkeypatch.setenv("PG_APP_PASSWORD", pg.app_password)
    work = tmp_path / "newcomer"
    (work / "keys").mkdir(parents=True)
    # What the demo's first start (`bash scripts/start.sh`) leaves in keys/.
    subprocess.run([str(WIRETRAIL), "keygen", "keys"], cwd=work, check=True, capture_output=True)
    ensure_dev_secret(work / "keys" / "dev-identity.secret")
    subprocess.run(["bash", "-c", setup], cwd=work, check=True, timeout=60)
    from tests.support.gateway import Gateway

    gw = Gateway(work, "https://127.0.0.1:9", pg.ca.cert_path)
    gw.config_text = (work / "gateway.toml").read_text()
    try:
        gw.start()
        wait_listening(port)
        minted = token_line.split("$(", 1)[1].rsplit(")", 1)[0].replace(".venv/bin/wiretrail", str(WIRETRAIL))
        tok = subprocess.run(["bash", "-c", minted], cwd=work, capture_output=True, text=True, timeout=30,
                             env=dict(os.environ, USER=""))  # $USER is empty on CI's root shells
        assert tok.returncode == 0, tok.stderr
        token = tok.stdout.strip()
        cmd = psql_line[len("psql "):].strip().strip('"')
        cmd = (cmd.replace("15432", str(port)).replace("$(id -un)", "newcomer")
               .replace("$HOME/.mitmproxy/mitmproxy-ca-cert.pem", str(gw.ca_path)).replace("$WIRETRAIL_TOKEN", token))
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        res = subprocess.run(["psql", "-X", "-w", cmd, "-c", "SELECT current_user, 'hello from the README'"],
                             capture_output=True, text=True, env=env, timeout=60)
        assert "hello from the README" in res.stdout and " app " in res.stdout, res.stdout + res.stderr
        with psycopg.connect(host="127.0.0.1", port=port, dbname="app", user="me", password=token,
                             sslmode="verify-full", sslrootcert=str(gw.ca_path)) as c:
            assert c.execute("SELECT 1").fetchone() == (1,)
    finally:
        gw.stop()
    recs = [r for r in Artifacts(work / "sessions").records if r["t"] == "pg.query"]
    assert any("hello from the README" in r["sql"] for r in recs)
    assert pg.app_password not in gw.log_text()


def test_a_connection_ends_when_its_token_expires(db, pg):
    d = db(config={"identity": {"leeway": 0}})
    token = d.token(ttl=3)
    c = d.connect(token)
    assert c.execute("SELECT 'while-valid'").fetchone() == ("while-valid",)
    expires = time.time() + 3
    while time.time() < expires + 0.2:  # a deadline, not a guess: the token says when it ends
        time.sleep(0.1)
    mark = pg.log_mark()
    with pytest.raises(psycopg.OperationalError, match="expired"):
        c.execute("SELECT 'after-expiry'")
    assert "after-expiry" not in pg.log_since(mark)
    recs = d.wait_records(lambda rs: of(rs, "pg.end"))
    assert of(recs, "pg.end")[0]["reason"] == "token_expired"


def test_gateway_shutdown_ends_database_connections_on_the_record(db, pg):
    d = db()
    c = d.connect()
    assert c.execute("SELECT 'before shutdown'").fetchone() == ("before shutdown",)
    assert d.gw.stop() == 0
    with pytest.raises(psycopg.OperationalError):
        c.execute("SELECT 'after shutdown'")
    c.close()
    arts = Artifacts(d.gw.store_dir)
    recs = [r for r in arts.records if r["t"].startswith("pg.")]
    assert of(recs, "pg.end")[0]["reason"] == "shutdown"
    assert all(s.state in ("closed", "sealed") for s in arts.sessions), arts.summary()
    assert d.gw.verify_cli().returncode == 0


def test_a_taken_listen_port_stops_start_up_with_a_clear_message(pg, tmp_path):
    import socket

    from tests.support.gateway import Gateway, GatewayStartError
    from tests.support.pg_gateway import connection_toml, identity_config

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        (tmp_path / "pw").write_text(pg.app_password)
        (tmp_path / "secret").write_text("s" * 48)
        gw = Gateway(tmp_path / "gw", "https://127.0.0.1:9", pg.ca.cert_path,
                     config=identity_config(tmp_path / "secret"),
                     extra_toml=connection_toml(pg, port, tmp_path / "pw"))
        try:
            gw.start()
        except GatewayStartError:
            pass
        deadline = time.monotonic() + 20
        while gw.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not gw.alive(), "the gateway kept running without its database listener"
    assert f"connection 'appdb': cannot listen on 127.0.0.1:{port}" in gw.log_text(), gw.log_text()


def test_fast_path_function_calls_are_recorded(db, pg, tmp_path):
    d = db()
    blob = tmp_path / "blob.txt"
    blob.write_bytes(b"large object content\n" * 100)
    res = d.psql("-c", f"\\lo_import {blob}")  # libpq's large-object calls use the FunctionCall message
    assert res.returncode == 0 and "lo_import" in res.stdout, res.stdout + res.stderr
    recs = d.wait_records(lambda rs: of(rs, "pg.end"))
    calls = of(recs, "pg.function")
    assert calls, recs
    answered = {r["n"] for r in of(recs, "pg.result") if r.get("tag") == "FUNCTION CALL"}
    assert {c["n"] for c in calls} <= answered
