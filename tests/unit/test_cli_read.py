"""The reading commands: wiretrail verify, ls and show, run as the user runs them."""
import re
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import zstandard

from recorder import cli
from recorder.store import format_v1
from recorder.store.bodies import BodyBytes
from recorder.store.sessions import SessionRegistry
from recorder.store.writer import RecordWriter

WIRETRAIL = Path(sys.executable).parent / "wiretrail"
LONG_TEXT = "x" * 150 + "y" * 150 + "TAIL-NOT-SHOWN"


def record_session(store: Path, sub: str, ip: str, now: float, *, requests: int = 1) -> str:
    """A session written by the real writer. Returns its id."""
    clock = [now]
    w = RecordWriter(fsync="never")
    w.start()
    reg = SessionRegistry(w, store, idle_timeout=60, max_duration=600, clock=lambda: clock[0])
    identity = {"sub": sub, "email": f"{sub}@example.com", "groups": ["eng"], "iss": "https://idp/", "method": "jwt", "authenticated": True}
    s = reg.begin_flow(sub, identity, (ip, 40000))
    for i in range(requests):
        flow = f"flow{i:04d}-0000-0000-0000-000000000000"
        s.record(
            "http.request",
            {
                "flow": flow,
                "conn": "c1",
                "connection": "openai",
                "method": "POST",
                "url": f"https://api.openai.com/v1/chat/completions?i={i}",
                "http_version": "HTTP/1.1",
                "headers": [["authorization", "[credential:openai]"]],
                "body": BodyBytes(LONG_TEXT.encode()),
                "streamed": False,
            },
            ts=now + i,
        )
        s.record(
            "http.response",
            {"flow": flow, "status": 200, "reason": "OK", "http_version": "HTTP/1.1", "headers": [], "body": BodyBytes(b"\xff\xfe\x00"), "streamed": False},
            ts=now + i + 0.5,
        )
        s.record(
            "http.end",
            {"flow": flow, "status": 200, "size": {"request": 1000, "response": 24}, "duration_ms": 500.0, "ttfb_ms": 100.0},
            ts=now + i + 0.6,
        )
    s.record("http.error", {"flow": "ffff", "phase": "connect", "message": "upstream refused the connection"}, ts=now + requests)
    clock[0] = now + 90
    reg.end_flow(s)
    reg.close_all()
    assert w.stop()
    return s.id


def session_file(store: Path, sid: str) -> Path:
    [path] = list(store.rglob(sid + format_v1.FILE_SUFFIX))
    return path


def rewrite(path: Path, lines: list[bytes], *, finish=True) -> None:
    cobj = zstandard.ZstdCompressor().compressobj()
    data = cobj.compress(b"".join(x + b"\n" for x in lines)) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    if finish:
        data += cobj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
    path.write_bytes(data)


def read_lines(path: Path) -> list[bytes]:
    data = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    return data.split(b"\n")[:-1]


@pytest.fixture
def store(tmp_path):
    store = tmp_path / "sessions"
    return store


