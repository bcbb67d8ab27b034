"""End to end: the timeouts of [timeouts] fire on a real mitmdump and are recorded.

Slow-header clients (one byte every second) are closed after timeouts.request_header, while
the gateway keeps serving others; an upstream that never answers gets the client a 504
after timeouts.upstream_response, and the upstream side is reset (its own log shows it); a
stream that stalls is ended after timeouts.idle, and an idle keep-alive connection closed.
"""
from __future__ import annotations

import socket
import threading
import time

import h2.errors
import pytest

from tests.e2e.test_integrity_e2e import freezable_fs  # noqa: F401 (a fixture)
from tests.support.artifacts import Artifacts
from tests.support.clients import httpx_client, new_test_id
from tests.support.h2_client import H2Client
from tests.support.h2_upstream import H2Upstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def timeouts(**t) -> dict:
    return {"timeouts": t, "capture": {"chunk_interval": 0.05}}


class SlowClient(threading.Thread):
    """Sends a request's headers one byte a second; notes when the gateway closed on it."""

    def __init__(self, port: int, head: bytes):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.head = head
        self.started = time.monotonic()
        self.closed_after: float | None = None
        self.sent = 0

    def run(self):
        self.sock.settimeout(1.0)
        try:
            for b in self.head:
                self.sock.sendall(bytes([b]))
                self.sent += 1
                try:
                    if self.sock.recv(1024) == b"":
                        break
                except socket.timeout:
                    continue
        except OSError:
            pass
        self.closed_after = time.monotonic() - self.started
        self.sock.close()


def test_slow_header_clients_are_closed_after_the_header_timeout(start_gateway, upstream):
    gw = start_gateway(config=timeouts(request_header=3))
    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nx-test-id: slow\r\ncontent-length: 2\r\n\r\n"  # ~60 s at 1 byte/s
    slow = [SlowClient(gw.reverse_port, head) for _ in range(20)]
    silent = socket.create_connection(("127.0.0.1", gw.proxy_port))  # connects and sends nothing
    silent_start = time.monotonic()
    for c in slow:
        c.start()
    with httpx_client(gw, "reverse") as client:  # the gateway serves others meanwhile
        for _ in range(3):
            assert client.post("/echo", content=b"ok", headers={"x-test-id": new_test_id()}).status_code == 200
    for c in slow:
        c.join(15)
        assert c.closed_after is not None and 2.5 <= c.closed_after <= 6, c.closed_after
        assert c.sent < len(head)
    silent.settimeout(8)
    assert silent.recv(1) == b""  # closed, counted from its connect
    assert 2.5 <= time.monotonic() - silent_start <= 8
    assert upstream.started("slow") == []
    assert gw.stop() == 0
    errors = [r for r in Artifacts(gw.store_dir).records if r["t"] == "http.error"]
    timed_out = [e for e in errors if e["phase"] == "request_header"]
    assert len(timed_out) == 21, errors
    assert all("timeouts.request_header" in e["message"] and e["by"] == "gateway" for e in timed_out)
    assert len({e["conn"] for e in timed_out}) == 21


def test_an_upstream_that_never_answers_gets_the_client_a_504(start_gateway, upstream):
    gw = start_gateway(config=timeouts(upstream_response=2))
    tid = new_test_id()
    with httpx_client(gw, "reverse") as client:
        t0 = time.monotonic()
        r = client.post("/never", content=b"{}", headers={"x-test-id": tid})
        waited = time.monotonic() - t0
    assert r.status_code == 504 and "timeouts.upstream_response" in r.text, r.text[:300]
    assert 1.8 <= waited <= 6, waited
    ex = upstream.exchange(tid)  # it had the whole request, and the gateway closed on it
    assert ex.received_at and ex.error == "closed by the gateway"
    assert gw.stop() == 0
    flow = Artifacts(gw.store_dir).flow(tid)
    assert [(e["phase"], e["by"]) for e in flow.errors] == [("response", "gateway")], flow.describe()
    assert "within 2 s" in flow.errors[0]["message"] and flow.end is not None


@pytest.fixture
def h2_upstream(test_ca):
    up = H2Upstream(test_ca).start()
    yield up
    up.stop()


