"""Unit tests of recorder/protocols/postgres: framing, SCRAM, value decoding, the tracker that pairs answers
with statements, the read/write classifier, the SQL log, the config of kind "postgres", and the
database test vector of docs/format.md."""
from __future__ import annotations

import base64
import importlib.util
import random
import re
import struct
from pathlib import Path

import orjson
import pytest

from recorder.config import ConfigError, parse_config
from recorder.forensics.reader import REQUIRED, _check_fields
from recorder.protocols.postgres import protocol as pg
from recorder.protocols.postgres.auth import AuthFailed, ScramClient
from recorder.protocols.postgres.records import Tracker
from recorder.protocols.postgres.sqlkind import kind
from recorder.protocols.postgres.transcript import sql_log_lines
from recorder.protocols.postgres.values import decode_binary, recorded_value

ROOT = Path(__file__).resolve().parents[2]


# -- framing -------------------------------------------------------------------------------


@pytest.mark.parametrize("keep", [None, frozenset({b"Q", b"T"})], ids=["keep-all", "skip-bodies"])
def test_splitter_yields_every_message_whatever_the_read_sizes(keep):
    rnd = random.Random(7)
    msgs = [pg.message(bytes([rnd.choice(b"QDdTC")]), rnd.randbytes(rnd.randint(0, 300))) for _ in range(400)]
    data = b"".join(msgs)
    for _ in range(30):
        s, out, i = pg.Splitter(keep), [], 0
        while i < len(data):
            n = rnd.randint(1, 700)
            out += s.feed(data[i:i + n])
            i += n
        assert [(t, size) for t, _, size in out] == [(m[:1], len(m) - 5) for m in msgs]
        for (t, body, _), m in zip(out, msgs):
            assert body == (m[5:] if keep is None or t in keep else None)


def test_splitter_refuses_a_bad_length():
    with pytest.raises(pg.ProtocolError):
        pg.Splitter().feed(b"Q\x00\x00\x00\x02")


# -- SCRAM -----------------------------------------------------------------------------------


def test_scram_sha256_matches_the_rfc7677_example():
    c = ScramClient("pencil", ["SCRAM-SHA-256"])
    c.nonce = "rOprNGfwEbeRWgbNEkqO"
    c.first_bare = b"n=user,r=rOprNGfwEbeRWgbNEkqO"  # the RFC's user name (PostgreSQL sends it empty)
    server_first = b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
    assert c.final(server_first) == (b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
                                     b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    c.verify(b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=")
    with pytest.raises(AuthFailed, match="does not know the password"):
        c.verify(b"v=" + base64.b64encode(b"x" * 32))


def test_scram_refuses_a_nonce_the_server_did_not_extend_and_unknown_mechanisms():
    c = ScramClient("pw", ["SCRAM-SHA-256"])
    with pytest.raises(AuthFailed, match="nonce"):
        c.final(b"r=someone-else,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096")
    with pytest.raises(AuthFailed, match="speaks SCRAM-SHA-256"):
        ScramClient("pw", ["SCRAM-SHA-1"])


# -- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize("oid, data, text", [
    (23, struct.pack("!i", -5), "-5"),
    (20, struct.pack("!q", 9000000001), "9000000001"),
    (16, b"\x01", "true"),
    (701, struct.pack("!d", 1.5), "1.5"),
    (1082, struct.pack("!i", 31), "2000-02-01"),
    (1114, struct.pack("!q", 1_500_000), "2000-01-01 00:00:01.500000"),
    (2950, bytes(range(16)), "00010203-0405-0607-0809-0a0b0c0d0e0f"),
    (1700, struct.pack("!hhHh", 2, 0, 0, 2) + struct.pack("!hh", 12, 5000), "12.50"),
    (3802, b'\x01{"a": 1}', '{"a": 1}'),
])
def test_binary_values_of_common_types_decode(oid, data, text):
    assert decode_binary(oid, data) == text


def test_recorded_values_are_masked_and_undecoded_binary_is_base64():
    class Masker:
        def mask_text(self, t):
            return t.replace("hunter2", "[MASKED:x:00000000]")

        def mask_bytes(self, b):
            return b.replace(b"hunter2", b"[MASKED:x:00000000]")

    assert recorded_value(b"pw=hunter2", 25, False, Masker())["text"] == "pw=[MASKED:x:00000000]"
    raw = recorded_value(b"\x00hunter2\xff", 17, True, Masker())
    assert base64.b64decode(raw["b64"]) == b"\x00[MASKED:x:00000000]\xff" and raw["binary"] is True
    assert recorded_value(None, 25, False, None) is None


