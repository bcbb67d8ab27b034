"""Identity, policy and credential swap, end to end: a real mitmdump, a real IdP serving JWKS
over HTTP, the TLS fake LLM upstream, a plain-HTTP upstream, and real clients.

Every bad token goes through every entry point (CONNECT, a plain proxied request, reverse
with Authorization: Bearer, reverse with x-api-key): the client gets the refusal in its SDK's
error shape, the upstream receives nothing, and the artifact records the attempt but never
the token. Good tokens reach the upstream as the gateway's own credential, recorded as a
marker; the client's token and placeholder key never reach the upstream or the artifact.
"""
from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import hmac
import json
import signal
import socket
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from tests.support.artifacts import TEST_ID_HEADER, header, store_bytes
from tests.support.checks import wait_for_records
from tests.support.clients import TIMEOUT, new_test_id, read_http_head, trust
from tests.support.gateway import REPO_ROOT
from tests.support.idp import AUDIENCE, ISSUER, LocalIdP, new_private_key
from tests.support.plain_upstream import PlainUpstream

pytestmark = pytest.mark.e2e

SLOW_START_SCRIPT = REPO_ROOT / "tests" / "support" / "slow_start_gateway.py"

# Built at run time so the repository holds nothing that looks like a live key.
UPSTREAM_KEY = "sk-" + "upstream" + hashlib.sha256(b"wiretrail-test-upstream").hexdigest()[:32]
PLACEHOLDER_KEY = "sk-" + "placeholder-the-agent-holds"


@pytest.fixture
def idp():
    with LocalIdP() as server:
        yield server


@pytest.fixture
def plain():
    up = PlainUpstream().start()
    yield up
    up.stop()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unsigned(claims: dict) -> str:
    return f'{_b64(json.dumps({"alg": "none", "typ": "JWT"}).encode())}.{_b64(json.dumps(claims).encode())}.'


def _hs256_signed_with(secret: bytes, claims: dict, kid: str) -> str:
    """Algorithm confusion: HS256 keyed with the IdP's PUBLIC key, which anyone can fetch."""
    signing_input = f'{_b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())}.' \
                    f"{_b64(json.dumps(claims).encode())}"
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(sig)}"


def bad_tokens(idp: LocalIdP) -> dict[str, str]:
    now = time.time()
    foreign = new_private_key("RSA")
    good = idp.token("alice", groups=["engineering"])
    public_pem = idp.private_key().public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return {
        "expired": idp.token("alice", now=now - 7200, ttl=3600),
        "not_yet_valid": idp.token("alice", now=now + 3600),
        "wrong_iss": idp.token("alice", iss="https://evil.example/"),
        "wrong_aud": idp.token("alice", aud="someone-else"),
        "wrong_secret": jwt.encode(idp.claims("alice"), foreign, algorithm="RS256", headers={"kid": idp.first_kid}),
        "alg_none": _unsigned(idp.claims("alice")),
        "rs256_foreign_key": jwt.encode(idp.claims("alice"), foreign, algorithm="RS256"),
        "hs256_with_jwks_public_key": _hs256_signed_with(public_pem, idp.claims("alice"), idp.first_kid),
        "unknown_kid": jwt.encode(idp.claims("alice"), foreign, algorithm="RS256", headers={"kid": "never-published"}),
        "garbage": "this-is-not-a-jwt-at-all",
        "truncated_signature": good[:-10],
        "no_sub": idp.token(None),
        "empty": "",
        "64kb": "e" * 21000 + "." + "p" * 22000 + "." + "s" * 21000,
    }


def jwt_config(idp: LocalIdP, *, unregistered: str = "deny", **identity) -> dict:
    return {
        "identity": {"mode": "jwt", "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": idp.jwks_url,
                     "jwks_refresh_interval": 0.2, **identity},
        "policy": {"unregistered": unregistered},
    }


def connections_toml(upstream, plain, key_file) -> str:
    return f"""
[[connections]]
name = "fake-llm"
hosts = ["127.0.0.1"]
ports = [{upstream.port}]
credential = "file:{key_file}"
inject = "bearer"
allow_groups = ["engineering"]

[[connections]]
name = "plain"
hosts = ["127.0.0.1"]
ports = [{plain.port}]
credential = "none"
inject = "none"
"""


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "upstream.key"
    path.write_text(UPSTREAM_KEY + "\n")
    return path


