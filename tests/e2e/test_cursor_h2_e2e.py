"""Cursor's agent over HTTP/2 through the gateway: agent.v1.AgentService/Run as one
bidirectional Connect stream, on the real h2 client and upstream of tests/support (h2_client,
h2_upstream), with the `cursor` preset and the fake Cursor backend of tests/support/cursor_backend.py.

Each side waits for the other's message before it sends its next one (the client sends its tool
result only after it got the tool request), so a gateway that buffered either direction would
stall the conversation and the test fails at its deadline. Envelopes are gzip-compressed both
ways, one is split over two DATA frames, two share one frame; the backend's log is the truth.
"""
from __future__ import annotations

import queue
import time

import pytest

from tests.e2e.test_cursor_e2e import CURSOR_TOKEN, PASTED, TOOL_SECRET, cursor_gateway, mimic, show, stop_and_check, token  # noqa: F401
from tests.support.artifacts import header, store_bytes
from tests.support.checks import assert_in_order
from tests.support.cursor_backend import CursorBackend, play_client
from tests.support.cursor_fixture import (
    DELTAS_1, DELTAS_2, EXEC_ID, FILE_PATH, RUN, Conversation, conversation, envelope, gz_envelope,
)

pytestmark = pytest.mark.e2e


def h2_stream(gw, h2up, conv: Conversation, mimic, *, gzip_client: bool = True):
    """Open the Run stream through the gateway and play the client's part. The prompt's envelope
    goes in two DATA frames, the tool result and the heartbeat in one."""
    from tests.support.h2_client import H2Client

    client = H2Client(gw.proxy_port, ("agent.api5.cursor.sh", h2up.port), gw.ca_path, proxy_auth=f"alice:{token()}")
    headers = [("content-type", "application/connect+proto"), ("connect-protocol-version", "1"),
               ("connect-accept-encoding", "gzip,br,snappy"), ("authorization", f"Bearer {CURSOR_TOKEN}"),
               ("user-agent", "connect-es/1.6.1")]
    if gzip_client:
        headers.append(("connect-content-encoding", "gzip"))
    reply = client.request("POST", RUN, headers=headers, end=False)
    held: list[bytes] = []

    def frame(i: int) -> bytes:
        return gz_envelope(conv.client[i]) if gzip_client else envelope(conv.client[i])

    def send(i: int) -> None:
        if i == 0:
            data = frame(0)
            client.send(reply.stream_id, data[:9])
            time.sleep(0.05)
            client.send(reply.stream_id, data[9:])
        elif i == 1:
            held.append(frame(1))  # goes with the next one, in one DATA frame
        else:
            client.send(reply.stream_id, b"".join(held) + frame(i))
            held.clear()

    def recv_chunk(timeout: float):
        deadline = time.monotonic() + timeout
        while True:
            try:
                kind, value = reply.next(max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                return None
            if kind == "data":
                return value
            if kind != "headers":
                return None

    got, problems = play_client(conv, send, recv_chunk, before_end=lambda: client.finish(reply.stream_id))
    reply.wait(15)
    client.close()
    return reply, got, problems


@pytest.fixture
def h2_backend(test_ca):
    from tests.support.h2_upstream import H2Upstream

    up = H2Upstream(test_ca).start()
    yield up
    up.stop()


@pytest.mark.parametrize("cursor_gateway", ["thread", "process"], indirect=True)  # storage.writer
def test_h2_bidi_connect_stream_flows_both_ways_and_is_recorded(cursor_gateway, h2_backend, mimic):
    gw = cursor_gateway
    conv = conversation(mimic, PASTED, tool_secret=TOOL_SECRET)
    backend = CursorBackend(mimic, conv, gzip_server=True)
    h2_backend.route(RUN, backend.h2_run)
    reply, got, problems = h2_stream(gw, h2_backend, conv, mimic)
    assert problems == [], problems  # a gateway that buffered either direction would time out here
    assert backend.finished.wait(10) and backend.errors == [], backend.errors
    assert backend.received == conv.client and got[:-1] == conv.server and got[-1] == {}
    assert reply.status == 200 and reply.header("connect-content-encoding") == "gzip"
    assert header(backend.request_headers, "authorization") == f"Bearer {CURSOR_TOKEN}"
    assert header(backend.request_headers, "connect-accept-encoding") == "gzip,br"  # only what can be recorded

    sessions = stop_and_check(gw)
    data = store_bytes(gw.store_dir)
    assert PASTED.encode() not in data and CURSOR_TOKEN.encode() not in data and b"[MASKED:github-pat:" in data
    assert TOOL_SECRET.encode() not in data and b"[MASKED:anthropic:" in data  # returned by the tool
    session = sessions["alice"]
    (flow,) = {r["flow"] for r in session.records if r["t"] == "http.request"}
    chunks = [r for r in session.records if r.get("flow") == flow and r["t"] == "http.chunk"]
    req = [c for c in chunks if c["dir"] == "request"]
    resp = [c for c in chunks if c["dir"] == "response"]
    # recorded beside the streams: text went back while the request was still open
    assert min(c["seq"] for c in resp) < max(c["seq"] for c in req)
    client_msgs = [m for c in req for m in c["body"]["messages"]]
    server_msgs = [m for c in resp for m in c["body"]["messages"]]
    assert [m["n"] for m in client_msgs] == [0, 1, 2] and all(m["compressed"] == "gzip" for m in client_msgs)
    assert [m["n"] for m in server_msgs] == list(range(len(conv.server) + 1))
    assert server_msgs[-1]["end"] == {} and all(m.get("compressed") == "gzip" for m in server_msgs[:-1])
    # and with when each message reached the gateway: the interleaving as it happened
    tool_call, tool_result, more_text = server_msgs[3]["at"], client_msgs[1]["at"], server_msgs[4]["at"]
    assert client_msgs[0]["at"] < server_msgs[0]["at"] and tool_call < tool_result < more_text

    out = show(session.path)
    assert_in_order(out, "Run -> 200  (cursor.agent, claude-4-sonnet, streamed)  [cursor]",
             "user: Why does src/app.py crash? My key is [MASKED:github-pat:",
             "> assistant: " + "".join(DELTAS_1),
             f"> assistant tool call exec field 2.2 [{EXEC_ID}]: 2.2.1: {FILE_PATH}",
             f"> tool result exec field 2.2 [{EXEC_ID}]: 2.2.1: import os",
             "> assistant: " + "".join(DELTAS_2), f"note: files: {FILE_PATH}")
    assert PASTED not in out and TOOL_SECRET not in out and 'ANTHROPIC_API_KEY = "[MASKED:anthropic:' in out


def test_h2_end_of_stream_error_reaches_the_client_and_the_record(cursor_gateway, h2_backend, mimic):
    conv = conversation(mimic, "no secret here")
    error = {"code": "resource_exhausted", "message": "You have reached your usage limit"}
    backend = CursorBackend(mimic, conv, end_error=error)
    h2_backend.route(RUN, backend.h2_run)
    _reply, got, problems = h2_stream(cursor_gateway, h2_backend, conv, mimic, gzip_client=False)
    assert problems == [] and got[-1] == {"error": error}
    sessions = stop_and_check(cursor_gateway)
    session = sessions["alice"]
    ends = [m for r in session.records if r["t"] == "http.chunk" for m in r["body"]["messages"] if "end" in m]
    assert ends == [ends[0]] and ends[0]["end"] == {"error": error} and ends[0]["flags"] == 2
    assert "note: end of stream: error resource_exhausted: You have reached your usage limit" in show(session.path)
