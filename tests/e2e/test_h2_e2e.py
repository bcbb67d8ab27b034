"""End to end over HTTP/2: a real h2 client, a real mitmdump, a real h2 TLS upstream
(tests/support/h2_upstream.py), whose own log is the ground truth.

Several streams multiplexed on one connection are recorded as HTTP/1.1 exchanges are; a
request body streams while its response streams back (bidirectional, as gRPC and Connect
clients do) and both directions are recorded as they flow; trailers in both directions
are recorded and a client's credentials in them never reach the upstream; an upstream's
RST_STREAM is recorded as the server's.
"""
from __future__ import annotations

import json
import time

import h2.errors
import pytest

from tests.support.artifacts import header, store_bytes
from tests.support.checks import finish
from tests.support.clients import new_test_id
from tests.support.h2_client import H2Client
from tests.support.h2_upstream import H2Upstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

UPSTREAM_KEY = "sk-upstream-" + "G4t3w4yH0ldsTh1sK3y0123456789abcd"
CLIENT_KEY = "sk-proj-" + "Cl13ntOwnK3yNeverUpstream0123456789ab"


@pytest.fixture
def h2_upstream(test_ca):
    up = H2Upstream(test_ca).start()
    yield up
    up.stop()


@pytest.fixture
def h2_gateway(start_gateway, h2_upstream):
    gw = start_gateway(config={"capture": {"chunk_interval": 0.05}}, upstream_url=h2_upstream.base_url)
    gw.upstream = None
    return gw


def injecting_toml(h2_upstream, key_file) -> str:
    return f"""
[[connections]]
name = "h2-llm"
hosts = ["127.0.0.1"]
ports = [{h2_upstream.port}]
credential = "file:{key_file}"
inject = "bearer"
"""


def h2_client(gw, up) -> H2Client:
    return H2Client(gw.proxy_port, ("127.0.0.1", up.port), gw.ca_path)


def test_multiplexed_streams_on_one_connection_are_each_recorded(h2_gateway, h2_upstream):
    """Six streams in flight at once on one client connection: bodies sent interleaved, buffered
    and streamed requests, JSON and SSE replies."""
    gw, up = h2_gateway, h2_upstream
    ids = [new_test_id() for _ in range(6)]
    bodies = {tid: f"body {i} ✓ ".encode() * 40 for i, tid in enumerate(ids)}
    with h2_client(gw, up) as c:
        replies = {}
        for i, tid in enumerate(ids):
            headers = [("x-test-id", tid), ("content-type", "text/plain")]
            if i % 3 == 0:  # a Content-Length under the threshold: buffered
                headers.append(("content-length", str(len(bodies[tid]))))
            path = "/sse?n=4&delay=0.05" if i % 2 else "/echo"
            replies[tid] = c.request("POST", path, headers, body=bodies[tid][:100], end=False)
        for tid, r in replies.items():  # the rest of every body, after all streams are open
            c.send(r.stream_id, bodies[tid][100:], end=True)
        for r in replies.values():
            r.wait(20)
    art = finish(gw)
    assert up.connections == 1, "the gateway used more than one upstream connection"
    assert {up.stream(tid).conn for tid in ids} == {0}
    assert len({art.flow(tid).request["conn"] for tid in ids}) == 1
    for tid, reply in replies.items():
        st, flow = up.stream(tid), art.flow(tid)
        assert st.complete and st.body == bodies[tid]
        assert reply.status == 200 and reply.ended
        assert flow.request["http_version"] == "HTTP/2.0" and flow.request["method"] == "POST"
        assert flow.request["url"] == up.base_url + st.header(":path")
        assert flow.body("request") == st.body
        assert flow.body("response") == reply.body == b"".join(c for _, c in st.sent)
        assert flow.response["status"] == 200 and flow.end is not None and not flow.errors


