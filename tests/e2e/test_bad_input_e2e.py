"""Bad input end to end: in every case the gateway stays up, records what happened,
and loses nothing it had received."""
from __future__ import annotations

import hashlib
import json
import os
import socket

import httpx
import pytest

from tests.support import upstream as fake
from tests.support.checks import (
    assert_exchange_recorded,
    assert_record_fields,
    finish,
    wait_for_records,
)
from tests.support.clients import httpx_client, new_test_id, read_sse, trust

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

MODES = ["proxy", "reverse"]


def follow_up_works(gw, upstream, mode="proxy") -> str:
    """The gateway still serves: a fresh client gets a normal reply. Returns its test id."""
    assert gw.alive(), "the gateway process died"
    tid = new_test_id()
    with httpx_client(gw, mode, upstream) as client:
        r = client.post("/v1/chat/completions", json={"model": "m"}, headers={"x-test-id": tid})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == fake.JSON_REPLY_TEXT
    return tid


def test_malformed_json_body_is_recorded_as_sent(gateway, upstream):
    client = httpx_client(gateway, "proxy", upstream)
    tid = new_test_id()
    bad = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "unterminated'
    r = client.post("/v1/chat/completions", content=bad, headers={"content-type": "application/json", "x-test-id": tid})
    assert r.status_code == 400 and "malformed JSON" in r.json()["error"]["message"]
    # The same connection keeps working.
    tid2 = new_test_id()
    r2 = client.post("/v1/chat/completions", json={"model": "m"}, headers={"x-test-id": tid2})
    assert r2.status_code == 200

    art = finish(gateway)
    ex, flow = assert_exchange_recorded(upstream, art, tid)
    assert flow.request["body"]["text"] == bad.decode()
    assert flow.response["status"] == 400
    assert flow.body("response") == r.content
    assert_record_fields(flow, mode="regular", streamed_response=False)
    assert_exchange_recorded(upstream, art, tid2)


@pytest.mark.parametrize("mode", MODES)
def test_binary_body_recorded_as_b64_and_rebuilt_exactly(gateway, upstream, mode):
    client = httpx_client(gateway, mode, upstream)
    tid = new_test_id()
    data = b"\xff\xfe\x00" + os.urandom(64 * 1024)  # not UTF-8, below the stream threshold
    r = client.post("/echo", content=data, headers={"content-type": "application/octet-stream", "x-test-id": tid})
    assert r.status_code == 200 and r.content == data

    art = finish(gateway)
    ex, flow = assert_exchange_recorded(upstream, art, tid)
    assert ex.body == data
    req, resp = flow.request, flow.response
    assert "b64" in req["body"] and "text" not in req["body"] and req["body"]["size"] == len(data)
    assert "b64" in resp["body"] and resp["body"]["size"] == len(data)
    assert flow.body("request") == data and flow.body("response") == data
    assert_record_fields(flow, mode="regular" if mode == "proxy" else "reverse", streamed_response=False)