# -- the tracker -----------------------------------------------------------------------------


def _track(client: bytes, server: bytes, **kw):
    emitted = []
    t = Tracker("c1", lambda rtype, fields: emitted.append((rtype, fields)), lambda: None,
                clock=iter(range(100)).__next__, **kw)
    recs = t.client(pg.Splitter().feed(client))
    t.started()
    t.server(pg.Splitter().feed(server))
    return recs, emitted, t


def _err(code: str, text: str) -> bytes:
    return pg.message(b"E", b"SERROR\0VERROR\0C" + code.encode() + b"\0M" + text.encode() + b"\0\0")


def test_an_error_in_the_extended_protocol_skips_to_sync_and_results_stay_paired():
    client = (pg.parse_message("", "SELECT 1/0") + pg.bind_message("", "", []) + pg.execute_message() + pg.SYNC
              + pg.parse_message("", "SELECT 2") + pg.bind_message("", "", []) + pg.execute_message() + pg.SYNC)
    server = (pg.message(b"1") + pg.message(b"2") + _err("22012", "division by zero") + pg.ready_for_query()
              + pg.message(b"1") + pg.message(b"2") + pg.message(b"D", b"\0\x01\0\0\0\x012")
              + pg.message(b"C", pg.cstr("SELECT 1")) + pg.ready_for_query())
    recs, emitted, t = _track(client, server)
    assert [r[0] for r in recs] == ["pg.parse", "pg.bind", "pg.execute"] * 2
    results = [f for rt, f in emitted if rt == "pg.result"]
    assert [(r["n"], r["tag"], (r.get("error") or {}).get("sqlstate")) for r in results] == [
        (2, None, "22012"), (5, "SELECT 1", None)]
    assert not t.pending


def test_a_multi_statement_query_gets_one_result_per_statement_and_copy_counts_bytes():
    client = pg.query_message("SELECT 1; COPY t FROM STDIN") + pg.message(b"d", b"1\n2\n") + pg.message(b"d", b"3\n") \
        + pg.message(b"c")
    server = (pg.message(b"T", b"\0\x01x\0" + bytes(6) + struct.pack("!I", 23) + bytes(8))
              + pg.message(b"D", b"\0\x01\0\0\0\x011") + pg.message(b"C", pg.cstr("SELECT 1"))
              + pg.message(b"G", b"\0\0\0") + pg.message(b"C", pg.cstr("COPY 3")) + pg.ready_for_query())
    _, emitted, t = _track(client, b"")
    # The CopyInResponse comes before the client's data in a real exchange.
    t.server(pg.Splitter().feed(server[:server.index(b"G")]) + pg.Splitter().feed(server[server.index(b"G"):]
                                                                                  [:9]))
    t.client(pg.Splitter(frozenset({b"c"})).feed(pg.message(b"d", b"1\n2\n") + pg.message(b"d", b"3\n")))
    t.server(pg.Splitter().feed(pg.message(b"C", pg.cstr("COPY 3")) + pg.ready_for_query()))
    results = [f for rt, f in emitted if rt == "pg.result"]
    assert [(r["i"], r["tag"], r["rows"]) for r in results] == [(0, "SELECT 1", 1), (1, "COPY 3", 3)]
    assert results[0]["columns"] == [["x", "int4"]]
    assert results[1]["copy"] == {"dir": "in", "bytes": 6, "messages": 2}


def test_a_message_type_the_tracker_does_not_know_is_refused_not_forwarded():
    t = Tracker("c1", lambda *a: None, lambda: None)
    with pytest.raises(pg.ProtocolError, match="unexpected message type b'p'"):
        t.client(pg.Splitter().feed(pg.query_message("SELECT 1") + pg.password_message(b"x\0")))


def test_samples_are_capped_and_off_by_default():
    client = pg.query_message("SELECT g FROM s")
    rows = b"".join(pg.message(b"D", b"\0\x01\0\0\0\x01" + str(i).encode()) for i in range(5))
    server = rows + pg.message(b"C", pg.cstr("SELECT 5")) + pg.ready_for_query()
    _, emitted, _ = _track(client, server)
    assert "sample" not in emitted[0][1]
    emitted = []
    t = Tracker("c1", lambda rt, f: emitted.append(f), lambda: None, sample_rows=2)
    t.client(pg.Splitter().feed(client))
    t.server(pg.Splitter(None).feed(server))
    assert emitted[0]["sample"] == [[{"type": "unknown", "text": "0"}], [{"type": "unknown", "text": "1"}]]
    assert emitted[0]["rows"] == 5


# -- classification, transcript ----------------------------------------------------------------