def test_bidirectional_stream_flows_both_ways_and_is_recorded_as_it_flows(h2_gateway, h2_upstream):
    """The client sends its next message only after it got the server's answer to the last: a
    proxy that buffered either direction would deadlock here (each wait has a deadline)."""
    gw, up = h2_gateway, h2_upstream
    tid = new_test_id()
    messages = [f"message {i} ✓".encode() for i in range(4)]
    with h2_client(gw, up) as c:
        r = c.request("POST", "/bidi", [("x-test-id", tid), ("content-type", "application/connect+json")],
                      body=messages[0], end=False)
        kind, headers = r.next(timeout=10)
        assert kind == "headers" and r.status == 200, (kind, headers)
        for i, msg in enumerate(messages):
            kind, data = r.next(timeout=10)
            assert (kind, data) == ("data", b"echo:" + msg), f"answer {i}: {kind} {data!r}"
            if i + 1 < len(messages):
                st = up.stream(tid, done=False)
                assert not st.complete, "the upstream has the end of a request the client has not ended"
                time.sleep(0.15)  # the client thinks for longer than a chunk_interval: each message is a batch
                c.send(r.stream_id, messages[i + 1])
        c.finish(r.stream_id)
        r.wait(10)
        assert r.body == b"".join(b"echo:" + m for m in messages) + b"end"
    st = up.stream(tid)
    assert st.complete and st.body == b"".join(messages)
    # The upstream answered each message before the client sent the next one.
    for i in range(1, len(messages)):
        assert st.sent[i - 1][0] <= st.chunks[i][0], f"message {i} arrived before the answer to {i - 1} left"
    art = finish(gw)
    flow = art.flow(tid)
    assert flow.request["streamed"] is True and flow.response["streamed"] is True
    assert flow.body("request") == st.body and flow.body("response") == r.body
    req_chunks = [c for c in flow.chunks("request") if c["body"]["size"]]
    resp_chunks = [c for c in flow.chunks("response") if c["body"]["size"]]
    assert len(req_chunks) >= len(messages) and len(resp_chunks) >= len(messages), flow.describe()
    # Recorded as it flowed: the request's chunks interleave with the reply's in the file.
    seqs = [(c["seq"], c["dir"]) for c in flow.of("http.chunk") if c["body"]["size"]]
    first_response = min(s for s, d in seqs if d == "response")
    assert any(d == "request" and s > first_response for s, d in seqs), seqs
    assert flow.end is not None and not flow.errors


def test_trailers_both_ways_are_recorded_and_credentials_in_them_never_go_upstream(
        start_gateway, h2_upstream, tmp_path):
    key_file = tmp_path / "upstream.key"
    key_file.write_text(UPSTREAM_KEY)
    gw = start_gateway(config={"capture": {"chunk_interval": 0.05}}, upstream_url=h2_upstream.base_url,
                       extra_toml=injecting_toml(h2_upstream, key_file))
    gw.upstream = None
    up = h2_upstream
    token = "id-token-" + "Zm9vYmFyYmF6cXV4MTIzNDU2Nzg5MA"
    smuggled = [("authorization", f"Bearer {CLIENT_KEY}"), ("proxy-authorization", f"Basic {token}"),
                ("x-api-key", CLIENT_KEY), ("api-key", CLIENT_KEY), ("x-goog-api-key", CLIENT_KEY),
                ("cookie", f"session={token}")]
    benign = [(f"x-note-{i}", "n" * 1000) for i in range(30)]
    reply_secret = "sk-ant-api03-" + "R3plyTr41l3rK3y" + "x" * 80
    ids = {}
    with h2_client(gw, up) as c:
        for how in ("buffered", "streamed"):  # Content-Length under the threshold is buffered
            tid = ids[how] = new_test_id()
            body = b'{"prompt": "hi"}'
            headers = [("x-test-id", tid), ("content-type", "application/json"),
                       ("x-reply-trailers", f"x-upstream-key={reply_secret}; grpc-status=0")]
            if how == "buffered":
                headers.append(("content-length", str(len(body))))
            r = c.request("POST", "/echo", headers, body=body, trailers=smuggled + benign).wait(15)
            assert r.status == 200 and r.body == body, (how, r)
            got = dict(r.trailers or ())
            assert got.get("x-upstream-key") == reply_secret  # forwarded to the client as sent
            assert got.get("grpc-status") == "0"
    for how, tid in ids.items():
        st = up.stream(tid)
        names = [k for k, _ in st.trailers or ()]
        # Ground truth: the upstream got the benign trailers and none of the client's credentials.
        assert names == [k for k, _ in benign], (how, names)
        assert all(CLIENT_KEY not in v and token not in v for _, v in st.headers + (st.trailers or [])), how
        assert header(st.headers, "authorization") == f"Bearer {UPSTREAM_KEY}"  # the injected one
    art = finish(gw)
    for how, tid in ids.items():
        flow = art.flow(tid)
        req_t = [t for t in flow.of("http.trailers") if t["dir"] == "request"]
        resp_t = [t for t in flow.of("http.trailers") if t["dir"] == "response"]
        assert len(req_t) == 1 and len(resp_t) == 1, flow.describe()
        assert [k for k, _ in req_t[0]["headers"]] == [k for k, _ in benign]
        assert req_t[0]["stripped"] == sorted(k for k, _ in smuggled)
        recorded = dict(resp_t[0]["headers"])
        assert recorded["grpc-status"] == "0" and recorded["x-upstream-key"].startswith("[MASKED:")
        # The request trailers are on disk before they went upstream (rule 2).
        assert req_t[0]["ts"] <= up.stream(tid).trailers_at
        types = [x["t"] for x in flow.records]
        assert types.index("http.trailers") < types.index("http.response") < types.index("http.end"), types
    stored = store_bytes(gw.store_dir)
    for secret in (CLIENT_KEY, token, reply_secret, UPSTREAM_KEY):
        assert secret.encode() not in stored


