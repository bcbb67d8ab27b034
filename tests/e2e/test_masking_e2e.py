"""Masking through a real mitmdump: no secret reaches an artifact, and with the options on,
none reaches the client or the upstream.

The fake upstream spells a secret one character per SSE event (OpenAI and Anthropic
shapes), so the recorded chunks are the worst case the streaming masker must handle.
"""
from __future__ import annotations

import base64
import json
import random
import re
import string
import urllib.parse

import httpx
import pytest

from tests.support.artifacts import TEST_ID_HEADER, store_bytes
from tests.support.checks import wait_for_records
from tests.support.clients import TIMEOUT, new_test_id, read_sse, trust

pytestmark = pytest.mark.e2e

_rng = random.Random(4)
# Built at run time: the repository holds nothing a scanner would flag.
GITHUB_TOKEN = "gh" + "p_" + "".join(_rng.choice(string.ascii_letters + string.digits) for _ in range(36))
AWS_KEY_ID = "AK" + "IA" + "".join(_rng.choice(string.ascii_uppercase + "234567") for _ in range(16))
# Base64-like, as Azure keys are: its URL-encoded form differs from the raw one.
UPSTREAM_KEY = "gw+own/" + "".join(_rng.choice(string.ascii_letters) for _ in range(32)) + "=="


def artifact_bytes(gw) -> bytes:
    return store_bytes(gw.store_dir)


def stream_chat(gw, upstream, text: str, test_id: str, *, anthropic: bool = False):
    path = "/v1/messages" if anthropic else "/v1/chat/completions"
    body = {"model": "m", "stream": True, "x_reply_text": text, "max_tokens": 5,
            "messages": [{"role": "user", "content": "say it"}]}
    with httpx.Client(base_url=gw.reverse_url, trust_env=False, timeout=TIMEOUT) as c:
        with c.stream("POST", path, json=body, headers={TEST_ID_HEADER: test_id, "x-upstream-delay": "0.005"}) as r:
            assert r.status_code == 200
            return read_sse(r)


def delta_text(events: list[bytes]) -> str:
    out = []
    for ev in events:
        for line in ev.decode().splitlines():
            if line.startswith("data: ") and line != "data: [DONE]":
                obj = json.loads(line[6:])
                if "choices" in obj:
                    out.append(obj["choices"][0]["delta"].get("content") or "")
                elif obj.get("type") == "content_block_delta":
                    out.append(obj["delta"].get("text", ""))
    return "".join(out)


@pytest.mark.parametrize("anthropic", [False, True], ids=["openai", "anthropic"])
def test_a_secret_spelled_one_character_per_event_never_reaches_the_artifact(gateway, upstream, anthropic):
    text = f"here is the token {GITHUB_TOKEN} and the key id {AWS_KEY_ID}, done."
    test_id = new_test_id()
    got = stream_chat(gateway, upstream, text, test_id, anthropic=anthropic)
    assert delta_text(got.events) == text  # masking of what is forwarded is off by default
    art = wait_for_records(gateway, lambda a: any(r["t"] == "http.end" for r in a.records))
    data = artifact_bytes(gateway)
    assert GITHUB_TOKEN.encode() not in data and AWS_KEY_ID.encode() not in data
    # Not even split across records: the recorded reply, rebuilt, holds tags where the secrets were.
    rebuilt = art.flow(test_id).body("response")
    recorded_text = delta_text([e + b"\n\n" for e in rebuilt.split(b"\n\n") if e])
    assert GITHUB_TOKEN not in recorded_text and "[MASKED:github-pat" in recorded_text, recorded_text
    assert "[MASKED:aws-access-key-id" in recorded_text
    assert recorded_text.startswith("here is the token ") and recorded_text.endswith(", done.")
    assert gateway.verify_cli().returncode == 0


