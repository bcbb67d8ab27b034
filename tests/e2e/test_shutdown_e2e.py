"""SIGTERM and SIGINT close every session cleanly: session.close with reason
"shutdown", the zstd frame ended, the chain verifying."""
from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest

from tests.support.checks import assert_exchange_recorded, finish, wait_for_records
from tests.support.clients import httpx_client, new_test_id

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_closes_sessions_cleanly(gateway, upstream, sig):
    tids = []
    for mode in ("proxy", "reverse"):
        with httpx_client(gateway, mode, upstream) as client:
            tid = new_test_id()
            r = client.post("/v1/chat/completions", json={"model": "m"}, headers={"x-test-id": tid})
            assert r.status_code == 200
            tids.append(tid)
    # Before the signal the session is open: the frame is not ended, no session.close.
    art = gateway.artifacts()
    assert art.sessions and all(s.state == "unsealed" for s in art.sessions), art.summary()

    art = finish(gateway, sig)  # exit 0, session.close reason shutdown, frame ended, verify 0
    for tid in tids:
        assert_exchange_recorded(upstream, art, tid)


def test_sigterm_during_a_stream_keeps_what_arrived(gateway, upstream):
    tid = new_test_id()
    got = bytearray()
    done = threading.Event()

    def consume():
        try:
            with httpx_client(gateway, "proxy", upstream) as client:
                with client.stream("GET", "/slow-sse?n=100&delay=0.1", headers={"x-test-id": tid}) as r:
                    for data in r.iter_bytes():
                        got.extend(data)
        except httpx.HTTPError:
            pass  # the gateway went away mid-stream
        finally:
            done.set()

    t = threading.Thread(target=consume, daemon=True)
    t.start()
    assert upstream.wait_for(lambda: any(len(ex.event_times) >= 5 for ex in upstream.received(tid)), 10)
    # Let the chunk batches of what arrived reach the writer.
    wait_for_records(gateway, lambda a: any(f.chunks("response") for f in a.flows_with_test_id(tid)))
    time.sleep(0.3)
    art = finish(gateway, signal.SIGTERM)
    assert done.wait(10), "the client did not see the stream end when the gateway stopped"

    ex, flow = assert_exchange_recorded(upstream, art, tid)
    recorded = flow.body("response")
    assert len(recorded) > 0
    assert bytes(got).startswith(recorded) or recorded.startswith(bytes(got)), flow.describe()
    assert ex.response_body.startswith(recorded), "the artifact holds bytes the upstream never sent"
    assert len(recorded) >= len(got), "the artifact lacks bytes the client had received"
    assert flow.errors, "a stream cut by the shutdown should say so in an http.error"