def test_request_trailers_reach_an_http1_upstream_as_chunked_trailers(gateway, upstream):
    """An h2 client, an HTTP/1.1 upstream: mitmproxy 11.0.2 sent such a streamed body with no
    framing (the upstream saw an empty request) and crashed on trailers."""
    tid = new_test_id()
    with H2Client(gateway.proxy_port, ("127.0.0.1", upstream.port), gateway.ca_path) as c:
        r = c.request("POST", "/echo", [("x-test-id", tid), ("content-type", "text/plain")], body=b"part one, ",
                      end=False)
        c.send(r.stream_id, b"part two")
        c.finish(r.stream_id, trailers=[("x-checksum", "abc123"), ("authorization", f"Bearer {CLIENT_KEY}")])
        r.wait(15)
        assert r.status == 200 and r.body == b"part one, part two"
    ex = upstream.exchange(tid)
    assert ex.body == b"part one, part two"
    assert ex.trailers == [("x-checksum", "abc123")]
    art = finish(gateway)
    flow = art.flow(tid)
    assert flow.body("request") == ex.body
    assert [t["headers"] for t in flow.of("http.trailers")] == [[["x-checksum", "abc123"]]]


def test_an_upstream_reset_is_recorded_as_the_servers(h2_gateway, h2_upstream):
    gw, up = h2_gateway, h2_upstream
    tid = new_test_id()
    with h2_client(gw, up) as c:
        r = c.request("GET", "/reset?after=2", [("x-test-id", tid)]).wait(15)
        assert r.reset is not None, r  # the client saw the stream reset, not a clean end
    st = up.stream(tid)
    assert st.reset_sent == h2.errors.ErrorCodes.INTERNAL_ERROR and st.reset_by_peer is None
    art = finish(gw)
    flow = art.flow(tid)
    errors = flow.errors
    assert len(errors) == 1, flow.describe()
    assert errors[0]["by"] == "server" and errors[0]["phase"] == "response", errors[0]
    assert "reset by server" in errors[0]["message"] and "client" not in errors[0]["message"], errors[0]
    assert flow.body("response") == b"".join(c for _, c in st.sent)


def test_a_client_reset_is_recorded_as_the_clients(h2_gateway, h2_upstream):
    gw, up = h2_gateway, h2_upstream
    tid = new_test_id()
    with h2_client(gw, up) as c:
        r = c.request("GET", "/sse?n=50&delay=0.1", [("x-test-id", tid)])
        assert r.next(10)[0] == "headers"
        assert r.next(10)[0] == "data"
        with c.lock:
            c.h2.reset_stream(r.stream_id, h2.errors.ErrorCodes.CANCEL)
            c._flush()
    st = up.stream(tid)
    assert st.reset_by_peer == h2.errors.ErrorCodes.CANCEL  # the gateway passed the reset on
    art = finish(gw)
    errors = art.flow(tid).errors
    assert len(errors) == 1 and errors[0]["by"] == "client" and errors[0]["phase"] == "client", errors
    assert json.dumps(errors[0]).count("server") == 0