def test_secrets_in_a_request_are_masked_in_the_record_but_reach_the_upstream(gateway, upstream):
    pem = "-----BEGIN RSA PRIVATE KEY-----\n" + "\n".join(
        base64.b64encode(bytes(_rng.randrange(256) for _ in range(48))).decode() for _ in range(5)
    ) + "\n-----END RSA PRIVATE KEY-----"
    tool_result = f"cat ~/.ssh/id_rsa\n{pem}\nexport GITHUB_TOKEN={GITHUB_TOKEN}\n"
    body = {"model": "m", "messages": [
        {"role": "user", "content": "read my key"},
        {"role": "tool", "tool_call_id": "c1", "content": tool_result},
    ]}
    test_id = new_test_id()
    r = httpx.post(gateway.reverse_url + "/v1/chat/completions?api_key=" + GITHUB_TOKEN, json=body,
                   headers={TEST_ID_HEADER: test_id, "x-debug-token": GITHUB_TOKEN}, trust_env=False, timeout=TIMEOUT)
    assert r.status_code == 200
    assert json.loads(upstream.exchange(test_id).body)["messages"][1]["content"] == tool_result  # unchanged upstream
    art = wait_for_records(gateway, lambda a: a.flows_with_test_id(test_id))
    data = artifact_bytes(gateway)
    assert GITHUB_TOKEN.encode() not in data
    for line in pem.splitlines()[1:-1]:
        assert line.encode() not in data
    recorded = json.loads(art.flow(test_id).body("request"))
    assert "[MASKED:private-key" in recorded["messages"][1]["content"]
    request = art.flow(test_id).request
    assert GITHUB_TOKEN not in request["url"] and "[MASKED:" in request["url"]
    assert any(v.startswith("[MASKED:") for k, v in request["headers"] if k == "x-debug-token")


def test_mask_responses_masks_what_the_client_receives_as_it_streams(start_gateway, upstream):
    gw = start_gateway(config={"masking": {"mask_responses": True}})
    text = f"the token is {GITHUB_TOKEN} ok " + "and then some more words " * 4
    test_id = new_test_id()
    got = stream_chat(gw, upstream, text, test_id)
    received = delta_text(got.events)
    assert GITHUB_TOKEN not in got.body.decode() and "[MASKED:github-pat" in received
    assert received.startswith("the token is [MASKED:") and received.endswith("some more words ")
    # Still a stream: the events arrived over time, not all at the end.
    assert got.arrivals[-1] - got.arrivals[0] > 0.1
    # Buffered JSON replies are masked too.
    r = httpx.post(gw.reverse_url + "/echo", content=json.dumps({"leak": GITHUB_TOKEN}).encode(),
                   headers={"content-type": "application/json"}, trust_env=False, timeout=TIMEOUT)
    assert r.status_code == 200 and GITHUB_TOKEN not in r.text and "[MASKED:" in r.json()["leak"]


def test_mask_requests_keeps_secrets_from_the_upstream(start_gateway, upstream):
    gw = start_gateway(config={"masking": {"mask_requests": True}})
    test_id = new_test_id()
    body = {"model": "m", "messages": [{"role": "tool", "content": f"token={GITHUB_TOKEN}"}]}
    r = httpx.post(gw.reverse_url + "/v1/chat/completions", json=body, headers={TEST_ID_HEADER: test_id},
                   trust_env=False, timeout=TIMEOUT)
    assert r.status_code == 200
    sent = upstream.exchange(test_id).body
    assert GITHUB_TOKEN.encode() not in sent and b"[MASKED:github-pat" in sent
    # A streamed (chunked) request body is masked as it streams.
    stream_id = new_test_id()

    def chunks():
        text = json.dumps({"doc": f"prefix {GITHUB_TOKEN} suffix " + "x" * 1000}).encode()
        for i in range(0, len(text), 7):
            yield text[i:i + 7]

    r = httpx.post(gw.reverse_url + "/echo", content=chunks(), headers={TEST_ID_HEADER: stream_id},
                   trust_env=False, timeout=TIMEOUT)
    assert r.status_code == 200
    sent = upstream.exchange(stream_id).body
    assert GITHUB_TOKEN.encode() not in sent and b"prefix [MASKED:github-pat" in sent and sent.endswith(b'x"}')
    # A body over capture.stream_threshold with a Content-Length streams too: masked as well.
    big_id = new_test_id()
    big = json.dumps({"doc": "y" * 300_000 + f" {GITHUB_TOKEN} " + "z" * 1000}).encode()
    r = httpx.post(gw.reverse_url + "/echo", content=big, headers={TEST_ID_HEADER: big_id},
                   trust_env=False, timeout=TIMEOUT)
    assert r.status_code == 200
    sent = upstream.exchange(big_id).body
    assert GITHUB_TOKEN.encode() not in sent and b"[MASKED:github-pat" in sent and sent.endswith(b'z"}')


