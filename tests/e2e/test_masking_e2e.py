"""Masking through a real mitmdump: no secret reaches an artifact, and with the options on,
none reaches the client or the upstream.

The fake upstream spells a secret one character per SSE event (OpenAI and Anthropic
shapes), so the recorded chunks are the worst case the streaming masker must handle.
"""
from __future__ import annotations

import base64
import json
import random
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
