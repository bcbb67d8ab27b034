"""MCP through a real gateway, with the official MCP Python SDK as client and server (in a venv of
their own, tests/support/mcp_sdk.py). The server's own log is the ground truth of what it received
and sent.

- Streamable HTTP (proxy mode, with the GET stream) and the HTTP+SSE transport (reverse mode):
  every message the server received and sent is in the record; `wiretrail show` reads the session
  as one tool-call log (initialize, tools offered and their change, each call paired with its
  result or error, progress, the server's sampling and elicitation requests with the client's
  answers, resources, prompts); `show --json` pairs every call; the `ghp_` token a tool returns
  is masked everywhere; the store verifies.
- stdio through `wiretrail mcp-stdio`: the same log, under the caller's verified identity, masked,
  verified; without a token the server is not started and the client is told why.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys

import httpx
import pytest

from tests.support import mcp_sdk
from tests.support.artifacts import store_bytes
from tests.support.disk import fill, small_tmpfs
from tests.support.gateway import REPO_ROOT, WIRETRAIL
from tests.support.idp import AUDIENCE, ISSUER, LocalIdP

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# A GitHub token the built-in masking rules know, returned by the read_secret tool.
SECRET = "ghp_" + hashlib.sha256(b"wiretrail-mcp-e2e").hexdigest()[:36]
REPLAY = REPO_ROOT / "scripts" / "replay.py"
ALL_STEPS = "list_tools,read_secret,count,concurrent,explode,ask_model,confirm,add_tool,resources,prompts"


@pytest.fixture(scope="module")
def sdk_python():
    return mcp_sdk.python()  # made once; fails if pip cannot install the SDK


@pytest.fixture
def mcp_server(tmp_path, test_ca, sdk_python):
    servers = []

    def start(transport: str, name: str = "server", **kw) -> mcp_sdk.McpServer:
        srv = mcp_sdk.McpServer(tmp_path / "mcp", test_ca, transport, secret=SECRET, name=name, **kw).start()
        servers.append(srv)
        return srv

    yield start
    for srv in servers:
        srv.stop()


def show(store, *args: str) -> str:
    path = only_session(store)
    proc = subprocess.run([str(WIRETRAIL), "show", str(path), "--full", "--color", "never", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def only_session(store):
    files = sorted(p for p in store.rglob("*.jsonl.zst"))
    assert len(files) == 1, files
    return files[0]


def canon(msg: dict) -> str:
    return json.dumps(msg, sort_keys=True)


def recorded_messages(store) -> list[dict]:
    """Every JSON-RPC message in the store's MCP sessions, from `show --json`."""
    doc = json.loads(show(store, "--json"))
    return doc