def test_the_gateways_own_credential_is_masked_in_any_encoding(start_gateway, upstream, tmp_path):
    key_file = tmp_path / "upstream.key"
    key_file.write_text(UPSTREAM_KEY)
    gw = start_gateway(extra_toml=f"""
[[connections]]
name = "fake"
hosts = ["127.0.0.1"]
ports = [{upstream.port}]
credential = "file:{key_file}"
inject = "bearer"
""")
    test_id = new_test_id()
    leak = {"raw": UPSTREAM_KEY, "b64": base64.b64encode(f"user:{UPSTREAM_KEY}".encode()).decode(),
            "url": "https://x/?k=" + urllib.parse.quote(UPSTREAM_KEY, safe="")}
    with httpx.Client(proxy=gw.proxy_url, verify=trust(gw), trust_env=False, timeout=TIMEOUT) as c:
        r = c.post(upstream.base_url + "/echo", content=json.dumps(leak).encode(),
                   headers={TEST_ID_HEADER: test_id, "content-type": "application/json"})
    assert r.status_code == 200
    assert upstream.exchange(test_id).header("authorization") == f"Bearer {UPSTREAM_KEY}"
    art = wait_for_records(gw, lambda a: any(r["t"] == "http.end" for r in a.records))
    data = artifact_bytes(gw)
    assert UPSTREAM_KEY.encode() not in data
    assert base64.b64encode(UPSTREAM_KEY.encode()[3:30]) not in data
    recorded = json.loads(art.flow(test_id).body("request"))
    assert recorded["raw"].startswith("[MASKED:credential:")
    assert "[MASKED:credential:" in recorded["b64"] and "[MASKED:credential:" in recorded["url"]


# -- issue 18: the cases that leaked or damaged the record -------------------------------------------

_TAG = re.compile(rb"\[MASKED:[a-z0-9-]+:[0-9a-f]{8}\]")
DB_PASSWORD = "Xk3v" + "".join(_rng.choice(string.ascii_letters + string.digits) for _ in range(14))


@pytest.mark.parametrize("anthropic", [False, True], ids=["openai", "anthropic"])
def test_a_database_url_spelled_one_character_per_event_is_masked_and_every_event_kept(gateway, upstream,
                                                                                        anthropic):
    text = f"connect with postgres://app:{DB_PASSWORD}@db.internal:5432/app and run the migration."
    test_id = new_test_id()
    got = stream_chat(gateway, upstream, text, test_id, anthropic=anthropic)
    assert delta_text(got.events) == text
    art = wait_for_records(gateway, lambda a: any(r["t"] == "http.end" for r in a.records))
    assert DB_PASSWORD.encode() not in artifact_bytes(gateway)
    rebuilt = art.flow(test_id).body("response")
    recorded_events = [e + b"\n\n" for e in rebuilt.split(b"\n\n") if e]
    assert len(recorded_events) == len(got.events)  # none lost, none invented
    recorded_text = delta_text(recorded_events)
    # One tag, or several where the hold-back's time bound released the password as it came.
    assert re.fullmatch(r"connect with postgres://app:(\[MASKED:url-password:[0-9a-f]{8}\])+@db\.internal:5432/app "
                        r"and run the migration\.", recorded_text), recorded_text
    assert gateway.verify_cli().returncode == 0


