"""wiretrail export: HAR 1.2 and mitmproxy flow files, opened by mitmproxy itself."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from mitmproxy.io import FlowReader
from mitmproxy.io import tnetstring as mitm_tnetstring

from recorder import cli
from recorder.forensics.export_mitm import tnetstring
from tests.support.sessions_built import Recorder, sse

MITMDUMP = Path(sys.executable).parent / "mitmdump"
CHAT = "https://api.openai.com/v1/chat/completions?api-version=2"
REQ = {"model": "gpt-4o", "messages": [{"role": "user", "content": "héllo"}]}
REPLY = {"choices": [{"message": {"role": "assistant", "content": "hi ✓"}}]}
EVENTS = [sse({"choices": [{"delta": {"content": "a"}}]}), sse("[DONE]")]


@pytest.fixture
def session(tmp_path) -> Path:
    r = Recorder(tmp_path / "store")
    r.flow(CHAT, REQ, REPLY)
    r.flow(CHAT, dict(REQ, stream=True), b"", sse_chunks=EVENTS)
    r.flow("https://example.com/bin", None, b"\xff\x00\xfe", method="GET", status=404)
    r.raw("http.error", {"flow": "f0000003-0000-0000-0000-000000000000", "phase": "response", "message": "reset"})
    return r.close()


def test_har_has_the_har_1_2_fields(session, tmp_path, capsys):
    out = tmp_path / "s.har"
    assert cli.main(["export", str(session), "--har", str(out)]) == 0
    assert "HAR 1.2, 3 entries" in capsys.readouterr().out
    log = json.loads(out.read_text())["log"]
    assert log["version"] == "1.2" and log["creator"]["name"] == "wiretrail"
    assert isinstance(log["entries"], list) and len(log["entries"]) == 3
    for e in log["entries"]:
        for key in ("startedDateTime", "time", "request", "response", "cache", "timings"):
            assert key in e, key
        for key in ("method", "url", "httpVersion", "cookies", "headers", "queryString", "headersSize", "bodySize"):
            assert key in e["request"], key
        for key in ("status", "statusText", "httpVersion", "cookies", "headers", "content", "redirectURL", "headersSize", "bodySize"):
            assert key in e["response"], key
        assert {"size", "mimeType"} <= set(e["response"]["content"])
        assert {"send", "wait", "receive"} <= set(e["timings"]) and all(e["timings"][k] >= 0 for k in ("send", "wait", "receive"))
        assert e["startedDateTime"].startswith("2026-01-01T00:00:")
    first, streamed, binary = log["entries"]
    assert first["request"]["queryString"] == [{"name": "api-version", "value": "2"}]
    assert json.loads(first["request"]["postData"]["text"]) == REQ
    assert first["request"]["postData"]["mimeType"] == "application/json"
    assert json.loads(first["response"]["content"]["text"]) == REPLY
    assert streamed["response"]["content"]["text"] == b"".join(EVENTS).decode()
    assert binary["response"]["status"] == 404
    assert binary["response"]["content"]["encoding"] == "base64" and binary["response"]["content"]["text"] == "/wD+"
    assert "error (response): reset" in binary["comment"]
    assert first["time"] == 1234.0 and first["timings"]["wait"] == 56.0


def test_mitm_file_opens_with_mitmproxys_flow_reader(session, tmp_path, capsys):
    out = tmp_path / "s.mitm"
    assert cli.main(["export", str(session), "--mitm", str(out)]) == 0
    with out.open("rb") as f:
        flows = list(FlowReader(f).stream())
    assert len(flows) == 3
    first, streamed, binary = flows
    assert first.request.method == "POST" and first.request.url == CHAT
    assert first.request.host == "api.openai.com" and first.request.port == 443 and first.request.scheme == "https"
    assert json.loads(first.request.content) == REQ
    assert first.response.status_code == 200 and json.loads(first.response.content) == REPLY
    assert first.request.headers["authorization"] == "[credential:llm]"
    assert streamed.response.content == b"".join(EVENTS)
    assert binary.request.method == "GET" and binary.response.status_code == 404
    assert binary.response.content == b"\xff\x00\xfe"
    assert binary.error is not None and "reset" in binary.error.msg
    assert first.client_conn.peername == ("10.0.0.9", 50000)
    assert first.metadata["wiretrail"]["session"] in session.name


def test_mitmdump_reads_the_file(session, tmp_path):
    out = tmp_path / "s.mitm"
    assert cli.main(["export", str(session), "--mitm", str(out)]) == 0
    res = subprocess.run([str(MITMDUMP), "-n", "-r", str(out), "--set", f"confdir={tmp_path / 'conf'}"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "POST https://api.openai.com/v1/chat/completions" in res.stdout
    assert "404" in res.stdout


def test_tnetstring_matches_mitmproxys_reader():
    value = {"a": [1, 2.5, True, False, None, b"\x00bytes", "tëxt"], "nested": {"k": ()}}
    assert mitm_tnetstring.loads(tnetstring(value)) == {"a": [1, 2.5, True, False, None, b"\x00bytes", "tëxt"], "nested": {"k": []}}


def test_export_usage_errors(session, tmp_path, capsys):
    assert cli.main(["export", str(session)]) == 2
    assert "--har FILE and/or --mitm FILE" in capsys.readouterr().err
    assert cli.main(["export", str(tmp_path / "nope.jsonl.zst"), "--har", str(tmp_path / "x")]) == 2
    assert cli.main(["export", str(session), "--har", str(tmp_path / "no" / "dir" / "x.har")]) == 1
    assert "cannot write" in capsys.readouterr().err
