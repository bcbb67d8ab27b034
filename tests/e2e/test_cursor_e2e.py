"""Cursor through the gateway, end to end: `[[connections]] preset = "cursor"`, a real
mitmdump, a fake Cursor backend on real TLS (its names sent to 127.0.0.1 by a test-only
stand-in for DNS, tests/support/dns_override.py) and clients that play one agent
conversation in Cursor's shape, each side waiting for the other (tests/support/cursor_backend.py).

The backend's own log of what it received is the ground truth: the conversation goes through
unchanged and in order, every message is on the record, masked (a secret pasted into the
prompt is nowhere in the artifact), and `wiretrail show` reads it as a conversation.
"""
from __future__ import annotations

import gzip
import queue
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from recorder.auth.identity import mint_dev_token
from tests.support.artifacts import header, store_bytes
from tests.support.checks import assert_in_order
from tests.support.clients import trust
from tests.support.cursor_backend import CursorBackend, play_client
from tests.support.cursor_fixture import (
    BIDI_APPEND, DELTAS_1, DELTAS_2, EXEC_ID, FILE_PATH, RUN_SSE, bidi_append, compile_mimic, conversation, envelope,
    run_sse_request,
)
from tests.support.gateway import WIRETRAIL

pytestmark = pytest.mark.e2e

DNS_OVERRIDE = Path(__file__).resolve().parents[1] / "support" / "dns_override.py"
DEV_SECRET = "cursor-e2e-" + "d" * 40
PASTED = "ghp_" + "Zk3mQ9" * 6  # a GitHub token the user pasted into the prompt
TOOL_SECRET = "sk-ant-api03-" + "Qm7xV2pL9tR4" * 4  # in a file Cursor's read_file tool returns
CURSOR_TOKEN = "cursor-session-" + "c0ffee" * 8  # Cursor's own bearer token: the user's Cursor account


@pytest.fixture(scope="module")
def mimic(tmp_path_factory):
    return compile_mimic(tmp_path_factory.mktemp("mimic"))


def token() -> str:
    return mint_dev_token(DEV_SECRET, sub="alice", groups=["engineering"], issuer="wt-test", audience="wiretrail")


@pytest.fixture
def cursor_gateway(request, start_gateway, tmp_path, monkeypatch):
    """The gateway with the cursor preset; indirect parameter: storage.writer ("thread" by default)."""
    monkeypatch.setenv("WIRETRAIL_TEST_RESOLVE", "*.cursor.sh=127.0.0.1")
    (tmp_path / "dev.secret").write_text(DEV_SECRET)
    gw = start_gateway(
        config={"identity": {"mode": "jwt", "issuer": "wt-test", "audience": "wiretrail",
                             "hs256_secret": f"file:{tmp_path / 'dev.secret'}"},
                "policy": {"unregistered": "deny"},  # only the preset's hosts get through
                "capture": {"chunk_interval": 0.05},
                "storage": {"writer": getattr(request, "param", "thread")}},
        extra_toml='\n[[connections]]\npreset = "cursor"\n',
        extra_args=("-s", str(DNS_OVERRIDE)))
    gw.upstream = None  # requests name Cursor's hosts, not the fake's address: checked here instead
    return gw


def stop_and_check(gw):
    """Stop the gateway; every session closed cleanly, and `wiretrail verify` passes. The
    sessions of authenticated users, by user."""
    assert gw.stop() == 0
    art = gw.artifacts()
    for s in art.sessions:
        assert not s.problems and s.state == "closed", (s.path, [str(p) for p in s.problems], s.state)
    res = gw.verify_cli()
    assert res.returncode == 0, res.stdout + res.stderr
    return {s.records[0]["identity"]["sub"]: s for s in art.sessions if s.records[0]["identity"].get("authenticated")}


def show(path: Path, *args: str) -> str:
    out = subprocess.run([str(WIRETRAIL), "show", str(path), "--color", "never", *args], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout



def chunk_reader(resp: httpx.Response):
    """recv(timeout) over a streamed response, read on a thread of its own. `recv.thread` must
    be joined before the response is closed: a read after the close would take the first bytes
    (a TLS record header) of whatever file or socket gets its descriptor number next."""
    q: queue.Queue = queue.Queue()

    def read():
        try:
            for chunk in resp.iter_raw():
                q.put(chunk)
        except httpx.HTTPError as e:
            q.put(e)
        q.put(None)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()

    def recv(timeout: float):
        try:
            item = q.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, Exception):
            raise item
        return item

    recv.thread = thread
    return recv