def test_verify_intact_closed_and_crashed_sessions_exit_0(store, capsys):
    closed = record_session(store, "alice", "10.0.0.1", 1767225600.0)
    crashed = record_session(store, "bob", "10.0.0.2", 1767225700.0, requests=2)
    path = session_file(store, crashed)
    # What a crash leaves: no session.close, the frame not ended.
    rewrite(path, read_lines(path)[:-1], finish=False)
    assert cli.main(["verify", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"{session_file(store, closed)}: closed cleanly, 6 records, last seq 5" in out
    assert f"{path}: unsealed (gateway stopped): 8 records readable, last seq 7" in out
    assert "only the hash chains were checked" in out


def test_verify_tampered_exits_1_naming_file_and_seq(store, capsys):
    sid = record_session(store, "alice", "10.0.0.1", 1767225600.0, requests=2)
    path = session_file(store, sid)
    lines = read_lines(path)
    lines[2] = lines[2].replace(b'"status":200', b'"status":201')
    rewrite(path, lines)
    assert cli.main(["verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert f"FAILED  {path}" in out
    assert f"{path}: seq 3: prev does not match the hash of the line before it (seq 2): a line was edited, removed, inserted or moved" in out


def test_verify_usage_errors_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(["verify"])
    assert e.value.code == 2
    assert cli.main(["verify", str(tmp_path / "nope")]) == 2
    assert "no such file or directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli.main(["verify", str(tmp_path / "empty")]) == 2
    assert "no session files" in capsys.readouterr().err


def test_verify_with_key_checks_signatures_and_rejects_bad_keys(store, tmp_path, capsys):
    record_session(store, "alice", "10.0.0.1", 1767225600.0)
    key = tmp_path / "gateway.pub"
    key.write_text("-----BEGIN PUBLIC KEY-----\n-----END PUBLIC KEY-----\n")
    assert cli.main(["verify", "--key", str(key), str(store)]) == 2
    assert "not a PEM public key" in capsys.readouterr().err
    assert cli.main(["verify", "--key", str(tmp_path / "missing.pub"), str(store)]) == 2
    # A real key, but this session was written without one: nothing in it is signed.
    assert cli.main(["keygen", str(tmp_path / "keys")]) == 0
    assert cli.main(["verify", "--key", str(tmp_path / "keys" / "gateway.pub"), str(store)]) == 1
    assert "session.open names no signing key" in capsys.readouterr().out


def test_verify_via_the_installed_command(store):
    sid = record_session(store, "alice", "10.0.0.1", 1767225600.0, requests=3)
    path = session_file(store, sid)
    lines = read_lines(path)
    del lines[4]
    rewrite(path, lines)
    proc = subprocess.run([str(WIRETRAIL), "verify", str(store)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"{path}: seq 5: expected seq 4, found 5 (gap: records missing)" in proc.stdout


def test_ls_table_newest_last(store, capsys):
    later = record_session(store, "bob", "10.0.0.2", 1767229200.0, requests=2)
    earlier = record_session(store, "alice", "10.0.0.1", 1767225600.0, requests=1)
    crashed = record_session(store, "carol", "10.0.0.3", 1767232800.0, requests=1)
    path = session_file(store, crashed)
    rewrite(path, read_lines(path)[:-1], finish=False)
    assert cli.main(["ls", str(store)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["SESSION", "START", "(UTC)", "DURATION", "IDENTITY", "CLIENT", "AGENT", "RUN", "EXCHANGES",
                              "BYTES", "STATE"]
    rows = [line.split() for line in out[1:]]
    assert [r[0] for r in rows] == [earlier, later, crashed]
    assert rows[0] == [earlier, "2026-01-01T00:00:00Z", "1m30s", "alice", "<alice@example.com>", "10.0.0.1", "-", "-", "1",
                       "1.0", "KiB", "closed"]
    assert rows[1] == [later, "2026-01-01T01:00:00Z", "1m30s", "bob", "<bob@example.com>", "10.0.0.2", "-", "-", "2",
                       "2.0", "KiB", "closed"]
    assert rows[2][3:9] == ["carol", "<carol@example.com>", "10.0.0.3", "-", "-", "1"]
    assert " ".join(rows[2][-3:]) == "unsealed (gateway stopped)"


def test_ls_empty_and_missing_store(tmp_path, capsys):
    (tmp_path / "s").mkdir()
    assert cli.main(["ls", str(tmp_path / "s")]) == 0
    assert capsys.readouterr().out.strip() == f"no sessions in {tmp_path / 's'}"
    assert cli.main(["ls", str(tmp_path / "nope")]) == 2
    assert "no session store at" in capsys.readouterr().err


def test_ls_takes_the_store_from_a_config(store, tmp_path, capsys):
    sid = record_session(store, "alice", "10.0.0.1", 1767225600.0)
    config = tmp_path / "gateway.toml"
    config.write_text('[storage]\ndir = "sessions"\n\n[identity]\nmode = "none"\n')
    assert cli.main(["ls", "--config", str(config)]) == 0
    assert sid in capsys.readouterr().out
    bad = tmp_path / "bad.toml"
    bad.write_text("[storage]\ndirr = 1\n")
    assert cli.main(["ls", "--config", str(bad)]) == 2
    assert "dirr" in capsys.readouterr().err


def test_show_records(store, capsys):
    sid = record_session(store, "alice", "10.0.0.1", 1767225600.0)
    assert cli.main(["show", "--records", sid, "--dir", str(store)]) == 0
    out = capsys.readouterr().out
    assert f"session   {sid}" in out
    assert "who       alice <alice@example.com>  groups: eng" in out
    assert "client    10.0.0.1:40000" in out
    assert "state     closed  (6 records, last seq 5)" in out
    assert "when      2026-01-01T00:00:00.000Z" in out
    assert "    1 00:00:00.000 http.request   flow0000  POST https://api.openai.com/v1/chat/completions?i=0  [openai]" in out
    # Body previews are cut at 200 characters, with the size.
    assert "body 314 B: " + "x" * 150 + "y" * 50 + "..." in out
    assert "TAIL-NOT-SHOWN" not in out
    assert "200 OK" in out and "body 3 B: <binary>" in out
    assert "http.error" in out and "connect: upstream refused the connection" in out
    assert "session.close" in out and "reason shutdown" in out


def test_show_escapes_control_characters(store, capsys):
    """Recorded text comes from the network: it must not drive the operator's terminal."""
    sid = record_session(store, "alice", "10.0.0.1", 1767225600.0)
    path = session_file(store, sid)
    lines = read_lines(path)
    chain = format_v1.Chain()
    recs = [orjson.loads(x) for x in lines]
    recs[4]["message"] = "evil \x1b[2J\x1b]0;pwned\x07 end"
    new = [chain.next_line(r["t"], r["ts"], {k: v for k, v in r.items() if k not in format_v1.ENVELOPE}) for r in recs]
    rewrite(path, new)
    for mode in ([], ["--records"]):
        assert cli.main(["show", str(path), *mode]) == 0
        out = capsys.readouterr().out
        assert "\x1b" not in out and "\x07" not in out
        assert "evil \\x1b[2J\\x1b]0;pwned\\x07 end" in out
    assert cli.main(["show", str(path), "--color", "always"]) == 0
    out = capsys.readouterr().out
    assert "\x1b[" in out  # coloured, and the only escapes are the colours
    assert "\x1b" not in re.sub(r"\x1b\[[0-9;]*m", "", out) and "\x07" not in out
    assert cli.main(["show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "evil \\x1b[2J\\x1b]0;pwned\\x07 end" in out


def test_show_by_path_prefix_and_unknown_id(store, capsys):
    sid = record_session(store, "alice", "10.0.0.1", 1767225600.0)
    path = session_file(store, sid)
    assert cli.main(["show", str(path)]) == 0
    assert f"session   {sid}" in capsys.readouterr().out
    assert cli.main(["show", sid[:12].lower(), "--dir", str(store)]) == 0
    assert f"session   {sid}" in capsys.readouterr().out
    assert cli.main(["show", "01KDVDNA00B8Y9W7VV5N66X2GB", "--dir", str(store)]) == 2
    err = capsys.readouterr().err
    assert "no session 01KDVDNA00B8Y9W7VV5N66X2GB in" in err and "wiretrail ls" in err


def test_show_raw_prints_the_stored_lines(store, capfdbinary):
    sid = record_session(store, "alice", "10.0.0.1", 1767225600.0)
    assert cli.main(["show", "--raw", sid, "--dir", str(store)]) == 0
    out = capfdbinary.readouterr().out
    lines = read_lines(session_file(store, sid))
    assert out == b"".join(x + b"\n" for x in lines)
    records = [orjson.loads(x) for x in out.splitlines()]
    assert [r["t"] for r in records] == ["session.open", "http.request", "http.response", "http.end", "http.error", "session.close"]


def test_ls_filters_user_time_host(store, capsys):
    alice = record_session(store, "alice", "10.0.0.1", 1767225600.0)  # 2026-01-01T00:00Z, 90 s
    bob = record_session(store, "bob", "10.0.0.2", 1767312000.0)  # 2026-01-02T00:00Z

    def listed(*args):
        assert cli.main(["ls", str(store), *args]) == 0
        return [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:] if not line.startswith("*")]

    assert listed() == [alice, bob]
    assert listed("--user", "bob") == [bob]
    assert listed("--user", "ALICE@example.com") == [alice]
    assert listed("--since", "2026-01-01T12:00") == [bob]
    assert listed("--until", "2026-01-01T12:00") == [alice]
    assert listed("--since", "2026-01-01T00:01:00Z", "--until", "2026-01-01T00:02") == [alice]  # active then
    assert listed("--host", "openai.com") == [alice, bob]
    assert cli.main(["ls", str(store), "--host", "anthropic.com"]) == 0
    assert "match the filters" in capsys.readouterr().out
    assert cli.main(["ls", str(store), "--since", "yesterday"]) == 2
    assert "is not a time" in capsys.readouterr().err
    assert cli.main(["ls", str(store), "--json", "--user", "bob"]) == 0
    [doc] = [orjson.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert doc["session"] == bob and doc["identity"]["sub"] == "bob" and doc["state"] == "closed" and doc["exchanges"] == 1


def test_ls_relative_times():
    from recorder.commands.common import parse_time

    assert parse_time("2h", now=10000.0) == 10000.0 - 7200
    assert parse_time("3d", now=1e6) == 1e6 - 3 * 86400
    assert parse_time("2026-01-01") == 1767225600.0


def test_ls_host_goes_by_where_a_request_went_not_the_host_it_named():
    from recorder.forensics.summary import host_matches, hosts_of

    records = [
        # named api.openai.com, went to 127.0.0.1 (the record says both)
        {"t": "http.request", "url": "https://api.openai.com/v1/x",
         "dest": {"host": "127.0.0.1", "port": 443, "address": "127.0.0.1"}},
        # a registered name; the address is the one mitmproxy resolved
        {"t": "http.request", "url": "https://Api.Anthropic.com./v1/messages",
         "dest": {"host": "api.anthropic.com", "port": 443, "address": "160.79.104.10"}},
        {"t": "tunnel", "host": "Tunnelled.Example.", "port": 443, "address": "192.0.2.9"},
        {"t": "http.request", "url": "https://old.example.net/v1/x"},  # a file from before dest was recorded
    ]
    hosts = hosts_of(records)
    for want, listed in [("127.0.0.1", True), ("127.1", True), ("api.openai.com", False), ("openai.com", False),
                         ("anthropic.com", True), ("160.79.104.10", True), ("tunnelled.example", True),
                         ("192.0.2.9", True), ("old.example.net", True), ("example.net", True)]:
        assert host_matches(hosts, want) is listed, want