def test_a_secret_in_a_header_name_is_masked(gateway, upstream):
    test_id = new_test_id()
    r = httpx.post(gateway.reverse_url + "/echo", content=b"{}", headers={TEST_ID_HEADER: test_id,
                   "x-" + GITHUB_TOKEN: "1", "content-type": "application/json"}, trust_env=False, timeout=TIMEOUT)
    assert r.status_code == 200
    assert upstream.exchange(test_id).header("x-" + GITHUB_TOKEN) == "1"  # it still reached the upstream
    art = wait_for_records(gateway, lambda a: a.flows_with_test_id(test_id) and a.flow(test_id).end)
    assert GITHUB_TOKEN.encode() not in artifact_bytes(gateway)
    names = [k for k, _ in art.flow(test_id).request["headers"]]
    assert any(k.startswith("x-[MASKED:github-pat:") for k in names), names


@pytest.mark.parametrize("codings", ["raw-deflate", "gzip, gzip", "gzip, br", "deflate, zstd"])
@pytest.mark.parametrize("streamed", [False, True], ids=["buffered", "streamed"])
def test_raw_deflate_and_stacked_encodings_are_decoded_and_masked(gateway, upstream, codings, streamed):
    body = json.dumps({"note": "config follows", "env": f"GITHUB_TOKEN={GITHUB_TOKEN}", "pad": "x" * 400}).encode()
    test_id = new_test_id()
    url = gateway.reverse_url + "/encoded?ce=" + urllib.parse.quote(codings) + ("&stream=1" if streamed else "")
    with httpx.Client(trust_env=False, timeout=TIMEOUT) as c:
        with c.stream("POST", url, content=body, headers={TEST_ID_HEADER: test_id, "content-type": "application/json"}) as r:
            assert r.status_code == 200 and r.headers["content-encoding"] == codings.replace("raw-deflate", "deflate")
            wire = b"".join(r.iter_raw())  # httpx cannot undo stacked codings; the gateway forwards them as they are
    assert wire and body not in wire  # the client got it encoded
    art = wait_for_records(gateway, lambda a: a.flows_with_test_id(test_id) and a.flow(test_id).end)
    flow = art.flow(test_id)
    assert GITHUB_TOKEN.encode() not in artifact_bytes(gateway)
    stored = flow.body("response")
    assert b"[MASKED:github-pat:" in stored, stored[:200]
    assert stored == body.replace(GITHUB_TOKEN.encode(), _TAG.search(stored).group())  # decoded, nothing else changed
    bodies = flow.chunks("response") if streamed else [flow.response]
    for b in bodies:
        assert b["body"].get("decoded") is not False, b


def test_a_content_encoding_the_gateway_cannot_decode_is_refused(gateway, upstream):
    test_id = new_test_id()
    r = httpx.post(gateway.reverse_url + "/echo", content=b"\x00opaque" + GITHUB_TOKEN.encode(),
                   headers={TEST_ID_HEADER: test_id, "content-encoding": "aes128gcm"}, trust_env=False, timeout=TIMEOUT)
    assert r.status_code == 415 and "cannot_record" in r.text
    assert upstream.received(test_id) == []
    # A reply in a coding the client was not offered is not forwarded either.
    reply_id = new_test_id()
    with pytest.raises(httpx.HTTPError):
        r = httpx.post(gateway.reverse_url + "/encoded?ce=x-custom", content=GITHUB_TOKEN.encode(),
                       headers={TEST_ID_HEADER: reply_id}, trust_env=False, timeout=TIMEOUT)
        r.raise_for_status()
    assert upstream.exchange(reply_id).complete
    wait_for_records(gateway, lambda a: a.flows_with_test_id(reply_id) and a.flow(reply_id).errors)
    assert GITHUB_TOKEN.encode() not in artifact_bytes(gateway)


