"""End to end: clients reach the fake upstream through a real mitmdump running the
gateway, and the session artifact holds exactly what crossed it."""
from __future__ import annotations

import json

import pytest

from tests.support import upstream as fake
from tests.support.artifacts import header
from tests.support.checks import (
    assert_exchange_recorded,
    assert_record_fields,
    assert_streamed_spacing,
    finish,
)
from tests.support.clients import (
    anthropic_client,
    curl,
    httpx_client,
    new_test_id,
    openai_client,
    read_sse,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(90)]

MODES = ["proxy", "reverse"]
RECORDED_MODE = {"proxy": "regular", "reverse": "reverse"}


@pytest.mark.parametrize("mode", MODES)
def test_json_reply_reaches_client_and_artifact_rebuilds_it(gateway, upstream, mode):
    client = httpx_client(gateway, mode, upstream)
    tid = new_test_id()
    payload = json.dumps({"model": "gpt-test", "messages": [{"role": "user", "content": "héllo ✓"}]}).encode()
    r = client.post(
        "/v1/chat/completions",
        content=payload,
        headers={"content-type": "application/json", "x-test-id": tid, "authorization": "Bearer sk-client-secret"},
    )
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == fake.JSON_REPLY_TEXT
    got = r.content

    art = finish(gateway)
    ex, flow = assert_exchange_recorded(upstream, art, tid)
    assert ex.body == payload
    assert got == ex.response_body
    assert flow.body("response") == got
    assert flow.body("request") == payload
    assert_record_fields(flow, mode=RECORDED_MODE[mode], streamed_response=False)
    req, resp = flow.request, flow.response
    assert req["method"] == "POST" and req["connection"] is None
    assert req["body"]["text"] == payload.decode() and req["body"]["size"] == len(payload)
    assert resp["status"] == 200 and resp["body"]["size"] == len(got)
    assert header(resp["headers"], "content-type") == "application/json"
    # The client's credential is in the artifact only as a masked marker.
    auth = header(req["headers"], "authorization")
    assert auth is not None and "sk-client-secret" not in auth
    assert all("sk-client-secret" not in json.dumps(r) for r in art.records)


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/messages"])
@pytest.mark.parametrize("mode", MODES)
def test_sse_streams_spaced_and_artifact_rebuilds_it(gateway, upstream, mode, route):
    client = httpx_client(gateway, mode, upstream)
    tid = new_test_id()
    body = json.dumps({"model": "m", "stream": True, "messages": []}).encode()
    with client.stream(
        "POST", route, content=body, headers={"content-type": "application/json", "x-test-id": tid}
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        got = read_sse(r)

    ex = upstream.exchange(tid)
    assert ex.complete and got.body == ex.response_body
    assert len(got.events) == len(ex.event_times)
    assert_streamed_spacing(got.arrivals, ex.event_times)

    art = finish(gateway)
    ex, flow = assert_exchange_recorded(upstream, art, tid)
    assert flow.body("response") == got.body
    assert_record_fields(flow, mode=RECORDED_MODE[mode], streamed_response=True)
    chunks = flow.chunks("response")
    # Recorded as it flowed, in batches of about 100 ms: several chunks, the first
    # written while the upstream was still sending.
    assert len(chunks) >= 3, flow.describe()
    assert chunks[0]["ts"] < ex.event_times[-1], flow.describe()
    assert flow.end["size"]["response"] == len(got.body)


@pytest.mark.parametrize("mode", MODES)
def test_openai_sdk_json_and_stream(gateway, upstream, mode):
    tid_json, tid_stream = new_test_id(), new_test_id()
    client = openai_client(gateway, mode, upstream, tid_json)
    reply = client.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == fake.JSON_REPLY_TEXT

    client = openai_client(gateway, mode, upstream, tid_stream)
    stream = client.chat.completions.create(
        model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == fake.stream_text(upstream.sse_events)

    art = finish(gateway)
    for tid, streamed in ((tid_json, False), (tid_stream, True)):
        ex, flow = assert_exchange_recorded(upstream, art, tid)
        assert flow.body("response") == ex.response_body
        assert_record_fields(flow, mode=RECORDED_MODE[mode], streamed_response=streamed)
        assert json.loads(flow.body("request"))["model"] == "gpt-test"


@pytest.mark.parametrize("mode", MODES)
def test_anthropic_sdk_json_and_stream(gateway, upstream, mode):
    tid_json, tid_stream = new_test_id(), new_test_id()
    client = anthropic_client(gateway, mode, upstream, tid_json)
    msg = client.messages.create(
        model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    )
    assert msg.content[0].text == fake.JSON_REPLY_TEXT

    client = anthropic_client(gateway, mode, upstream, tid_stream)
    with client.messages.stream(
        model="claude-test", max_tokens=64, messages=[{"role": "user", "content": "hi"}]
    ) as stream:
        text = "".join(stream.text_stream)
    assert text == fake.stream_text(upstream.sse_events)

    art = finish(gateway)
    for tid, streamed in ((tid_json, False), (tid_stream, True)):
        ex, flow = assert_exchange_recorded(upstream, art, tid)
        assert flow.body("response") == ex.response_body
        assert_record_fields(flow, mode=RECORDED_MODE[mode], streamed_response=streamed)
        assert json.loads(flow.body("request"))["model"] == "claude-test"


def test_curl_through_proxy_json_and_stream(gateway, upstream):
    common = ["--proxy", gateway.proxy_url, "--cacert", str(gateway.ca_path), "-H", "content-type: application/json"]
    tid_json, tid_stream = new_test_id(), new_test_id()
    body = '{"model": "gpt-test", "messages": []}'
    res = curl(*common, "-H", f"x-test-id: {tid_json}", "--data-binary", body, upstream.base_url + "/v1/chat/completions")
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["choices"][0]["message"]["content"] == fake.JSON_REPLY_TEXT
    res_stream = curl(
        *common, "-N", "-H", f"x-test-id: {tid_stream}", "--data-binary", '{"stream": true}',
        upstream.base_url + "/v1/chat/completions",
    )
    assert res_stream.returncode == 0, res_stream.stderr
    assert res_stream.stdout.endswith(b"data: [DONE]\n\n")

    art = finish(gateway)
    ex, flow = assert_exchange_recorded(upstream, art, tid_json)
    assert flow.body("request") == body.encode()
    assert flow.body("response") == res.stdout == ex.response_body
    ex, flow = assert_exchange_recorded(upstream, art, tid_stream)
    assert flow.body("response") == res_stream.stdout == ex.response_body
    assert header(flow.request["headers"], "user-agent").startswith("curl/")


def test_reverse_mode_over_tls(gateway, upstream):
    """A client that speaks HTTPS to the reverse listener (trusting the gateway's CA)."""
    import httpx

    from tests.support.clients import trust

    tid = new_test_id()
    url = gateway.reverse_url.replace("http://", "https://") + "/v1/chat/completions"
    with httpx.Client(verify=trust(gateway), trust_env=False, timeout=30) as client:
        r = client.post(url, json={"model": "m"}, headers={"x-test-id": tid})
    assert r.status_code == 200
    art = finish(gateway)
    ex, flow = assert_exchange_recorded(upstream, art, tid)
    assert flow.body("response") == r.content
    assert flow.request["mode"] == "reverse"


@pytest.mark.parametrize("mode", MODES)
def test_gzip_json_is_recorded_decoded(gateway, upstream, mode):
    client = httpx_client(gateway, mode, upstream)
    tid = new_test_id()
    r = client.get("/gzip", headers={"x-test-id": tid, "accept-encoding": "gzip"})
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert r.content == fake.GZIP_JSON  # httpx decodes

    art = finish(gateway)
    ex, flow = assert_exchange_recorded(upstream, art, tid)
    resp = flow.response
    assert resp["streamed"] is False
    assert resp["body"]["text"] == fake.GZIP_JSON.decode(), resp["body"]
    assert flow.body("response") == fake.GZIP_JSON
    assert header(resp["headers"], "content-encoding") == "gzip"


@pytest.mark.parametrize("mode", MODES)
def test_gzip_sse_is_streamed_and_recorded_decoded(gateway, upstream, mode):
    client = httpx_client(gateway, mode, upstream)
    tid = new_test_id()
    with client.stream("GET", "/gzip-sse?n=6&delay=0.15", headers={"x-test-id": tid}) as r:
        assert r.headers["content-encoding"] == "gzip"
        got = read_sse(r)
    ex = upstream.exchange(tid)
    assert got.body == ex.response_body == b"".join(fake.slow_events(6))
    assert_streamed_spacing(got.arrivals, ex.event_times)

    art = finish(gateway)
    ex, flow = assert_exchange_recorded(upstream, art, tid)
    assert flow.response["streamed"] is True
    assert flow.body("response") == got.body
    assert all("text" in c["body"] for c in flow.chunks("response")), flow.describe()


def test_http_end_sizes_are_wire_bytes_and_bodies_carry_decoded_sizes(gateway, upstream):
    """docs/format.md: http.end size = body bytes as they crossed the wire; each body's
    own size = its decoded byte count."""
    client = httpx_client(gateway, "proxy", upstream)
    tid_json, tid_sse = new_test_id(), new_test_id()
    r = client.get("/gzip", headers={"x-test-id": tid_json})
    wire_json = int(r.headers["content-length"])
    with client.stream("GET", "/gzip-sse?n=4&delay=0.05", headers={"x-test-id": tid_sse}) as rs:
        sse_body = rs.read()
        sse_wire = rs.num_bytes_downloaded
    art = finish(gateway)
    for tid, decoded, wire in ((tid_json, r.content, wire_json), (tid_sse, sse_body, sse_wire)):
        flow = art.flow(tid)
        assert wire != len(decoded), "the test needs a compressed body"
        assert flow.end["size"] == {"request": 0, "response": wire}, flow.end
        if flow.response["streamed"]:
            recorded = sum(c["body"]["size"] for c in flow.chunks("response"))
        else:
            recorded = flow.response["body"]["size"]
        assert recorded == len(decoded), flow.describe()


@pytest.mark.parametrize("kind", ["buffered", "streamed"])
def test_request_record_is_on_disk_before_the_upstream_sees_the_request(gateway, upstream, kind):
    """Fail closed depends on it: the http.request record is written (readable from the
    file by another process) by the time the request's headers reach the upstream."""
    on_disk: dict[str, list] = {}

    def look(ex):
        if ex.test_id:
            on_disk[ex.test_id] = [f.request for f in gateway.artifacts().flows_with_test_id(ex.test_id)]

    upstream.on_request_headers = look
    tid = new_test_id()
    parts = [b"line %d\n" % i for i in range(100)]
    content = b"".join(parts) if kind == "buffered" else iter(parts)  # an iterator goes chunked
    with httpx_client(gateway, "proxy", upstream) as client:
        r = client.post("/echo", content=content, headers={"x-test-id": tid, "content-type": "text/plain"})
    assert r.status_code == 200 and r.content == b"".join(parts)
    assert tid in on_disk, "the upstream never saw the request"
    assert len(on_disk[tid]) == 1, "the http.request record was not in the session file when the upstream got the request"
    assert on_disk[tid][0]["streamed"] is (kind == "streamed")
    art = finish(gateway)
    assert art.flow(tid).body("request") == b"".join(parts)