@pytest.mark.parametrize("sql, expected", [
    ("SELECT * FROM t", "read"), ("with x as (select 1) select * from x", "read"), ("SHOW search_path", "read"),
    ("SELECT 'delete from t'", "read"), ("-- update\nSELECT 1", "read"), ("EXPLAIN SELECT 1", "read"),
    ("EXPLAIN ANALYZE DELETE FROM t", "write"), ("SELECT * FROM t FOR UPDATE", "write"),
    ("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", "write"), ("SELECT a INTO b FROM c", "write"),
    ("SELECT nextval('s')", "write"), ("UPDATE t SET a = 1", "write"), ("SET ROLE admin", "write"),
    ("BEGIN", "control"), ("COMMIT", "control"), ("SELECT 1; DROP TABLE t", "write"),
    ("SELECT $$;drop$$", "read"),
])
def test_sql_kind(sql, expected):
    assert kind(sql) == expected


def test_sql_log_shows_statement_parameters_and_results():
    recs = [
        {"t": "pg.parse", "conn": "c", "n": 0, "statement": "s1", "sql": "SELECT * FROM t WHERE a = $1", "ts": 1.0},
        {"t": "pg.bind", "conn": "c", "n": 1, "portal": "", "statement": "s1",
         "params": [{"type": "text", "text": "it's"}], "ts": 1.0},
        {"t": "pg.execute", "conn": "c", "n": 2, "portal": "", "ts": 1.0},
        {"t": "pg.result", "conn": "c", "n": 2, "tag": "SELECT 3", "rows": 3, "columns": [["a", "text"]],
         "duration_ms": 1.5, "ts": 1.1},
        {"t": "pg.query", "conn": "c", "n": 3, "sql": "DELETE FROM t", "ts": 2.0},
        {"t": "pg.result", "conn": "c", "n": 3, "tag": None, "rows": None,
         "error": {"sqlstate": "42501", "message": "permission denied for table t"}, "ts": 2.1},
    ]
    text = "\n".join(sql_log_lines(recs))
    assert "SELECT * FROM t WHERE a = $1" in text and "-- $1 = 'it''s'" in text
    assert "-- 3 rows  (a text)  (1.5 ms)" in text
    assert "DELETE FROM t" in text and "-- ERROR 42501: permission denied for table t" in text


# -- config ------------------------------------------------------------------------------------

BASE = '[storage]\ndir = "s"\n[identity]\nmode = "none"\n'
PG = '[[connections]]\nname = "db"\nkind = "postgres"\nlisten = "127.0.0.1:15432"\nupstream = "db.internal"\n' \
     'user = "app"\ncredential = "env:PGPW"\n'


@pytest.fixture(autouse=True)
def _pg_password(monkeypatch):
    monkeypatch.setenv("PGPW", "db-secret")


def _parse(text: str):
    return parse_config(text, source="gw.toml", base_dir=Path("/cfg"))


def test_a_postgres_connection_loads():
    c = _parse(BASE + PG).connections[0]
    assert (c.kind, c.listen, c.upstream, c.user, c.upstream_tls, c.allow_plaintext, c.sample_rows) == (
        "postgres", "127.0.0.1:15432", "db.internal", "app", "require", False, 0)


@pytest.mark.parametrize("extra, key, message", [
    ('allow_plaintext = true\n', "connections[0].allow_plaintext", "only allowed on a loopback"),
    ('hosts = ["db"]\n', "connections[0].hosts", "leave hosts and ports out"),
    ('tls_cert = "c.pem"\n', "connections[0].tls_key", "give both tls_cert and tls_key"),
    ('upstream_tls = "verify"\n', "connections[0].upstream_tls", 'one of "disable", "prefer"'),
    ('sample_rows = 5000\n', "connections[0].sample_rows", "0..1000"),
    ('client_key = "k.pem"\n', "connections[0].client_key", "client_key needs client_cert"),
])
def test_postgres_connection_errors_name_the_key(extra, key, message):
    text = BASE + PG.replace('listen = "127.0.0.1:15432"', 'listen = "0.0.0.0:15432"') + extra
    with pytest.raises(ConfigError) as e:
        _parse(text)
    assert e.value.key == key and message in e.value.problem, str(e.value)