def assert_log_complete(doc: dict, server: mcp_sdk.McpServer, transport: str) -> dict:
    """The one MCP session in `doc` (show --json) pairs every request the server saw with its answer."""
    sessions = doc["mcp"]
    assert len(sessions) == 1, [(s["transport"], s["session_id"]) for s in sessions]
    s = sessions[0]
    assert s["transport"] == transport
    assert s["client"]["name"] == "wiretrail-test-client"
    assert s["server"]["name"] == "wiretrail-test-server"
    log = s["log"]
    requests = [e for e in log if e["kind"] == "request"]
    # Ground truth: every request the client sent reached the server and is in the log once, answered.
    received = [m for m in server.received() if "method" in m and m.get("id") is not None]
    client_requests = [e for e in requests if e["sender"] == "client"]
    assert sorted((m["method"], json.dumps(m["id"])) for m in received) == \
        sorted((e["method"], json.dumps(e["id"])) for e in client_requests)
    unanswered = [e for e in requests if not e["answered"]]
    assert not unanswered, unanswered
    assert not [e for e in log if e["kind"] == "unpaired"]
    # Every answer the server sent is paired with its request (masked where it held the secret).
    sent = {json.dumps(m["id"]): m for m in server.sent() if "id" in m and "method" not in m}
    for e in client_requests:
        m = sent[json.dumps(e["id"])]
        if "error" in m:
            assert e["error"]["code"] == m["error"]["code"]
        elif SECRET not in canon(m):
            assert canon(e["result"]) == canon(m["result"]), e["method"]
    # Each answer's time is when it crossed (the server's log says when it sent it), not later:
    # `show` re-masks a stream without moving its text to a later chunk.
    sent_at = answer_times(server)
    for e in client_requests:
        if json.dumps(e["id"]) in sent_at:
            assert abs(e["answer_ts"] - sent_at[json.dumps(e["id"])]) < 0.5, (e["method"], e["id"])
    # The server's own requests (sampling, elicitation) with the client's answers.
    server_requests = {e["method"]: e for e in requests if e["sender"] == "server"}
    assert "42 is the answer" in canon(server_requests["sampling/createMessage"]["answer"])
    assert server_requests["elicitation/create"]["answer"]["action"] == "accept"
    calls = {e["tool"]: e for e in requests if e.get("tool")}
    assert calls["explode"]["is_error"] is True
    counts = {e["arguments"]["n"]: e for e in requests if e.get("tool") == "count"}
    assert sorted(counts) == [2, 3, 4]  # count, and count_a and count_b at once
    for n, e in counts.items():  # each progress with the call whose token it carried
        assert [p["progress"] for p in e["progress"]] == list(range(1, n + 1)), e
    tools_lists = [e for e in requests if e["method"] == "tools/list"]
    assert [t["name"] for t in tools_lists[-1]["tools_diff"]["added"]] == ["exfiltrate"]
    return s


def answer_times(server: mcp_sdk.McpServer) -> dict[str, float]:
    """When the server sent each of its answers (HTTP servers log each chunk as it leaves)."""
    out = {}
    for ev in server.log():
        if ev.get("ev") in ("chunk", "stdout"):
            for m in re.finditer(r'"id":\s*(\d+),\s*"(?:result|error)"', ev.get("data") or ev.get("line") or ""):
                out.setdefault(m.group(1), ev["ts"])
    return out


def assert_show_text(text: str) -> None:
    for expected in ("tool call read_secret", "[MASKED:", "tool call count", "progress 3/3 step 3 of 3",
                     "tool call explode", "result (isError)", "server request sampling/createMessage",
                     "client answer: 42 is the answer to what is six times seven",
                     "server request elicitation/create", "TOOLS CHANGED", "+ exfiltrate",
                     "resources/read", "error 0: Unknown resource: config://missing", "prompts/get", "client wiretrail-test-client"):
        assert expected in text, f"{expected!r} not in:\n{text}"
    assert "client: request None" not in text
    assert "failed (client)" not in text  # a stream the client closed once it had its answer ended normally
    assert SECRET not in text


def assert_masked(store, *also: str) -> None:
    assert SECRET.encode() not in store_bytes(store)
    for text in also:
        assert SECRET not in text


def run_ok(doc: dict) -> None:
    assert doc["returncode"] == 0 and "fatal" not in doc, json.dumps(doc)[:4000]
    failed = [s for s in doc["steps"] if not s["ok"] and s["step"] != "read_missing"]
    assert not failed, failed
    assert SECRET in mcp_sdk.tool_text(doc, "read_secret")  # the client got the secret: masking is on the record


UPSTREAM_KEY = "mcp-upstream-" + hashlib.sha256(b"wiretrail-mcp-upstream").hexdigest()[:32]


def mcp_connection(server: mcp_sdk.McpServer, key_file) -> str:
    return f"""
[[connections]]
name = "test-tools"
hosts = ["127.0.0.1"]
ports = [{server.port}]
credential = "file:{key_file}"
inject = "bearer"
"""


