"""The test infrastructure checks itself: the streaming assertion must fail on a proxy
that buffers SSE (plain mitmdump does), or it would prove nothing about the gateway."""
from __future__ import annotations

import pytest

from tests.support.checks import assert_streamed_spacing
from tests.support.clients import httpx_client, new_test_id, read_sse

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(60)]


def test_spacing_check_catches_a_buffering_proxy(start_gateway, upstream):
    plain = start_gateway(script=None)  # mitmdump without the gateway: buffers the stream
    tid = new_test_id()
    with httpx_client(plain, "proxy", upstream) as client:
        with client.stream("POST", "/v1/chat/completions", json={"stream": True}, headers={"x-test-id": tid}) as r:
            got = read_sse(r)
    ex = upstream.exchange(tid)
    assert got.body == ex.response_body  # the fake upstream and the client helpers work
    with pytest.raises(AssertionError, match="buffered"):
        assert_streamed_spacing(got.arrivals, ex.event_times)
    assert plain.stop() == 0


def test_spacing_check_passes_direct_to_upstream(upstream):
    import ssl

    import httpx

    from tests.support.clients import TIMEOUT

    tid = new_test_id()
    with httpx.Client(verify=ssl.create_default_context(cafile=str(upstream.ca.cert_path)), trust_env=False, timeout=TIMEOUT) as client:
        with client.stream("POST", upstream.base_url + "/v1/chat/completions", json={"stream": True},
                           headers={"x-test-id": tid}) as r:
            got = read_sse(r)
    assert_streamed_spacing(got.arrivals, upstream.exchange(tid).event_times)