def test_h2_an_upstream_that_never_answers_is_reset_and_the_client_gets_504(start_gateway, h2_upstream):
    gw = start_gateway(config=timeouts(upstream_response=2), upstream_url=h2_upstream.base_url)
    up = h2_upstream
    tid, other = new_test_id(), new_test_id()
    with H2Client(gw.proxy_port, ("127.0.0.1", up.port), gw.ca_path) as c:
        r = c.request("POST", "/never", [("x-test-id", tid)], body=b"{}")
        ok = c.request("GET", "/sse?n=30&delay=0.1", [("x-test-id", other)])  # same connection, keeps going
        r.wait(10)
        assert r.status == 504 and b"timeouts.upstream_response" in r.body
        ok.wait(10)
        assert ok.status == 200 and ok.ended and ok.body.count(b"data:") == 30
    st = up.stream(tid)
    assert st.complete and st.reset_by_peer == h2.errors.ErrorCodes.CANCEL  # only that stream was reset
    assert up.stream(other).reset_by_peer is None
    assert gw.stop() == 0
    art = Artifacts(gw.store_dir)
    assert [e["phase"] for e in art.flow(tid).errors] == ["response"]
    assert not art.flow(other).errors


def test_the_upstreams_time_to_answer_counts_from_when_it_has_the_request_not_from_a_slow_store(
        freezable_fs, start_gateway, h2_upstream):
    """A request goes upstream only once it is recorded (docs/integrity.md). A store that hangs
    (fsfreeze) for longer than timeouts.upstream_response holds the request back; that wait is
    the gateway's, not the upstream's: once the store is back, the request goes upstream and the
    upstream's prompt answer reaches the client, no 504. (Under load, a slow fsync did the same
    to test_h2_an_upstream_that_never_answers...: its second stream got a 504 it did not earn.)"""
    mnt, freeze, thaw = freezable_fs
    gw = start_gateway(config={**timeouts(upstream_response=1), "storage": {"dir": mnt / "store", "write_timeout": 30}},
                       upstream_url=h2_upstream.base_url)
    up = h2_upstream
    tid = new_test_id()
    with H2Client(gw.proxy_port, ("127.0.0.1", up.port), gw.ca_path) as c:
        assert c.request("POST", "/echo", [("x-test-id", new_test_id())], body=b"warm-up").wait(10).status == 200
        freeze()
        try:
            body = b"held until it is on the record"  # with its length: buffered, recorded whole
            r = c.request("POST", "/echo", [("x-test-id", tid), ("content-length", str(len(body)))], body=body)
            r.finished.wait(3)  # the store stays stuck for three times timeouts.upstream_response
            assert not up.received(tid), "a request went upstream before its record was written"
        finally:
            thaw()
        r.wait(15)
        assert r.status == 200 and r.body == b"held until it is on the record", r
    st = up.stream(tid)
    assert st.complete and st.reset_by_peer is None
    assert gw.stop() == 0
    flow = Artifacts(mnt / "store").flow(tid)
    assert not flow.errors and flow.response["status"] == 200, flow.describe()


def test_a_stalled_stream_is_ended_after_the_idle_timeout_and_an_idle_connection_closed(start_gateway, h2_upstream):
    gw = start_gateway(config=timeouts(idle=2), upstream_url=h2_upstream.base_url)
    up = h2_upstream
    tid = new_test_id()
    with H2Client(gw.proxy_port, ("127.0.0.1", up.port), gw.ca_path) as c:
        t0 = time.monotonic()
        r = c.request("GET", "/sse?n=2&delay=60", [("x-test-id", tid)])  # one event, then a minute of silence
        r.wait(10)
        assert r.reset is not None and b"event 0" in r.body and b"event 1" not in r.body, r
        assert 1.8 <= time.monotonic() - t0 <= 6
        assert c.closed.wait(10)  # then, with nothing in progress, the connection is closed as idle
    assert up.stream(tid, done=False).reset_by_peer == h2.errors.ErrorCodes.CANCEL
    assert gw.stop() == 0
    flow = Artifacts(gw.store_dir).flow(tid)
    assert [(e["phase"], e["by"]) for e in flow.errors] == [("idle", "gateway")], flow.describe()
    assert "timeouts.idle" in flow.errors[0]["message"]
