"""End to end: nothing reaches the upstream complete that is not on the record.

A streamed request body is forwarded as it arrives, but its end (the last chunk of a
chunked body over HTTP/1.1, END_STREAM over HTTP/2) goes upstream only once every byte
before it is written. When storage fails mid-body, the upstream side is aborted: the
upstream's own log shows it never had a complete request, and the client gets the
fail-closed 503.
"""
from __future__ import annotations

import os
import threading

import h2.errors
import pytest

from tests.e2e.test_integrity_e2e import fill, freezable_fs, small_tmpfs, wait_until  # noqa: F401 (fixtures)
from tests.support.clients import curl, httpx_client, new_test_id
from tests.support.h2_client import H2Client
from tests.support.h2_upstream import H2Upstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


def room(filler, nbytes: int) -> None:
    """Free `nbytes` of a full tmpfs: room for small records, not for a 300 KB body."""
    os.truncate(filler, filler.stat().st_size - nbytes)


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_storage_failing_mid_body_aborts_the_upstream_side(small_tmpfs, start_gateway, upstream, framing):
    gw = start_gateway(config={"storage": {"dir": small_tmpfs / "store"}})
    body = os.urandom(150 * 1024).hex().encode()  # 300 KB that zstd cannot shrink much
    tid = new_test_id()
    go = threading.Event()

    def parts():  # the headers go first; the body only once the disk is full
        assert go.wait(20)
        for i in range(0, len(body), 16384):
            yield body[i:i + 16384]

    headers = {"x-test-id": tid, "content-type": "text/plain"}
    if framing == "content-length":
        headers["content-length"] = str(len(body))  # over capture.stream_threshold: streamed
    got = {}
    with httpx_client(gw, "reverse") as client:
        assert client.post("/echo", content=b"warm-up", headers={"x-test-id": new_test_id()}).status_code == 200
        sender = threading.Thread(target=lambda: got.update(r=client.post("/echo", content=parts(), headers=headers)))
        sender.start()
        # Its http.request record was written: the headers reached the upstream.
        assert wait_until(lambda: len(upstream.started(tid)) == 1, 20), upstream.started(tid)
        room(fill(small_tmpfs), 12 * 1024)
        go.set()
        sender.join(30)
    r = got["r"]
    assert r.status_code == 503, (r.status_code, r.text[:300])
    assert "could not record this request" in r.text
    # Ground truth: the upstream's log. It had the headers and some of the body, never the end.
    started = upstream.started(tid)
    assert len(started) == 1 and started[0].received_at == 0, started
    assert upstream.received(tid) == []  # no complete request with this id
    assert "transfer-encoding" in {k.lower() for k, _ in started[0].headers}  # sent chunked: its end is held
    log = gw.log_text()
    assert "cannot record (disk full)" in log, log[-3000:]


def test_a_chunked_upload_from_curl_on_a_full_disk_is_refused_and_never_completed(small_tmpfs, start_gateway,
                                                                                 upstream, tmp_path):
    """curl sends a chunked upload (-T -, from a pipe): headers and body at once."""
    gw = start_gateway(config={"storage": {"dir": small_tmpfs / "store"}})
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(150 * 1024).hex().encode())
    with httpx_client(gw, "reverse") as client:
        assert client.post("/echo", content=b"warm-up", headers={"x-test-id": new_test_id()}).status_code == 200
    room(fill(small_tmpfs), 12 * 1024)
    tid = new_test_id()
    proc = curl("-X", "POST", "-T", "-", "-H", f"x-test-id: {tid}", "-H", "content-type: text/plain",
                "-w", "\n%{http_code}", gw.reverse_url + "/echo", stdin=upload.read_bytes())
    status = proc.stdout.rsplit(b"\n", 1)[-1]
    assert status == b"503", (proc.stdout[-500:], proc.stderr)
    started = upstream.started(tid)
    assert all(ex.received_at == 0 for ex in started), started
    assert upstream.received(tid) == []


# -- HTTP/2 -------------------------------------------------------------------------------------


@pytest.fixture
def h2_upstream(test_ca):
    up = H2Upstream(test_ca).start()
    yield up
    up.stop()


def test_h2_storage_failing_mid_body_resets_the_upstream_stream(small_tmpfs, start_gateway, h2_upstream):
    gw = start_gateway(config={"storage": {"dir": small_tmpfs / "store"}}, upstream_url=h2_upstream.base_url)
    up = h2_upstream
    tid, other = new_test_id(), new_test_id()
    with H2Client(gw.proxy_port, ("127.0.0.1", up.port), gw.ca_path) as c:
        assert c.request("POST", "/echo", [("x-test-id", new_test_id())], body=b"warm-up").wait(10).status == 200
        r = c.request("POST", "/echo", [("x-test-id", tid), ("content-type", "text/plain")], body=b"start ",
                      end=False)
        assert wait_until(lambda: up.received(tid) and up.received(tid)[0].chunks, 10)
        room(fill(small_tmpfs), 12 * 1024)
        c.send(r.stream_id, os.urandom(150 * 1024).hex().encode(), end=True)
        r.wait(20)
        assert r.status == 503, r
        assert b"could not record this request" in r.body
    st = up.stream(tid)
    assert not st.complete, "the upstream got END_STREAM of a request that is not on the record"
    assert st.reset_by_peer == h2.errors.ErrorCodes.CANCEL  # the gateway reset the upstream stream


def test_h2_the_end_of_a_body_waits_for_its_record(freezable_fs, start_gateway, h2_upstream):
    """Storage hangs (fsfreeze) while a body streams: its bytes pass, its end does not. After
    storage.write_timeout the client gets 503 and the upstream stream is reset; the upstream
    never had the end."""
    mnt, freeze, thaw = freezable_fs
    gw = start_gateway(config={"storage": {"dir": mnt / "store", "write_timeout": 2.0}},
                       upstream_url=h2_upstream.base_url)
    up = h2_upstream
    tid = new_test_id()
    with H2Client(gw.proxy_port, ("127.0.0.1", up.port), gw.ca_path) as c:
        assert c.request("POST", "/echo", [("x-test-id", new_test_id())], body=b"warm-up").wait(10).status == 200
        r = c.request("POST", "/echo", [("x-test-id", tid)], body=b"first part, ", end=False)
        assert wait_until(lambda: up.received(tid) and up.received(tid)[0].chunks, 10)
        freeze()
        try:
            c.send(r.stream_id, b"last part", end=True)
            assert wait_until(lambda: up.received(tid)[0].body == b"first part, last part", 10)
            r.wait(20)
            st = up.stream(tid)
            assert not st.complete and st.reset_by_peer == h2.errors.ErrorCodes.CANCEL, st
            assert r.status == 503, r
        finally:
            thaw()
    assert "cannot record (storage not responding)" in gw.log_text()