@pytest.mark.timeout(180)
def test_20mb_body_streams_through_and_is_recorded_whole(gateway, upstream):
    client = httpx_client(gateway, "proxy", upstream)
    tid = new_test_id()
    size = 20 * 1024 * 1024
    # Half random (incompressible, not UTF-8), half text, so both paths of the encoder run.
    data = os.urandom(size // 2) + (b"0123456789abcdef" * (size // 32))
    r = client.post("/echo", content=data, headers={"content-type": "application/octet-stream", "x-test-id": tid})
    assert r.status_code == 200
    assert len(r.content) == size and hashlib.sha256(r.content).digest() == hashlib.sha256(data).digest()
    follow_up_works(gateway, upstream)

    art = finish(gateway)
    ex, flow = assert_exchange_recorded(upstream, art, tid)
    assert flow.body("request") == data
    assert flow.body("response") == data
    # Above the stream threshold: both directions were teed, not buffered.
    assert flow.request["streamed"] is True and flow.response["streamed"] is True
    assert len(flow.chunks("request")) >= 1 and len(flow.chunks("response")) >= 1
    assert_record_fields(flow, mode="regular", streamed_response=True, streamed_request=True)
    assert flow.end["size"]["request"] == size and flow.end["size"]["response"] == size


@pytest.mark.parametrize("mode", MODES)
def test_chunked_request_body_of_unknown_length_is_teed(gateway, upstream, mode):
    client = httpx_client(gateway, mode, upstream)
    tid = new_test_id()
    parts = [json.dumps({"part": i, "text": "é" * 1000}).encode() + b"\n" for i in range(40)]

    def body():
        yield from parts  # no Content-Length: httpx sends Transfer-Encoding: chunked

    r = client.post("/echo", content=body(), headers={"content-type": "application/x-ndjson", "x-test-id": tid})
    assert r.status_code == 200 and r.content == b"".join(parts)

    art = finish(gateway)
    ex, flow = assert_exchange_recorded(upstream, art, tid)
    assert "chunked" in (ex.header("transfer-encoding") or "") or ex.header("content-length")
    assert flow.request["streamed"] is True, "a chunked request body must be teed, not buffered"
    assert flow.body("request") == b"".join(parts)
    assert all("text" in c["body"] for c in flow.chunks("request")), "text split across chunks must stay text"


@pytest.mark.parametrize("mode", MODES)
def test_upstream_reset_mid_stream(gateway, upstream, mode):
    client = httpx_client(gateway, mode, upstream)
    tid = new_test_id()
    got = b""
    with pytest.raises(httpx.HTTPError):
        with client.stream("GET", "/reset-mid-stream", headers={"x-test-id": tid}) as r:
            assert r.status_code == 200
            for data in r.iter_bytes():
                got += data
    two_events = b"".join(fake.slow_events(2))
    assert got == two_events, "the client should get both events sent before the reset"
    follow_up_works(gateway, upstream, mode)

    art = finish(gateway)
    ex, flow = assert_exchange_recorded(upstream, art, tid)
    assert flow.body("response") == two_events, flow.describe()
    errors = flow.errors
    assert len(errors) == 1, flow.describe()
    assert errors[0]["phase"] == "response" and errors[0]["message"], errors[0]
    assert flow.response is not None and flow.response["status"] == 200
    assert flow.records[-1]["t"] in ("http.end", "http.error"), flow.describe()


@pytest.mark.parametrize("mode", MODES)
def test_client_hangs_up_mid_stream(gateway, upstream, mode):
    tid = new_test_id()
    client = httpx_client(gateway, mode, upstream)
    with client.stream("GET", "/slow-sse?n=40&delay=0.1", headers={"x-test-id": tid}) as r:
        got = read_sse(r, stop_after=3)
    client.close()  # the response was not read to the end: the connection is dropped
    assert len(got.events) >= 3

    # The gateway notices, records it, and stops pulling from the upstream.
    wait_for_records(gateway, lambda a: any(f.errors for f in a.flows_with_test_id(tid)))
    ex = upstream.exchange(tid)  # waits until the upstream is through: cut, or all 40 events sent
    assert not ex.complete, "the upstream stream should have been cut when the client left"
    follow_up_works(gateway, upstream, mode)

    art = finish(gateway)
    ex, flow = assert_exchange_recorded(upstream, art, tid)
    recorded = flow.body("response")
    assert recorded.startswith(got.body), "the artifact lacks events the client had received"
    assert ex.response_body.startswith(recorded), "the artifact holds bytes the upstream never sent"
    errors = flow.errors
    assert len(errors) == 1 and errors[0]["phase"] == "client", flow.describe()


def test_upstream_refused_in_reverse_mode_is_a_connect_error(start_gateway, upstream):
    gw = start_gateway(upstream_url=f"https://127.0.0.1:{dead_port()}")
    tid = new_test_id()
    with httpx_client(gw, "reverse", upstream) as client:
        r = client.post("/v1/chat/completions", json={"model": "m"}, headers={"x-test-id": tid})
        assert r.status_code == 502
        r2 = client.post("/v1/chat/completions", json={"model": "m"}, headers={"x-test-id": new_test_id()})
        assert r2.status_code == 502  # still serving (and still refused)
    assert gw.alive()
    art = finish(gw)
    flow = art.flow(tid)
    assert flow.request is not None and flow.body("request") == b'{"model":"m"}'
    errors = flow.errors
    assert len(errors) == 1 and errors[0]["phase"] == "connect" and errors[0]["message"], flow.describe()
    assert flow.response is None or flow.response["status"] == 502


def test_upstream_refused_in_proxy_mode_is_a_connect_error(gateway, upstream):
    dead = dead_port()
    tid = new_test_id()
    with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), trust_env=False, timeout=30) as client:
        try:
            r = client.post(f"https://127.0.0.1:{dead}/v1/chat/completions", json={}, headers={"x-test-id": tid})
            outcome = r.status_code
        except httpx.ProxyError as e:  # the CONNECT itself was answered 502
            outcome = str(e)
    assert outcome == 502 or "502" in str(outcome), outcome
    follow_up_works(gateway, upstream)
    art = finish(gateway)
    # The refused attempt is on record, with the phase, whether the gateway failed the
    # CONNECT or the request after it.
    refused = [
        f for f in art.flows()
        if f.request is not None and f"127.0.0.1:{dead}" in f.request["url"]
        and any(e["phase"] == "connect" for e in f.errors)
    ]
    assert refused, f"no http.error phase connect for the refused upstream 127.0.0.1:{dead}\n{art.summary()}"


def dead_port() -> int:
    """A port nobody listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