@pytest.fixture
def jwt_gateway(start_gateway, idp, upstream, plain, key_file):
    return start_gateway(config=jwt_config(idp), extra_toml=connections_toml(upstream, plain, key_file))


# -- the four entry points -------------------------------------------------------------------


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes):
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> dict:
        return json.loads(self.body)


def _raw_exchange(port: int, head: str, timeout: float = 15.0) -> Answer:
    """One request on a fresh socket; returns the status, headers and body of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(head.encode())
        status, headers, rest = read_http_head(s)
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            more = s.recv(65536)
            if not more:
                break
            rest += more
        return Answer(status, headers, rest[:length])


def _proxy_auth(token: str) -> str:
    if not token:
        return "Proxy-Authorization: Bearer \r\n"
    return "Proxy-Authorization: Basic " + base64.b64encode(f"wt:{token}".encode()).decode() + "\r\n"


def via_connect(gw, upstream, plain, token: str) -> Answer:
    target = f"127.0.0.1:{upstream.port}"
    return _raw_exchange(gw.proxy_port, f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n{_proxy_auth(token)}\r\n")


def via_plain_proxy(gw, upstream, plain, token: str) -> Answer:
    body = b'{"model": "m"}'
    return _raw_exchange(gw.proxy_port, f"POST {plain.base_url}/v1/chat/completions HTTP/1.1\r\n"
                         f"Host: 127.0.0.1:{plain.port}\r\n{_proxy_auth(token)}content-type: application/json\r\n"
                         f"content-length: {len(body)}\r\n\r\n{body.decode()}")


def via_reverse_bearer(gw, upstream, plain, token: str) -> Answer:
    r = httpx.post(gw.reverse_url + "/v1/chat/completions", json={"model": "gpt-test", "messages": []},
                   headers={"authorization": f"Bearer {token}".strip()}, trust_env=False, timeout=TIMEOUT)
    return Answer(r.status_code, dict(r.headers), r.content)


def via_reverse_api_key(gw, upstream, plain, token: str) -> Answer:
    r = httpx.post(gw.reverse_url + "/v1/messages", json={"model": "claude-test", "max_tokens": 5, "messages": []},
                   headers={"x-api-key": token, "anthropic-version": "2023-06-01"}, trust_env=False, timeout=TIMEOUT)
    return Answer(r.status_code, dict(r.headers), r.content)


ENTRY_POINTS = {
    "connect": (via_connect, 407),
    "plain_proxy": (via_plain_proxy, 407),
    "reverse_bearer": (via_reverse_bearer, 401),
    "reverse_x_api_key": (via_reverse_api_key, 401),
}


def artifact_bytes(gw) -> bytes:
    return store_bytes(gw.store_dir)


def assert_never_stored(gw, *secrets: str) -> None:
    data = artifact_bytes(gw)
    assert data, "no artifact was written"
    for secret in secrets:
        if len(secret) >= 8:
            assert secret.encode() not in data, "a secret reached the artifact"
            for part in secret.split("."):  # no segment of a token either (signature, payload)
                if len(part) >= 16:
                    assert part.encode() not in data, "a token segment reached the artifact"


@pytest.mark.parametrize("entry", list(ENTRY_POINTS))
def test_bad_tokens_are_refused_at_every_entry_point(entry, jwt_gateway, idp, upstream, plain):
    send, refused_status = ENTRY_POINTS[entry]
    tokens = bad_tokens(idp)
    wrong = {}
    for kind, token in tokens.items():
        answer = send(jwt_gateway, upstream, plain, token)
        if answer.status != refused_status:
            wrong[kind] = f"{answer.status} {answer.body[:200]!r}"
            continue
        if entry == "connect":
            continue  # a CONNECT answer is read by the client's proxy code, not its SDK
        body = answer.json()
        if entry == "reverse_x_api_key":  # the Anthropic SDK's error shape
            assert body["type"] == "error" and body["error"]["type"] == "authentication_error", (kind, body)
            message = body["error"]["message"]
        else:  # the OpenAI SDK's error shape
            message = body["error"]["message"]
            assert body["error"]["code"], (kind, body)
        assert message.startswith("wiretrail: ") and len(message) > 25, (kind, message)
        if len(token) >= 8:
            assert token not in message and token[-16:] not in answer.body.decode(), f"{kind}: the token was echoed"
        auth_header = "proxy-authenticate" if refused_status == 407 else "www-authenticate"
        assert auth_header in {k.lower() for k in answer.headers}, (kind, answer.headers)
    assert not wrong, f"{entry}: wrong answers: {json.dumps(wrong, indent=1)}"

    # Nothing was forwarded: neither upstream saw a request, for any token.
    time.sleep(0.3)
    assert upstream.exchanges == [] and plain.received == []

    # Every attempt is in the trail, with why, and without the token.
    art = wait_for_records(jwt_gateway, lambda a: len([r for r in a.records if r["t"] == "auth.refused"]) >= len(tokens))
    refused = [r for r in art.records if r["t"] == "auth.refused"]
    assert len(refused) == len(tokens)
    assert {r["status"] for r in refused} == {refused_status}
    reasons = {r["reason"] for r in refused}
    assert {"expired", "bad_signature", "bad_issuer", "bad_audience"} <= reasons, reasons
    opened = [r for r in art.records if r["t"] == "session.open"]
    assert all(r["identity"]["authenticated"] is False and r["identity"]["sub"] is None for r in opened)
    assert_never_stored(jwt_gateway, *tokens.values())


def test_the_expected_reasons_for_each_bad_token(jwt_gateway, idp, upstream, plain):
    """The reason recorded (and the message shown) says what is wrong with each token."""
    expected = {
        "expired": "expired", "not_yet_valid": "not_yet_valid", "wrong_iss": "bad_issuer",
        "wrong_aud": "bad_audience", "wrong_secret": "bad_signature", "alg_none": "bad_algorithm",
        "rs256_foreign_key": "bad_signature", "hs256_with_jwks_public_key": "bad_algorithm",
        "unknown_kid": "unknown_key", "garbage": "malformed", "truncated_signature": "bad_signature",
        "no_sub": "no_subject", "empty": "missing", "64kb": "too_large",
    }
    got = {}
    for kind, token in bad_tokens(idp).items():
        answer = via_reverse_bearer(jwt_gateway, upstream, plain, token)
        got[kind] = answer.json()["error"]["code"]
    assert got == expected


def _good_token(idp, groups=("engineering",), **kw) -> str:
    return idp.token("alice", groups=list(groups), email="alice@example.com", **kw)


def test_a_good_token_at_every_entry_point_swaps_in_the_gateway_credential(jwt_gateway, idp, upstream, plain):
    import anthropic
    import openai

    gw = jwt_gateway
    token = _good_token(idp)
    ids = {name: new_test_id() for name in ("connect", "reverse_bearer", "reverse_api_key", "sdk_openai",
                                            "sdk_anthropic", "google_key")}
    proxy = f"http://alice:{token}@127.0.0.1:{gw.proxy_port}"
    answers = []
    with httpx.Client(proxy=proxy, verify=trust(gw), trust_env=False, timeout=TIMEOUT) as c:
        # The agent's placeholder key in every header an SDK might use, and Google's key= parameter.
        answers.append(c.post(upstream.base_url + "/echo?key=" + PLACEHOLDER_KEY, content=b"hello",
                              headers={TEST_ID_HEADER: ids["connect"], "authorization": f"Bearer {PLACEHOLDER_KEY}",
                                       "x-api-key": PLACEHOLDER_KEY, "api-key": PLACEHOLDER_KEY,
                                       "x-goog-api-key": PLACEHOLDER_KEY}))
    answers.append(httpx.post(gw.reverse_url + "/v1/chat/completions", json={"model": "gpt-test", "messages": []},
                              headers={"authorization": f"Bearer {token}", TEST_ID_HEADER: ids["reverse_bearer"]},
                              trust_env=False, timeout=TIMEOUT))
    answers.append(httpx.post(gw.reverse_url + "/v1/messages", json={"model": "c", "max_tokens": 5, "messages": []},
                              headers={"x-api-key": token, "anthropic-version": "2023-06-01",
                                       TEST_ID_HEADER: ids["reverse_api_key"]}, trust_env=False, timeout=TIMEOUT))
    assert [a.status_code for a in answers] == [200, 200, 200], [a.text[:200] for a in answers]
    # The official SDKs: the identity token where the API key goes (reverse), or in the proxy URL.
    oai = openai.OpenAI(base_url=gw.reverse_url + "/v1", api_key=token, max_retries=0,
                        http_client=httpx.Client(trust_env=False, timeout=TIMEOUT),
                        default_headers={TEST_ID_HEADER: ids["sdk_openai"]})
    reply = oai.chat.completions.create(model="gpt-test", messages=[{"role": "user", "content": "hi"}], stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in reply if c.choices)
    ant = anthropic.Anthropic(base_url=upstream.base_url, api_key=PLACEHOLDER_KEY, max_retries=0,
                              http_client=httpx.Client(proxy=proxy, verify=trust(gw), trust_env=False, timeout=TIMEOUT),
                              default_headers={TEST_ID_HEADER: ids["sdk_anthropic"]})
    msg = ant.messages.create(model="claude-test", max_tokens=5, messages=[{"role": "user", "content": "hi"}])
    assert msg.content[0].text
    answers.append(httpx.Response(200))

    for name, test_id in ids.items():
        if name == "google_key":
            continue
        ex = upstream.exchange(test_id)
        sent = json.dumps(ex.headers) + ex.target + ex.body.decode("utf-8", "replace")
        assert ex.header("authorization") == f"Bearer {UPSTREAM_KEY}", name
        assert token not in sent and PLACEHOLDER_KEY not in sent, f"{name}: a client credential reached the upstream"
        for h in ("x-api-key", "api-key", "x-goog-api-key", "proxy-authorization"):
            assert ex.header(h) is None, (name, h)
    assert "key" not in upstream.exchange(ids["connect"]).query

    # Nothing the client received carries the upstream key.
    for a in answers:
        assert UPSTREAM_KEY not in a.text and UPSTREAM_KEY not in json.dumps(dict(a.headers))

    art = wait_for_records(gw, lambda a: all(a.flows_with_test_id(i) for n, i in ids.items() if n != "google_key"))
    for name, test_id in ids.items():
        if name == "google_key":
            continue
        flow = art.flow(test_id)
        assert header(flow.request["headers"], "authorization") == "[credential:fake-llm]", name
        assert flow.request["connection"] == "fake-llm"
    opened = [r for r in art.records if r["t"] == "session.open"]
    assert opened and all(r["identity"]["sub"] == "alice" and r["identity"]["authenticated"] is True
                          and r["identity"]["groups"] == ["engineering"] and r["identity"]["iss"] == ISSUER
                          and r["identity"]["email"] == "alice@example.com" for r in opened)
    assert_never_stored(gw, UPSTREAM_KEY, token, PLACEHOLDER_KEY)


def test_flows_that_arrive_while_the_gateway_starts_wait_for_identity(start_gateway, idp, upstream, plain, key_file):
    # mitmdump accepts connections before wiretrail's addons have run `running`; this script
    # stretches that window to 1.5 s and the flows below land in it. None may pass
    # unauthenticated (a CONNECT let through then is an anonymous tunnel for its whole life),
    # and none may fail for being early.
    gw = start_gateway(config=jwt_config(idp), extra_toml=connections_toml(upstream, plain, key_file),
                       script=SLOW_START_SCRIPT)
    assert "recording sessions" not in gw.log_text()
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        tokenless_connect = pool.submit(via_connect, gw, upstream, plain, "")
        good_plain = pool.submit(via_plain_proxy, gw, upstream, plain, _good_token(idp))
        tokenless_reverse = pool.submit(via_reverse_bearer, gw, upstream, plain, "")
        assert tokenless_connect.result().status == 407
        answer = good_plain.result()
        assert answer.status == 200, answer.body
        assert tokenless_reverse.result().status == 401
    assert len(plain.received) == 1 and upstream.exchanges == []


def test_a_record_only_connection_passes_the_clients_own_key_but_never_the_token(jwt_gateway, idp, upstream, plain):
    token = _good_token(idp)
    answer = via_plain_proxy(jwt_gateway, upstream, plain, token)
    assert answer.status == 200, answer.body
    assert plain.received and len(plain.received) == 1
    sent = json.dumps(plain.received[0]["headers"])
    assert token not in sent and "proxy-authorization" not in sent.lower()
    art = wait_for_records(jwt_gateway, lambda a: any(r["t"] == "http.end" for r in a.records))
    request = next(r for r in art.records if r["t"] == "http.request")
    assert request["connection"] == "plain" and request["mode"] == "regular"
    assert_never_stored(jwt_gateway, token)


def test_a_caller_outside_the_allowed_groups_gets_403_and_is_recorded(jwt_gateway, idp, upstream, plain):
    token = _good_token(idp, groups=("marketing",))
    answer = via_reverse_bearer(jwt_gateway, upstream, plain, token)
    assert answer.status == 403
    assert "engineering" in answer.json()["error"]["message"] and "alice" in answer.json()["error"]["message"]
    # The Anthropic shape for an Anthropic client.
    answer = via_reverse_api_key(jwt_gateway, upstream, plain, token)
    assert answer.status == 403 and answer.json()["error"]["type"] == "permission_error"
    time.sleep(0.3)
    assert upstream.exchanges == []
    art = wait_for_records(jwt_gateway, lambda a: len([r for r in a.records if r["t"] == "auth.refused"]) >= 2)
    refused = [r for r in art.records if r["t"] == "auth.refused"]
    assert [(r["status"], r["reason"]) for r in refused] == [(403, "forbidden")] * 2
    opened = next(r for r in art.records if r["t"] == "session.open")
    assert opened["identity"]["sub"] == "alice" and opened["identity"]["authenticated"] is True
    assert_never_stored(jwt_gateway, token)


def test_an_unregistered_host_is_denied_at_the_connect(start_gateway, idp, upstream, plain, key_file):
    # Only the plain upstream is registered: the TLS upstream's port is not.
    gw = start_gateway(config=jwt_config(idp), extra_toml=f"""
