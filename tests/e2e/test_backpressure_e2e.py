"""End to end: a slow store slows the streams that feed it instead of filling memory, and a
shutdown with a hung store ends within storage.stop_timeout, saying what was not written.

The store is an ext4 loop mount that `fsfreeze` stops: every write to it blocks in the
kernel, as on a hung disk or NFS mount (tests/e2e/test_integrity_e2e.py's fixture).
"""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

import pytest

from tests.e2e.test_integrity_e2e import freezable_fs, wait_until  # noqa: F401 (a fixture)
from tests.support.clients import httpx_client, new_test_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

MB = 1 << 20


def rss(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_a_stalled_store_pauses_the_upload_instead_of_queueing_it(freezable_fs, start_gateway, upstream):
    mnt, freeze, thaw = freezable_fs
    limit = 2 * MB
    gw = start_gateway(config={"storage": {"dir": mnt / "store", "queue_limit": limit, "write_timeout": 60}})
    total = 48 * MB
    # 1 MiB of text that repeats every 128 KiB: the 48 MiB fit the 32 MiB store whatever the
    # compressor's match tables (this test is about back-pressure, not compression).
    piece = os.urandom(64 << 10).hex().encode() * 8
    produced = [0]
    go = threading.Event()

    def body():
        assert go.wait(20)
        while produced[0] < total:
            produced[0] += len(piece)
            yield piece

    tid = new_test_id()
    got = {}
    with httpx_client(gw, "reverse") as client:
        assert client.post("/echo", content=b"warm-up", headers={"x-test-id": new_test_id()}).status_code == 200
        base = rss(gw.proc.pid)
        sender = threading.Thread(target=lambda: got.update(r=client.post(
            "/echo", content=body(), headers={"x-test-id": tid, "content-type": "text/plain"},
            timeout=120)))
        sender.start()
        assert wait_until(lambda: len(upstream.started(tid)) == 1, 20)  # its http.request is written
        freeze()
        try:
            go.set()
            assert wait_until(lambda: "reading is paused" in gw.log_text(), 30), gw.log_text()[-2000:]
            time.sleep(1.0)  # let the paused connection show it stays bounded
            during = (produced[0], len(upstream.started(tid)[0].body), rss(gw.proc.pid) - base)
            # Bounded: the upload stalls at the queue limit plus socket buffers, far short of 48 MiB.
            assert during[0] < 24 * MB and during[1] < 24 * MB, during
            assert during[2] < 40 * MB, f"the gateway grew by {during[2] >> 20} MiB while the store stalled"
        finally:
            thaw()
        sender.join(120)
    r = got["r"]
    assert r.status_code == 200 and len(r.content) == total
    assert upstream.exchange(tid).body == b"".join([piece] * (total // len(piece)))
    assert "the store caught up; reading resumed" in gw.log_text()


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_shutdown_with_a_hung_store_ends_within_stop_timeout_and_says_what_was_not_written(
        freezable_fs, start_gateway, upstream, writer):
    mnt, freeze, thaw = freezable_fs
    gw = start_gateway(config={"storage": {"dir": mnt / "store", "stop_timeout": 2, "writer": writer}})
    tid = new_test_id()

    def send():
        try:
            with httpx_client(gw, "reverse") as client:
                client.post("/slow-sse?n=100&delay=0.1", content=iter([b"x" * 1000]), headers={"x-test-id": tid})
        except Exception:
            pass  # the gateway goes away under it

    threading.Thread(target=send, daemon=True).start()
    assert wait_until(lambda: len(upstream.started(tid)) == 1, 20)  # recorded, and its reply streams
    freeze()
    try:
        time.sleep(0.5)  # reply events arrive: their records queue behind the frozen disk
        t0 = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)
        assert wait_until(lambda: "storage.stop_timeout" in gw.log_text(), 15), gw.log_text()[-3000:]
        said = time.monotonic() - t0
        assert said < 2 + 3, said
        log = gw.log_text()
        assert "NOT WRITTEN: " in log, log[-2000:]
        if writer == "thread":
            assert "record(s)" in log and "session(s)" in log, log[-2000:]
        # It serves no more: nothing new can reach an upstream unrecorded.
        assert wait_until(lambda: not _accepts(gw.reverse_port), 5)
        if writer == "process":
            # The gateway itself exits; only its writer process waits on the kernel.
            assert wait_until(lambda: gw.proc.poll() is not None, 5)
    finally:
        thaw()
    gw.proc.wait(30)


def _accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False
