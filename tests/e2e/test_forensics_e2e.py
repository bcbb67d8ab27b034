"""End to end: a session recorded through the real gateway is replayed against a
second fake upstream (the sandbox), shown as a transcript, and exported."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import zstandard

from tests.support import upstream as fake
from tests.support.checks import finish
from tests.support.clients import httpx_client, new_test_id, openai_client
from tests.support.shared_store import kept_read_only
from tests.support.upstream import FakeUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

REPO_ROOT = Path(__file__).resolve().parents[2]
REPLAY = REPO_ROOT / "scripts" / "replay.py"
WIRETRAIL = Path(sys.executable).parent / "wiretrail"
SANDBOX_KEY = "sk-sandbox-credential"


@pytest.fixture
def sandbox(test_ca):
    up = FakeUpstream(test_ca, sse_events=3, sse_delay=0.05).start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def recorded(start_module_gateway, module_upstream):
    """A session with a JSON chat request, an SDK stream (SSE) and a streamed request body,
    recorded once for the module: tests only read it (the one that tampers works on a copy)."""
    gateway, upstream = start_module_gateway(), module_upstream
    tids = {"json": new_test_id(), "stream": new_test_id(), "upload": new_test_id()}
    with httpx_client(gateway, "proxy", upstream) as client:
        r = client.post(
            "/v1/chat/completions",
            json={"model": "gpt-test", "messages": [{"role": "user", "content": "héllo ✓"}]},
            headers={"x-test-id": tids["json"], "authorization": "Bearer sk-client-secret"},
        )
        assert r.status_code == 200
        parts = [b"part %d\n" % i for i in range(50)]
        r = client.post("/echo", content=iter(parts), headers={"x-test-id": tids["upload"], "content-type": "text/plain"})
        assert r.status_code == 200
    sdk = openai_client(gateway, "proxy", upstream, tids["stream"])
    stream = sdk.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "stream please"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == fake.stream_text(upstream.sse_events)
    art = finish(gateway)
    [path] = art.paths
    with kept_read_only(gateway.store_dir):
        yield path, tids, upstream


def run_replay(*args, timeout=60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPLAY), *map(str, args)], capture_output=True, text=True, timeout=timeout)


def test_replay_sends_the_recorded_requests_to_the_sandbox(recorded, sandbox, test_ca):
    path, tids, upstream = recorded
    res = run_replay(path, "--target", sandbox.base_url, "--ca", test_ca.cert_path,
                     "--header", f"Authorization: Bearer {SANDBOX_KEY}", "--json")
    assert res.returncode == 0, res.stdout + res.stderr
    report = json.loads(res.stdout)
    assert len(report["flows"]) == 3
    for kind, tid in tids.items():
        [orig] = upstream.received(tid)
        got = sandbox.exchange(tid)
        assert (got.method, got.target) == (orig.method, orig.target)
        if kind == "upload":
            assert got.body == orig.body == b"".join(b"part %d\n" % i for i in range(50))
        else:
            assert json.loads(got.body) == json.loads(orig.body)
        # The sandbox credential, and none of the recorded credential markers or masked values.
        assert got.header("authorization") == f"Bearer {SANDBOX_KEY}"
        for name, value in got.headers:
            assert "[credential:" not in value and "[MASKED:" not in value, (name, value)
            assert "sk-client-secret" not in value
    by_flow = {f["recorded_url"].split("?")[0].rsplit("/", 1)[-1]: f for f in report["flows"]}
    completions = [f for f in report["flows"] if f["recorded_url"].endswith("/v1/chat/completions")]
    assert all(f["sandbox"]["status"] == 200 and f["recorded"]["status"] == 200 for f in completions)
    streamed = [f for f in completions if f["recorded"]["streamed"]]
    assert len(streamed) == 1
    # The sandbox streams 3 events, the recording has 5: the first difference says so.
    assert streamed[0]["sandbox"]["size"] < streamed[0]["recorded"]["size"]
    assert streamed[0]["first_difference"]
    assert by_flow["echo"]["first_difference"] is None
    # The sandbox header's value is never printed.
    assert SANDBOX_KEY not in res.stdout and SANDBOX_KEY not in res.stderr
    dropped = [d for f in report["flows"] for d in f["dropped_headers"]]
    assert any(d.startswith("authorization") for d in dropped) is False  # replaced by --header, not dropped


def test_replay_table_selection_and_masked_note(recorded, sandbox, test_ca):
    path, tids, upstream = recorded
    res = run_replay(path, "--target", sandbox.base_url, "--ca", test_ca.cert_path, "--only", "/echo")
    assert res.returncode == 0, res.stdout + res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split()[:2] == ["#", "REQUEST"]
    assert len(lines) >= 2 and "POST " in lines[1] and "/echo" in lines[1] and "200 / 200" in lines[1]
    assert lines[1].rstrip().endswith("none")
    assert len(sandbox.exchanges) == 1
    # Without --header the recorded (masked) client credential is dropped, and the output says so.
    res = run_replay(path, "--target", sandbox.base_url, "--ca", test_ca.cert_path, "--flow", "1")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "not resent: authorization (masked credential)" in res.stdout
    got = sandbox.exchange(tids["json"])
    assert got.header("authorization") is None


def test_replay_dry_run_sends_nothing(recorded, sandbox, test_ca):
    path, tids, _ = recorded
    res = run_replay(path, "--target", sandbox.base_url, "--dry-run", "--header", f"x-api-key: {SANDBOX_KEY}")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "nothing is sent" in res.stdout
    assert f"POST {sandbox.base_url}/v1/chat/completions" in res.stdout
    assert "x-api-key: [sandbox header, not shown]" in res.stdout and SANDBOX_KEY not in res.stdout
    assert sandbox.exchanges == []


def _tamper(path: Path) -> None:
    data = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    lines = data.split(b"\n")[:-1]
    i = next(i for i, line in enumerate(lines) if b'"t":"http.request"' in line)
    lines[i] = lines[i].replace(b"gpt-test", b"gpt-evil", 1)
    cobj = zstandard.ZstdCompressor().compressobj()
    path.write_bytes(cobj.compress(b"".join(x + b"\n" for x in lines)) + cobj.flush())


def test_replay_refuses_a_tampered_artifact_unless_forced(recorded, sandbox, test_ca, tmp_path):
    shared, _, _ = recorded
    path = tmp_path / shared.name  # the shared recording stays whole for the other tests
    shutil.copyfile(shared, path)
    _tamper(path)
    res = run_replay(path, "--target", sandbox.base_url, "--ca", test_ca.cert_path)
    assert res.returncode == 1
    assert "refusing to replay" in res.stderr and "failed verification" in res.stderr
    assert "prev does not match" in res.stderr and "--force" in res.stderr
    assert sandbox.exchanges == []
    res = run_replay(path, "--target", sandbox.base_url, "--ca", test_ca.cert_path, "--force")
    assert res.returncode == 0, res.stdout + res.stderr
    assert "FAILED verification" in res.stderr
    assert len(sandbox.exchanges) == 3


def test_replay_usage_errors(recorded, sandbox):
    path, _, _ = recorded
    assert run_replay(path, "--target", "not-a-url", "--dry-run").returncode == 2
    res = run_replay(path, "--target", sandbox.base_url, "--flow", "zzzz", "--dry-run")
    assert res.returncode == 2 and "no such request" in res.stderr
    res = run_replay(path, "--target", sandbox.base_url, "--header", "no-colon", "--dry-run")
    assert res.returncode == 2 and "Name: value" in res.stderr
    # The sandbox's certificate is not trusted without --ca / --insecure.
    res = run_replay(path, "--target", sandbox.base_url, "--only", "/echo")
    assert res.returncode == 1 and "not sent" in res.stdout


def test_show_transcript_of_a_gateway_session(recorded):
    path, _, upstream = recorded
    res = subprocess.run([str(WIRETRAIL), "show", str(path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "(openai.chat, gpt-test)" in out
    assert "user: héllo ✓" in out
    assert f"  > assistant: {fake.JSON_REPLY_TEXT}" in out
    assert "(openai.chat, gpt-test, streamed)" in out
    assert f"  > assistant: {fake.stream_text(upstream.sse_events)}" in out
    assert "tokens in 5, out 7" in out
    assert "\x1b[" not in out  # not a terminal: no colour
    doc = json.loads(subprocess.run([str(WIRETRAIL), "show", "--json", str(path)], capture_output=True, text=True, timeout=60).stdout)
    assert [e["protocol"] for e in doc["exchanges"]] == ["openai.chat", "http", "openai.chat"]


def test_export_har_and_mitm_of_a_gateway_session(recorded, tmp_path):
    from mitmproxy.io import FlowReader

    path, tids, upstream = recorded
    har, mitm = tmp_path / "s.har", tmp_path / "s.mitm"
    res = subprocess.run([str(WIRETRAIL), "export", str(path), "--har", str(har), "--mitm", str(mitm)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    entries = json.loads(har.read_text())["log"]["entries"]
    assert len(entries) == 3
    with mitm.open("rb") as f:
        flows = list(FlowReader(f).stream())
    assert [f.request.url for f in flows] == [e["request"]["url"] for e in entries]
    stream_flow = next(f for f in flows if f.request.headers.get("x-test-id") == tids["stream"])
    assert stream_flow.response.content == upstream.exchange(tids["stream"]).response_body


def test_replay_sends_masked_values_as_masked_text_and_says_so(tmp_path, sandbox, test_ca):
    from tests.support.sessions_built import Recorder

    r = Recorder(tmp_path / "store")
    masked = "[MASKED:openai-key:1f2e3d4c]"
    body = json.dumps({"note": f"my key is {masked}", "x-test-id": "masked"}).encode()
    r.flow("https://api.openai.com/echo?k=1", body, body)
    path = r.close()
    res = run_replay(path, "--target", sandbox.base_url + "/", "--ca", test_ca.cert_path)
    assert res.returncode == 0, res.stdout + res.stderr
    [got] = sandbox.exchanges
    assert got.target == "/echo?k=1" and got.body == body  # sent as recorded: the tag, not a secret
    assert "[1] 1 masked value(s) in the recorded request were sent as the masked text" in res.stdout
    assert "not resent: authorization (credential marker)" in res.stdout
    assert got.header("authorization") is None
    assert res.stdout.splitlines()[1].rstrip().endswith("none")  # the echo equals the recorded reply
