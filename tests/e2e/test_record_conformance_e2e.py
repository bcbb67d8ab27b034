"""Conformance: what a real gateway writes matches the one table of record types
(recorder/store/records.py), field by field. Real exchanges go through a real mitmdump: a
buffered reply, a streamed (SSE) reply, a connection error, a refusal and a tunnel. Every record
written must be a type of the table, carry its required fields with their types, and carry no
field the table (and so docs/format.md) does not name."""
from __future__ import annotations

import socket
import ssl

import httpx
import pytest

from recorder.store import format_v1, records
from tests.support.checks import assert_exchange_recorded, finish, wait_for_records
from tests.support.clients import TIMEOUT, httpx_client, new_test_id, trust

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

ENVELOPE = set(format_v1.ENVELOPE)


def nonconforming(recs: list[dict]) -> list[str]:
    out = []
    for rec in recs:
        t = rec.get("t")
        spec = records.RECORDS.get(t)
        if spec is None:
            out.append(f"seq {rec.get('seq')}: {t!r} is not in the table")
            continue
        out += [f"seq {rec['seq']}: {p}" for p in records.field_problems(rec)]
        extra = set(rec) - ENVELOPE - set(spec.required) - set(spec.optional)
        if extra:
            out.append(f"seq {rec['seq']}: {t} carries fields the table does not name: {sorted(extra)}")
    return out


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_buffered_streamed_and_errored_exchanges_conform(gateway, upstream):
    tid_json, tid_sse = new_test_id(), new_test_id()
    with httpx_client(gateway, "proxy", upstream) as client:
        r = client.post("/v1/chat/completions", json={"model": "m", "messages": []},
                        headers={"x-test-id": tid_json, "authorization": "Bearer sk-client"})
        assert r.status_code == 200
        with client.stream("POST", "/v1/chat/completions", json={"model": "m", "stream": True},
                           headers={"x-test-id": tid_sse}) as s:
            assert s.status_code == 200 and b"[DONE]" in b"".join(s.iter_bytes())
    dead = dead_port()
    with httpx.Client(proxy=gateway.proxy_url, verify=trust(gateway), trust_env=False, timeout=TIMEOUT) as client:
        try:
            client.post(f"https://127.0.0.1:{dead}/v1/chat/completions", json={})
        except httpx.HTTPError:
            pass  # the CONNECT itself may be answered 502
    art = finish(gateway)
    # The upstream's own log: both requests reached it and each is recorded.
    assert_exchange_recorded(upstream, art, tid_json)
    _, streamed = assert_exchange_recorded(upstream, art, tid_sse)
    assert streamed.response["streamed"] is True and streamed.chunks("response")
    seen = {r["t"] for r in art.records}
    assert {"session.open", "http.request", "http.response", "http.chunk", "http.end", "http.error",
            "session.close"} <= seen, seen
    assert nonconforming(art.records) == []
    assert all("opened" in r for r in art.records if r["t"] == "session.open")


def test_refused_and_tunnelled_connections_conform(start_gateway, upstream, test_ca):
    denying = start_gateway(config={"policy": {"unregistered": "deny"}})
    with httpx.Client(proxy=denying.proxy_url, verify=ssl.create_default_context(cafile=str(test_ca.cert_path)), trust_env=False, timeout=TIMEOUT) as c:
        with pytest.raises(httpx.ProxyError):
            c.get(upstream.base_url + "/v1/models")
    tunnelling = start_gateway(config={"policy": {"unregistered": "tunnel"}})
    tid = new_test_id()
    with httpx.Client(proxy=tunnelling.proxy_url, verify=ssl.create_default_context(cafile=str(test_ca.cert_path)), trust_env=False,
                      timeout=TIMEOUT) as c:
        r = c.post(upstream.base_url + "/echo", content=b"through", headers={"x-test-id": tid})
    assert r.status_code == 200 and r.content == b"through"
    assert upstream.exchange(tid) is not None  # the tunnel reached the upstream
    refused = wait_for_records(denying, lambda a: any(x["t"] == "auth.refused" for x in a.records)).records
    tunnelled = wait_for_records(tunnelling, lambda a: any(x["t"] == "tunnel" for x in a.records)).records
    assert any(x["t"] == "auth.refused" for x in refused) and any(x["t"] == "tunnel" for x in tunnelled)
    assert [x for x in upstream.exchanges if x.path == "/v1/models"] == []  # the refusal sent nothing
    assert nonconforming(refused + tunnelled) == []