def _mcp_script(crlf: bool, hold: float) -> dict:
    session = "".join(_rng.choice("0123456789abcdef") for _ in range(32))
    tool_text = f"cat .env\nGITHUB_TOKEN={GITHUB_TOKEN}\nDEBUG=1"
    events = [
        ["endpoint", f"/messages/?session_id={session}"],
        ["message", json.dumps({"jsonrpc": "2.0", "id": 0, "result": {"protocolVersion": "2024-11-05",
                                "serverInfo": {"name": "files", "version": "1.0"}, "capabilities": {"tools": {}}}})],
        ["message", json.dumps({"jsonrpc": "2.0", "method": "notifications/progress",
                                "params": {"progressToken": "p1", "progress": 1, "total": 2}})],
        ["message", json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": tool_text}]}})],
        ["message", json.dumps({"jsonrpc": "2.0", "method": "notifications/progress",
                                "params": {"progressToken": "p1", "progress": 2, "total": 2}})],
    ]
    return {"events": events, "delay": 0.05, "crlf": crlf, "hold": hold}


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_mcp_sse_stream_is_recorded_as_it_crossed_and_promptly_survives_kill_9(start_gateway, upstream, crlf):
    import signal
    import time

    from tests.support.artifacts import Artifacts

    gw = start_gateway()
    test_id = new_test_id()
    with httpx.Client(base_url=gw.reverse_url, trust_env=False, timeout=TIMEOUT) as c:
        with c.stream("POST", "/sse-script", json=_mcp_script(crlf, hold=30),
                      headers={TEST_ID_HEADER: test_id}) as r:
            assert r.status_code == 200
            received = b""
            events = 0
            for data in r.iter_bytes():
                received += data
                events = received.count(b"\r\n\r\n" if crlf else b"\n\n")
                if events == 5:
                    break
            got_all = time.monotonic()
            # The whole stream so far is on the record soon (the hold-back is bounded in time),
            # while the upstream keeps the stream open.
            deadline = got_all + 3.0
            recorded = b""
            while time.monotonic() < deadline:
                flows = Artifacts(gw.store_dir).flows_with_test_id(test_id)
                recorded = flows[0].body("response") if flows else b""
                if len(_TAG.sub(b"", recorded)) >= len(received) - len(GITHUB_TOKEN):
                    break
                time.sleep(0.05)
            lag = time.monotonic() - got_all
            assert recorded, "nothing of the stream was recorded while it was open"
            gw.stop(signal.SIGKILL)
    assert lag < 3.0, f"the record lagged the client by {lag:.2f} s"
    flows = Artifacts(gw.store_dir).flows_with_test_id(test_id)
    recorded = flows[0].body("response")
    assert GITHUB_TOKEN.encode() not in store_bytes(gw.store_dir)
    # What the client received, byte for byte (CRLF kept, no event added or cut), except the secret.
    tags = _TAG.findall(recorded)
    assert len(tags) == 1 and tags[0].startswith(b"[MASKED:github-pat:"), recorded
    assert recorded == received.replace(GITHUB_TOKEN.encode(), tags[0])


def test_the_gateway_log_masks_urls_and_headers(start_gateway, upstream):
    # mitmdump prints every flow (flow_detail 2: with its headers); the log is an output too.
    gw = start_gateway(extra_args=("--set", "flow_detail=2"))
    test_id = new_test_id()
    r = httpx.post(gw.reverse_url + "/echo?access_token=" + GITHUB_TOKEN, content=b"{}",
                   headers={TEST_ID_HEADER: test_id, "x-debug": f"postgres://app:{DB_PASSWORD}@db/x"},
                   trust_env=False, timeout=TIMEOUT)
    assert r.status_code == 200
    wait_for_records(gw, lambda a: a.flows_with_test_id(test_id) and a.flow(test_id).end)
    gw.stop()
    log = gw.log_text()
    assert "/echo?access_token=[MASKED:" in log, log[-2000:]
    assert GITHUB_TOKEN not in log and DB_PASSWORD not in log