[[connections]]
name = "plain"
hosts = ["127.0.0.1"]
ports = [{plain.port}]
""")
    answer = via_connect(gw, upstream, plain, _good_token(idp))
    assert answer.status == 403 and b"not a registered connection" in answer.body
    time.sleep(0.3)
    assert upstream.exchanges == []
    art = wait_for_records(gw, lambda a: any(r["t"] == "auth.refused" for r in a.records))
    refused = next(r for r in art.records if r["t"] == "auth.refused")
    assert refused["reason"] == "unregistered" and refused["url"] == f"127.0.0.1:{upstream.port}"


def test_an_unregistered_host_under_tunnel_passes_uninspected(start_gateway, idp, upstream, plain, test_ca):
    gw = start_gateway(config=jwt_config(idp, unregistered="tunnel"), extra_toml=f"""
[[connections]]
name = "plain"
hosts = ["127.0.0.1"]
ports = [{plain.port}]
""")
    token = _good_token(idp)
    test_id = new_test_id()
    # The client trusts only the upstream's own CA: the TLS is the upstream's, not the gateway's.
    with httpx.Client(proxy=f"http://alice:{token}@127.0.0.1:{gw.proxy_port}", verify=str(test_ca.cert_path),
                      trust_env=False, timeout=TIMEOUT) as c:
        r = c.post(upstream.base_url + "/echo", content=b"tunnelled body", headers={TEST_ID_HEADER: test_id,
                                                                                    "authorization": "Bearer own"})
    assert r.status_code == 200 and r.content == b"tunnelled body"
    assert upstream.exchange(test_id).header("authorization") == "Bearer own"  # nothing swapped
    art = wait_for_records(gw, lambda a: any(r["t"] == "tunnel" for r in a.records))
    tunnel = next(r for r in art.records if r["t"] == "tunnel")
    assert tunnel["host"] == "127.0.0.1" and tunnel["port"] == upstream.port
    opened = next(r for r in art.records if r["t"] == "session.open")
    assert opened["identity"]["sub"] == "alice"
    assert not [r for r in art.records if r["t"].startswith("http.")]
    assert b"tunnelled body" not in artifact_bytes(gw)


def test_jwks_rotation_and_an_idp_that_goes_down(start_gateway, idp, upstream, plain, key_file):
    gw = start_gateway(config=jwt_config(idp), extra_toml=connections_toml(upstream, plain, key_file))

    def call(token):
        return via_reverse_bearer(gw, upstream, plain, token)

    assert call(_good_token(idp)).status == 200
    # Rotation: a new key is published; a token signed with it is accepted after a refresh.
    new_kid = idp.add_key()
    time.sleep(0.3)  # past jwks_refresh_interval
    assert call(_good_token(idp, kid=new_kid)).status == 200
    # The IdP goes down: keys already fetched keep working, for tokens never seen before too.
    idp.stop()
    assert call(_good_token(idp, kid=new_kid)).status == 200
    assert call(_good_token(idp)).status == 200
    # A key the gateway never saw cannot be checked now: a clear error, and a retryable status.
    unseen = idp.add_key(publish=True)
    time.sleep(0.3)
    answer = call(_good_token(idp, kid=unseen))
    error = answer.json()["error"]
    assert answer.status == 503, answer.body
    assert error["code"] == "idp_unreachable" and "cannot reach" in error["message"], answer.body
    assert len(upstream.exchanges) == 4


def test_credentials_are_reread_on_sighup(jwt_gateway, idp, upstream, plain, key_file):
    token = _good_token(idp)
    first, second = new_test_id(), new_test_id()
    send = lambda tid: httpx.post(jwt_gateway.reverse_url + "/echo", content=b"x", trust_env=False, timeout=TIMEOUT,
                                  headers={"authorization": f"Bearer {token}", TEST_ID_HEADER: tid})
    assert send(first).status_code == 200
    rotated = UPSTREAM_KEY + "-rotated"
    key_file.write_text(rotated + "\n")
    jwt_gateway.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "re-reading upstream credentials" not in jwt_gateway.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert send(second).status_code == 200
    assert upstream.exchange(first).header("authorization") == f"Bearer {UPSTREAM_KEY}"
    assert upstream.exchange(second).header("authorization") == f"Bearer {rotated}"
    assert jwt_gateway.alive()
    assert_never_stored(jwt_gateway, rotated, UPSTREAM_KEY)
    # A rotated credential is not a config change; an edited file is, and only a restart applies it.
    assert "config changed while running" not in jwt_gateway.log_text()
    text = jwt_gateway.config_path.read_text()
    jwt_gateway.config_path.write_text(text.replace("[identity]", "[sessions]\nidle_timeout = 7\n\n[identity]", 1))
    jwt_gateway.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 10
    while "config changed while running" not in jwt_gateway.log_text() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "the config changed while running (sessions); the gateway keeps running on the config it started " \
           "with: restart it to apply the change" in jwt_gateway.log_text()
    assert send(new_test_id()).status_code == 200


def test_a_tunnel_that_outlives_its_token_is_refused_and_closed(start_gateway, idp, upstream, plain, key_file):
    config = jwt_config(idp, leeway=0)
    gw = start_gateway(config=config, extra_toml=connections_toml(upstream, plain, key_file))
    token = _good_token(idp, ttl=2)
    with httpx.Client(proxy=f"http://alice:{token}@127.0.0.1:{gw.proxy_port}", verify=trust(gw),
                      trust_env=False, timeout=TIMEOUT) as c:
        assert c.post(upstream.base_url + "/echo", content=b"1").status_code == 200
        time.sleep(2.5)
        late = c.post(upstream.base_url + "/echo", content=b"2")  # same pooled tunnel
    assert late.status_code == 407 and late.headers.get("connection") == "close"
    assert "expired" in late.json()["error"]["message"]
    assert [ex.body for ex in upstream.exchanges] == [b"1"]


def test_identity_none_warns_and_marks_sessions_unauthenticated(start_gateway, upstream):
    gw = start_gateway()  # the test default: identity mode "none"
    test_id = new_test_id()
    r = httpx.post(gw.reverse_url + "/echo", content=b"x", headers={TEST_ID_HEADER: test_id}, trust_env=False)
    assert r.status_code == 200
    assert "NO AUTHENTICATION" in gw.log_text()
    art = wait_for_records(gw, lambda a: a.flows_with_test_id(test_id))
    opened = next(r for r in art.records if r["t"] == "session.open")
    assert opened["identity"] == {"sub": "anonymous", "email": None, "name": None, "groups": [], "iss": None,
                                  "method": "none", "authenticated": False}