@pytest.mark.parametrize("transport,mode", [("streamable-http", "proxy"), ("streamable-http", "reverse"),
                                            ("sse", "proxy"), ("sse", "reverse")])
def test_mcp_over_http_is_one_tool_call_log(start_gateway, mcp_server, idp, tmp_path, transport, mode):
    server = mcp_server(transport)
    key_file = tmp_path / "upstream.key"
    key_file.write_text(UPSTREAM_KEY + "\n")
    config = {"identity": {"mode": "jwt", "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": idp.jwks_url},
              "policy": {"unregistered": "deny"}}
    gw = start_gateway(upstream_url=server.base_url, config=config, extra_toml=mcp_connection(server, key_file))
    token = idp.token("alice")
    if mode == "proxy":  # the identity token as proxy credentials; the client holds no upstream key
        proxy = gw.proxy_url.replace("http://", f"http://alice:{token}@")
        doc = mcp_sdk.run_client(transport, server.url, proxy=proxy, ca=gw.ca_path, steps=ALL_STEPS)
    else:  # the identity token where the server's key would go
        doc = mcp_sdk.run_client(transport, gw.reverse_url + server.path, headers={"Authorization": f"Bearer {token}"},
                                 steps=ALL_STEPS)
    run_ok(doc)
    gw.stop()
    # The server got the gateway's key on every request, never the caller's token.
    requests = [ev for ev in server.log() if ev.get("ev") == "request"]
    assert requests and {ev["headers"].get("authorization") for ev in requests} == {f"Bearer {UPSTREAM_KEY}"}
    assert token not in json.dumps(server.log())
    s = assert_log_complete(json.loads(show(gw.store_dir, "--json")), server,
                            "streamable-http" if transport == "streamable-http" else "http+sse")
    assert s["session_id"] == doc["session_id"]
    text = show(gw.store_dir)
    assert_show_text(text)
    assert "who       alice" in text and "[test-tools]" in text
    if transport == "streamable-http":
        # The SDK opens the GET stream after initialize; the DELETE ends the session.
        assert any(ev.get("method") == "GET" for ev in requests)
        assert f"MCP session {doc['session_id']} (Streamable HTTP)" in text
        assert [e["text"] for e in s["log"] if e["kind"] == "end" and "DELETE" in e["text"]] == [
            "the client ended the MCP session (DELETE) -> 200"]
    else:
        # Every POST got 202; every reply came on the GET /sse stream, paired all the same.
        assert {e["answer_stream"] for e in s["log"] if e["kind"] == "request" and e["sender"] == "client"} == {"get"}
        assert f"MCP session {doc['session_id']} (HTTP+SSE)" in text
    assert_masked(gw.store_dir, text)
    stored = store_bytes(gw.store_dir)
    assert UPSTREAM_KEY.encode() not in stored and token.encode() not in stored
    verify = gw.verify_cli()
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_a_refused_mcp_request_gets_a_json_rpc_error_that_says_what_to_do(start_gateway, mcp_server, idp, tmp_path):
    server = mcp_server("streamable-http")
    config = {"identity": {"mode": "jwt", "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": idp.jwks_url}}
    gw = start_gateway(upstream_url=server.base_url, config=config)
    init = {"jsonrpc": "2.0", "id": 0, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "c", "version": "1"}}}
    with httpx.Client(trust_env=False, timeout=30) as client:
        refused = client.post(gw.reverse_url + "/mcp", json=init,
                              headers={"Accept": "application/json, text/event-stream"})
        llm = client.post(gw.reverse_url + "/v1/chat/completions", json={"model": "m", "messages": []})
    assert refused.status_code == 401
    body = refused.json()
    assert body["jsonrpc"] == "2.0" and body["id"] is None and body["error"]["code"] == -32000
    assert body["error"]["message"].startswith("wiretrail: ") and "token" in body["error"]["message"]
    challenge = refused.headers["www-authenticate"]
    assert challenge.startswith('Bearer realm="wiretrail", error="invalid_token", error_description="wiretrail: ')
    assert "error" in llm.json() and "jsonrpc" not in llm.json()  # an LLM API keeps its SDK's shape
    # The SDK client fails at once with the status, and nothing reached the server.
    doc = mcp_sdk.run_client("streamable-http", gw.reverse_url + "/mcp", steps="list_tools", timeout=60)
    assert doc["returncode"] == 2 and "401" in doc["fatal"] + doc.get("traceback", ""), json.dumps(doc)[:3000]
    assert not [ev for ev in server.log() if ev.get("ev") == "request"]