@pytest.mark.parametrize("text, key, message", [
    (BASE + PG.replace('listen = "127.0.0.1:15432"\n', ""), "connections[0].listen", "needs listen, upstream"),
    (BASE + PG.replace('listen = "127.0.0.1:15432"', 'listen = "15432"'), "connections[0].listen", '"host:port"'),
    (BASE + PG.replace('credential = "env:PGPW"\n', ""), "connections[0].credential", "database credential"),
    (BASE + PG + PG.replace('name = "db"', 'name = "db2"'), "connections[1].listen", "already the listen address"),
    (BASE + '[[connections]]\nname = "api"\nhosts = ["a.com"]\nlisten = "127.0.0.1:1"\n', "connections[0].listen",
     'only for kind = "postgres"'),
    (BASE + '[[connections]]\nname = "api"\n', "connections[0].hosts", "missing"),
])
def test_postgres_and_http_keys_stay_with_their_kind(text, key, message):
    with pytest.raises(ConfigError) as e:
        _parse(text)
    assert e.value.key == key and message in e.value.problem, str(e.value)


# -- the test vector of docs/format.md -----------------------------------------------------------


def _vector():
    spec = importlib.util.spec_from_file_location("v1_postgres", ROOT / "tests" / "vectors" / "v1_postgres.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_database_vector_is_what_the_tracker_makes_and_what_the_spec_shows():
    vec = _vector()
    lines = vec.build_lines()
    assert vec.JSONL.read_bytes() == b"".join(line + b"\n" for line in lines)
    spec = (ROOT / "docs" / "format.md").read_text()
    for line in lines:
        assert line.decode() in spec, f"docs/format.md lacks the vector line {line[:80]!r}"
    for line in lines:
        rec = orjson.loads(line)
        assert _check_fields(rec["seq"], rec) == [], rec
    assert all(t in REQUIRED for t in ("pg.connect", "pg.parse", "pg.bind", "pg.execute", "pg.result", "pg.end"))


def test_reader_reports_a_pg_record_without_its_required_fields():
    problems = _check_fields(3, {"v": 1, "seq": 3, "t": "pg.query", "ts": 1.0, "prev": "0" * 64, "conn": "c"})
    assert [p.message for p in problems] == ['pg.query: missing field "n"', 'pg.query: missing field "sql"']
    assert re.search("wrong type", str(_check_fields(3, {"v": 1, "t": "pg.result", "ts": 1.0, "conn": "c", "n": "x",
                                                          "tag": None, "rows": None})))


def test_sampled_cells_of_a_binary_result_are_decoded_with_the_formats_the_bind_chose():
    # asyncpg: Describe the statement (no formats yet), then Bind asking for binary results.
    desc = pg.message(b"T", b"\0\x01n\0" + bytes(6) + struct.pack("!I", 23) + bytes(6) + b"\0\0")
    emitted = []
    t = Tracker("c1", lambda rt, f: emitted.append(f), lambda: None, sample_rows=1)
    t.client(pg.Splitter().feed(pg.parse_message("s1", "SELECT 7") + pg.describe_message("S", "s1") + pg.SYNC))
    t.server(pg.Splitter().feed(pg.message(b"1") + pg.message(b"t", b"\0\0") + desc + pg.ready_for_query()))
    bind = pg.message(b"B", pg.cstr("") + pg.cstr("s1") + b"\0\0" + b"\0\0" + b"\0\x01\0\x01")
    t.client(pg.Splitter().feed(bind + pg.execute_message() + pg.SYNC))
    t.server(pg.Splitter().feed(pg.message(b"2") + pg.message(b"D", b"\0\x01\0\0\0\x04" + struct.pack("!i", 7))
                                + pg.message(b"C", pg.cstr("SELECT 1")) + pg.ready_for_query()))
    result = next(f for f in emitted if f.get("tag") == "SELECT 1")
    assert result["sample"] == [[{"type": "int4", "binary": True, "text": "7"}]]


def test_an_error_at_bind_is_the_answer_of_its_execute_in_the_sql_log():
    recs = [
        {"t": "pg.parse", "conn": "c", "n": 0, "statement": "", "sql": "SELECT $1 / 0", "ts": 1.0},
        {"t": "pg.bind", "conn": "c", "n": 1, "portal": "", "statement": "", "params": [{"type": "int2", "text": "1"}],
         "ts": 1.0},
        {"t": "pg.execute", "conn": "c", "n": 2, "portal": "", "ts": 1.0},
        {"t": "pg.result", "conn": "c", "n": 1, "tag": None, "rows": None,
         "error": {"sqlstate": "22012", "message": "division by zero"}, "ts": 1.1},
    ]
    lines = sql_log_lines(recs)
    assert sum("SELECT $1 / 0" in ln for ln in lines) == 1, lines
    assert any("-- ERROR 22012 at bind: division by zero" in ln for ln in lines), lines
    assert not any("no answer recorded" in ln for ln in lines), lines