def test_http1_fallback_is_recorded_as_one_conversation(cursor_gateway, upstream, mimic):
    """cursor.general.disableHttp2: the RunSSE stream plus one BidiAppend post per client
    message, over HTTP/1.1, recorded and joined into one conversation."""
    gw = cursor_gateway
    conv = conversation(mimic, PASTED, tool_secret=TOOL_SECRET)
    backend = CursorBackend(mimic, conv)
    upstream.routes[RUN_SSE] = backend.run_sse
    upstream.routes[BIDI_APPEND] = backend.bidi_append
    base = f"https://api2.cursor.sh:{upstream.port}"
    request_id = "req-e2e-5c1d2e3f"
    proxy = f"http://alice:{token()}@127.0.0.1:{gw.proxy_port}"
    cursor_headers = {"authorization": f"Bearer {CURSOR_TOKEN}", "connect-protocol-version": "1"}
    with httpx.Client(proxy=proxy, verify=trust(gw), trust_env=False, timeout=30) as stream_client, \
            httpx.Client(proxy=proxy, verify=trust(gw), trust_env=False, timeout=30) as posts:
        seqno = iter(range(1000))

        def send(i: int) -> None:
            body = bidi_append(mimic, conv.client[i], request_id, next(seqno))
            r = posts.post(base + BIDI_APPEND, content=gzip.compress(body),
                           headers={**cursor_headers, "content-type": "application/proto", "content-encoding": "gzip"})
            assert r.status_code == 200, r.text

        with stream_client.stream("POST", base + RUN_SSE, content=envelope(run_sse_request(mimic, request_id)),
                                  headers={**cursor_headers, "content-type": "application/connect+proto"}) as resp:
            assert resp.status_code == 200
            reader = chunk_reader(resp)
            got, problems = play_client(conv, send, reader)
            reader.thread.join(10)  # the reply has ended: its reader is done before the response closes
            assert not reader.thread.is_alive(), "the RunSSE reply did not end"
    assert problems == [] and backend.finished.wait(10) and backend.errors == []
    assert backend.received == conv.client  # every client message reached the backend unchanged, in order
    assert got[:-1] == conv.server and got[-1] == {}  # and every server message the client
    assert len(backend.appends) == 3 and all(a["request_id"] == request_id for a in backend.appends)
    assert header(backend.request_headers, "authorization") == f"Bearer {CURSOR_TOKEN}"  # record only: it passes
    assert header(backend.request_headers, "proxy-authorization") is None

    # someone without an identity token gets nothing through
    with httpx.Client(proxy=f"http://127.0.0.1:{gw.proxy_port}", verify=trust(gw), trust_env=False, timeout=10) as anon:
        with pytest.raises(httpx.ProxyError, match="407"):
            anon.post(base + BIDI_APPEND, content=b"")
    assert len(backend.appends) == 3

    sessions = stop_and_check(gw)
    data = store_bytes(gw.store_dir)
    assert PASTED.encode() not in data and CURSOR_TOKEN.encode() not in data and TOOL_SECRET.encode() not in data
    assert b"[MASKED:github-pat:" in data and b'"authorization","[MASKED:authorization:' in data
    assert b"[MASKED:anthropic:" in data  # the secret the tool returned, masked inside the tool result
    session = sessions["alice"]
    flows = {}
    for rec in session.records:
        if isinstance(rec.get("flow"), str) and rec["t"] == "http.request":
            flows[rec["flow"]] = rec["url"]
    assert sorted(u.rsplit("/", 1)[-1] for u in flows.values()) == ["BidiAppend"] * 3 + ["RunSSE"]
    assert all(r.get("connection") == "cursor" for r in session.records if r["t"] == "http.request")
    # the record keeps the interleaving: the text after the tool result is recorded after the post
    # that carried the result (the backend sends it only once it has the result)
    run = next(f for f, u in flows.items() if u.endswith(RUN_SSE))
    posts = [r["seq"] for r in session.records if r["t"] == "http.request" and r["flow"] != run]
    run_chunks = [r["seq"] for r in session.records if r["t"] == "http.chunk" and r["flow"] == run]
    assert len(posts) == 3 and any(seq > posts[1] for seq in run_chunks), (posts, run_chunks)
    for secret in (PASTED, TOOL_SECRET):  # nor hex-encoded, as BidiAppend carries messages
        assert secret.encode().hex().encode() not in data

    out = show(session.path)
    assert_in_order(out, "RunSSE -> 200  (cursor.agent, claude-4-sonnet, streamed)  [cursor]",
             "user: Why does src/app.py crash? My key is [MASKED:github-pat:",
             "> assistant: " + "".join(DELTAS_1),
             f"> assistant tool call exec field 2.2 [{EXEC_ID}]: 2.2.1: {FILE_PATH}",
             f"> tool result exec field 2.2 [{EXEC_ID}]: 2.2.1: import os",
             "> assistant: " + "".join(DELTAS_2),
             "note: HTTP/1.1 fallback: 3 BidiAppend post(s) joined to this RunSSE stream by their request id "
             + request_id)
    assert "BidiAppend -> 200" not in out  # the posts are inside the conversation, not apart
    assert PASTED not in out and TOOL_SECRET not in out and 'ANTHROPIC_API_KEY = "[MASKED:anthropic:' in out


def test_a_message_encoding_the_recorder_cannot_undo_is_refused(cursor_gateway, upstream, mimic):
    backend = CursorBackend(mimic, conversation(mimic, PASTED))
    upstream.routes[RUN_SSE] = backend.run_sse
    proxy = f"http://alice:{token()}@127.0.0.1:{cursor_gateway.proxy_port}"
    with httpx.Client(proxy=proxy, verify=trust(cursor_gateway), trust_env=False, timeout=30) as client:
        r = client.post(f"https://api2.cursor.sh:{upstream.port}{RUN_SSE}",
                        content=envelope(run_sse_request(mimic, "req-1"), 0x01),
                        headers={"content-type": "application/connect+proto", "connect-content-encoding": "snappy"})
    assert r.status_code == 415 and "snappy" in r.text
    assert not [e for e in upstream.exchanges if e.path == RUN_SSE]  # nothing reached the backend
    sessions = stop_and_check(cursor_gateway)
    refused = [r for r in sessions["alice"].records if r["t"] == "auth.refused"]
    assert refused and refused[0]["reason"] == "cannot_record" and refused[0]["status"] == 415