def test_a_gateway_killed_mid_call_leaves_a_readable_log(start_gateway, mcp_server):
    server = mcp_server("streamable-http")
    gw = start_gateway(upstream_url=server.base_url, config={"capture": {"chunk_interval": 0.05}})
    with mcp_sdk.client_running("streamable-http", gw.reverse_url + "/mcp", steps="read_secret,long_count",
                                env=mcp_sdk.clean_env(MCP_TEST_STEP_TIMEOUT="10")) as client:
        assert mcp_sdk.wait_for(lambda: len(progress_sent(server)) >= 10), server.stderr()
        gw.stop(signal.SIGKILL)
        doc = mcp_sdk.finish(client)
    assert SECRET in mcp_sdk.tool_text(doc, "read_secret")
    # The unsealed file reads: the log has every request that reached the server, the answered
    # call masked, the cut call's progress up to the kill and no answer, the GET stream no end.
    text = show(gw.store_dir)
    assert "unsealed" in text
    doc_json = json.loads(show(gw.store_dir, "--json"))
    (s,) = doc_json["mcp"]
    received = [m for m in server.received() if "method" in m and m.get("id") is not None]
    logged = [e for e in s["log"] if e["kind"] == "request" and e["sender"] == "client"]
    assert sorted((m["method"], json.dumps(m["id"])) for m in received) == \
        sorted((e["method"], json.dumps(e["id"])) for e in logged)
    cut = next(e for e in logged if e.get("tool") == "count")
    assert not cut["answered"]
    recorded = [p["progress"] for p in cut["progress"]]
    sent = progress_sent(server)
    assert len(recorded) >= 5 and recorded == sent[:len(recorded)], (recorded, sent)
    assert f'tool call count [{cut["id"]}] {{"n": 40}}\n' in text and "no answer in the record" in text
    assert re.search(r"the client opened the GET stream \[\d+\]: no (response and no )?end in the record", text)
    assert "the deploy token is [MASKED:github-pat:" in text
    assert_masked(gw.store_dir, text)


@pytest.mark.parametrize("transport", ["streamable-http", "sse"])
def test_a_recorded_mcp_session_replays_against_a_second_server(start_gateway, mcp_server, test_ca, transport):
    first = mcp_server(transport, name="first")
    gw = start_gateway(upstream_url=first.base_url)
    doc = mcp_sdk.run_client(transport, gw.reverse_url + first.path, steps=ALL_STEPS)
    run_ok(doc)
    gw.stop()
    second = mcp_server(transport, name="second")
    proc = subprocess.run([sys.executable, str(REPLAY), str(only_session(gw.store_dir)), "--target", second.base_url,
                           "--ca", str(test_ca.cert_path), "--json", "--timeout", "30"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    (r,) = report["mcp"]
    assert r["error"] is None and r["new_session_id"] and r["new_session_id"] != doc["session_id"]
    assert report["flows"] == []  # no MCP exchange was resent on its own (with a stale session id)
    different = [c for c in r["calls"] if not c["same"]]
    assert not different, different
    calls = {c["tool"]: c for c in r["calls"] if c["tool"]}
    assert calls["read_secret"]["masked_spans"] >= 1  # the recorded secret is masked: counted, not compared
    assert calls["explode"]["live"]["result"]["isError"] is True
    assert "42 is the answer" in json.dumps(calls["ask_model"]["live"])
    # Ground truth: the second server received the same requests, and the recorded sampling answer.
    def requests_of(server):
        return sorted((m["method"], json.dumps(m.get("id")), json.dumps((m.get("params") or {}).get("name")))
                      for m in server.received() if "method" in m and m.get("id") is not None)
    assert requests_of(second) == requests_of(first)
    answers = [m for m in second.received() if "result" in m and "model" in json.dumps(m["result"])]
    assert [a["result"]["content"]["text"] for a in answers] == ["42 is the answer to what is six times seven"]
    assert any(text.startswith("sampling/createMessage") and "recorded answer" in text for text in r["server_requests"])
    assert SECRET not in proc.stdout + proc.stderr


def test_a_reply_stream_resumed_with_last_event_id_reads_as_one_call(start_gateway, mcp_server):
    server = mcp_server("streamable-http", resumable=True)
    gw = start_gateway(upstream_url=server.base_url, config={"capture": {"chunk_interval": 0.05}})
    doc = mcp_sdk.run_client("streamable-http", gw.reverse_url + "/mcp", steps="resumable,read_secret")
    run_ok(doc)
    assert mcp_sdk.tool_text(doc, "resumable") == "finished after a resumption"
    gw.stop()
    # Ground truth: the client resumed the call's stream with a GET and Last-Event-ID.
    resumed = [ev for ev in server.log() if ev.get("ev") == "request" and ev["method"] == "GET"
               and ev["headers"].get("last-event-id")]
    assert resumed, [ev for ev in server.log() if ev.get("ev") == "request"]
    doc_json = json.loads(show(gw.store_dir, "--json"))
    (s,) = doc_json["mcp"]
    (call,) = [e for e in s["log"] if e.get("tool") == "resumable"]
    assert call["answered"] and call["answer_stream"] == "get"
    assert call["result"]["content"][0]["text"] == "finished after a resumption"
    assert [p["message"] for p in call["progress"]] == ["before the stream was closed", "after the stream was closed"]
    assert s["duplicates_dropped"] == 0 and not [e for e in s["log"] if e["kind"] in ("unpaired", "transport")]
    text = show(gw.store_dir)
    assert "tool call resumable [1] {}" in text and "on the GET stream)" in text
    assert "result: finished after a resumption" in text


def progress_sent(server: mcp_sdk.McpServer) -> list:
    return [m["params"]["progress"] for m in server.sent()
            if m.get("method") == "notifications/progress" and m["params"].get("total") == 40]


@pytest.fixture
def idp():
    with LocalIdP() as server:
        yield server


def stdio_config(tmp_path, idp, store=None) -> os.PathLike:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f"""
[storage]
dir = "{store or tmp_path / 'store'}"

[identity]
mode = "jwt"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
jwks_url = "{idp.jwks_url}"
""")
    return cfg


def stdio_server_command(tmp_path, log_name: str = "stdio-server") -> tuple[list[str], object]:
    log = tmp_path / f"{log_name}.log.jsonl"
    return [str(mcp_sdk.python()), str(mcp_sdk.SERVER_APP), "--transport", "stdio", "--log", str(log)], log


def test_stdio_through_mcp_stdio_is_recorded_under_the_callers_identity(tmp_path, idp, sdk_python):
    cfg = stdio_config(tmp_path, idp)
    server_cmd, log = stdio_server_command(tmp_path)
    wrapper = [str(WIRETRAIL), "mcp-stdio", "--config", str(cfg), "--name", "test-tools", "--", *server_cmd]
    env = mcp_sdk.clean_env(WIRETRAIL_TOKEN=idp.token("alice"), MCP_TEST_SECRET=SECRET)
    doc = mcp_sdk.run_client("stdio", command=wrapper, env=env, steps=ALL_STEPS)
    run_ok(doc)
    store = tmp_path / "store"
    server = mcp_sdk.McpServer(tmp_path, None, "stdio")
    server.log_path = log
    s = assert_log_complete(json.loads(show(store, "--json")), server, "stdio")
    assert s["stdio"]["command"][-1] == str(log)
    assert s["log"][-1]["kind"] == "end"
    text = show(store)
    assert_show_text(text)
    assert "(stdio (wiretrail mcp-stdio))" in text and "[test-tools]" in text
    assert "who       alice" in text
    assert_masked(store, text)
    verify = subprocess.run([str(WIRETRAIL), "verify", str(store)], capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_mcp_stdio_fails_closed_when_a_message_cannot_be_recorded(tmp_path, idp, sdk_python):
    with small_tmpfs(tmp_path) as mnt:
        cfg = stdio_config(tmp_path, idp, store=mnt / "store")
        server_cmd, log = stdio_server_command(tmp_path)
        gate = tmp_path / "go"
        wrapper = [str(WIRETRAIL), "mcp-stdio", "--config", str(cfg), "--", *server_cmd]
        env = mcp_sdk.clean_env(WIRETRAIL_TOKEN=idp.token("alice"), MCP_TEST_SECRET=SECRET, MCP_TEST_GATE=str(gate),
                                MCP_TEST_STEP_TIMEOUT="20")
        with mcp_sdk.client_running("stdio", command=wrapper, env=env, steps="read_secret,gate,big") as client:
            assert mcp_sdk.wait_for(lambda: "deploy token" in json.dumps(server_log(log)))
            filler = fill(mnt)
            gate.touch()
            doc = mcp_sdk.finish(client)
        err = doc["stderr"]
        assert SECRET in mcp_sdk.tool_text(doc, "read_secret")
        # The call that could not be recorded never reached the server; the client was told why.
        big = mcp_sdk.step(doc, "big")
        assert not big["ok"] and "could not record this MCP message" in big["error"], big
        received = [m.get("params", {}).get("name") for m in mcp_sdk.messages_received(server_log(log))
                    if m.get("method") == "tools/call"]
        assert received == ["read_secret"]
        assert "cannot record" in err
        filler.unlink()
        assert b"must-not-arrive" not in store_bytes(mnt / "store")


def server_log(path) -> list[dict]:
    return mcp_sdk.read_log(path)


def test_mcp_stdio_without_a_token_does_not_start_the_server(tmp_path, idp, sdk_python):
    cfg = stdio_config(tmp_path, idp)
    server_cmd, log = stdio_server_command(tmp_path)
    wrapper = [str(WIRETRAIL), "mcp-stdio", "--config", str(cfg), "--", *server_cmd]
    doc = mcp_sdk.run_client("stdio", command=wrapper, env=mcp_sdk.clean_env(), steps="list_tools", timeout=60)
    # The client is told why, in its own protocol, and the server never ran.
    assert "WIRETRAIL_TOKEN" in json.dumps(doc), json.dumps(doc)[:3000]
    assert not log.exists()
    assert not list((tmp_path / "store").rglob("*.jsonl.zst")) if (tmp_path / "store").exists() else True


def test_mcp_stdio_with_an_unusable_store_does_not_start_the_server(tmp_path, idp, sdk_python):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    cfg = stdio_config(tmp_path, idp, store=blocker / "store")
    server_cmd, log = stdio_server_command(tmp_path)
    wrapper = [str(WIRETRAIL), "mcp-stdio", "--config", str(cfg), "--", *server_cmd]
    doc = mcp_sdk.run_client("stdio", command=wrapper, env=mcp_sdk.clean_env(WIRETRAIL_TOKEN=idp.token("alice")),
                             steps="list_tools", timeout=60)
    assert "cannot record" in json.dumps(doc) and "was not started" in json.dumps(doc), json.dumps(doc)[:3000]
    assert not log.exists()
