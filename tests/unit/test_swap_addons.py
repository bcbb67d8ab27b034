"""The identity, policy and credentials addons at hook level, with mitmproxy's taddons/tflow.

Tables of what each addon decides for a request; the end-to-end tests
(tests/e2e/test_identity_e2e.py) run the same addons in a real mitmdump.
"""
import asyncio
import base64

import pytest
from mitmproxy.proxy import mode_specs
from mitmproxy.test import taddons, tflow

from addons.config import WiretrailConfig
from addons.credentials import Credentials
from addons.flow_state import CONNECTION, IDENTITY, INJECTED, REFUSAL
from addons.identity import Identity
from addons.policy import Policy
from recorder.auth.identity import mint_dev_token

SECRET = "s" * 40
UPSTREAM_KEY = "upstream-" + "k" * 20


def config_text(unregistered="deny"):
    return f"""
[storage]
dir = "store"
[identity]
mode = "jwt"
issuer = "dev"
audience = "wt"
hs256_secret = "env:WT_SWAP_TEST_SECRET"
[policy]
unregistered = "{unregistered}"
[[connections]]
name = "llm"
hosts = ["api.example.com"]
credential = "env:WT_SWAP_TEST_KEY"
inject = "bearer"
allow_groups = ["eng"]
[[connections]]
name = "anthropic"
hosts = ["*.anthropic.example"]
credential = "env:WT_SWAP_TEST_KEY"
inject = "x-api-key"
[[connections]]
name = "recordonly"
hosts = ["free.example.com"]
credential = "none"
[[connections]]
name = "cookies"
hosts = ["cookies.example.com"]
credential = "env:WT_SWAP_TEST_KEY"
strip_cookies = false
keep_query = ["Token"]
"""


def token(groups=("eng",), **kw):
    return mint_dev_token(SECRET, sub="alice", groups=groups, issuer="dev", audience="wt", **kw)


def basic(tok):
    return "Basic " + base64.b64encode(f"u:{tok}".encode()).decode()


async def decide(tmp_path, monkeypatch, *, host, headers, reverse=False, unregistered="deny", scheme="https",
                 path="/v1/chat/completions"):
    """Run identity, policy and credentials on one request; return the flow."""
    monkeypatch.setenv("WT_SWAP_TEST_SECRET", SECRET)
    monkeypatch.setenv("WT_SWAP_TEST_KEY", UPSTREAM_KEY)
    cfg_path = tmp_path / "gateway.toml"
    cfg_path.write_text(config_text(unregistered))
    config = WiretrailConfig()
    identity = Identity(config)
    policy = Policy(config, identity)
    credentials = Credentials(config, identity)
    with taddons.context(config, identity, policy, credentials) as tctx:
        tctx.configure(config, wiretrail_config=str(cfg_path))
        for addon in (config, identity, credentials):
            addon.running()
        flow = tflow.tflow()
        if reverse:
            flow.client_conn.proxy_mode = mode_specs.ProxyMode.parse(f"reverse:https://{host}")
        flow.request.host, flow.request.port, flow.request.scheme = host, 443 if scheme == "https" else 80, scheme
        flow.client_conn.sni = host if scheme == "https" else None  # what a client's TLS names
        flow.request.path = path
        flow.request.headers.clear()
        for k, v in headers.items():
            flow.request.headers[k] = v
        await identity.requestheaders(flow)
        await policy.requestheaders(flow)
        credentials.requestheaders(flow)
        return flow


CASES = [
    # (name, host, headers, reverse, expected status or None, expected upstream auth header)
    ("proxy token, injects bearer", "api.example.com", {"proxy-authorization": basic(token()),
     "authorization": "Bearer sk-placeholder", "x-api-key": "sk-placeholder"}, False, None,
     ("authorization", f"Bearer {UPSTREAM_KEY}")),
    ("reverse bearer token", "api.example.com", {"authorization": f"Bearer {token()}"}, True, None,
     ("authorization", f"Bearer {UPSTREAM_KEY}")),
    ("reverse x-api-key, wildcard host, x-api-key injection", "api.anthropic.example",
     {"x-api-key": token(), "anthropic-version": "2023-06-01"}, True, None, ("x-api-key", UPSTREAM_KEY)),
    ("no token in proxy mode", "api.example.com", {}, False, 407, None),
    ("no token in reverse mode", "api.example.com", {}, True, 401, None),
    ("wrong group", "api.example.com", {"proxy-authorization": basic(token(groups=("sales",)))}, False, 403, None),
    ("unregistered host, deny", "evil.example.com", {"proxy-authorization": basic(token())}, False, 403, None),
    ("record-only passes the client's own key", "free.example.com",
     {"proxy-authorization": basic(token()), "authorization": "Bearer client-own"}, False, None,
     ("authorization", "Bearer client-own")),
    ("record-only in reverse strips the token header", "free.example.com",
     {"authorization": f"Bearer {token()}"}, True, None, ("authorization", None)),
    ("never inject over cleartext", "http://api.example.com", {"proxy-authorization": basic(token())}, False, 403,
     None),
]


@pytest.mark.parametrize("name, host, headers, reverse, status, upstream_auth", CASES, ids=[c[0] for c in CASES])
def test_what_goes_upstream(tmp_path, monkeypatch, name, host, headers, reverse, status, upstream_auth):
    scheme, _, host = host.rpartition("://")  # a case names its scheme with the host; https by default
    scheme = scheme or "https"
    flow = asyncio.run(decide(tmp_path, monkeypatch, host=host, headers=headers, reverse=reverse, scheme=scheme))
    sent = dict(flow.request.headers)
    assert "proxy-authorization" not in {k.lower() for k in sent}  # never upstream, refused or not
    if status is not None:
        assert flow.response is not None and flow.response.status_code == status
        assert flow.metadata[REFUSAL]["status"] == status
        return
    assert flow.response is None, flow.response and flow.response.text
    header, value = upstream_auth
    assert flow.request.headers.get(header) == value
    assert "sk-placeholder" not in str(sent)
    assert flow.metadata[IDENTITY].sub == "alice"
    if value is not None and UPSTREAM_KEY in value:
        assert flow.metadata[INJECTED] == {header: flow.metadata[CONNECTION].name}
    else:
        assert INJECTED not in flow.metadata


def test_google_key_query_parameter_is_stripped(tmp_path, monkeypatch):
    flow = asyncio.run(decide(tmp_path, monkeypatch, host="api.example.com", path="/v1/x?key=sk-client&alt=sse",
                              headers={"proxy-authorization": basic(token())}))
    assert "key" not in flow.request.query and flow.request.query["alt"] == "sse"


def test_refusal_body_for_an_openai_client(tmp_path, monkeypatch):
    openai_flow = asyncio.run(decide(tmp_path, monkeypatch, host="api.example.com", reverse=True,
                                     headers={"authorization": "Bearer not-a-token"}))
    assert openai_flow.response.json()["error"]["code"] == "malformed"
    assert openai_flow.response.headers["www-authenticate"].startswith("Bearer")


def test_refusal_body_for_an_anthropic_client(tmp_path, monkeypatch):
    anthropic_flow = asyncio.run(decide(tmp_path, monkeypatch, host="api.anthropic.example", reverse=True,
                                        path="/v1/messages", headers={"x-api-key": "not-a-token",
                                                                      "anthropic-version": "2023-06-01"}))
    body = anthropic_flow.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    assert "not-a-token" not in anthropic_flow.response.text


OWN_KEY = "sk-the-clients-own-key"


@pytest.mark.parametrize("headers", [
    {"authorization": "Bearer {t}", "x-api-key": "{t}"},
    {"x-api-key": "{t}", "api-key": "{t}"},
    {"authorization": "Bearer {t}", "x-goog-api-key": "{t}", "api-key": "{t}", "x-auth-token": "{t}"},
    {"x-api-key": "{t}", "authorization": "Basic {b}"},
    {"x-api-key": "{t}", "x-custom-forward": "{t}"},
], ids=["authorization+x-api-key", "x-api-key+api-key", "four headers", "basic-wrapped", "any header"])
@pytest.mark.parametrize("host", ["free.example.com", "api.example.com"], ids=["record-only", "injecting"])
def test_the_token_never_goes_upstream_in_any_header(tmp_path, monkeypatch, headers, host):
    tok = token()
    b64 = base64.b64encode(f"u:{tok}".encode()).decode()
    sent = {k: v.format(t=tok, b=b64) for k, v in headers.items()}
    sent["private-token"] = OWN_KEY  # the client's own, different key
    flow = asyncio.run(decide(tmp_path, monkeypatch, host=host, headers=sent, reverse=True,
                              path=f"/v1/x?alt=sse&t={tok}"))
    assert flow.response is None and flow.metadata[IDENTITY].sub == "alice"
    upstream = repr(flow.request.headers.fields) + flow.request.path
    assert tok not in upstream and b64 not in upstream
    assert flow.request.path == "/v1/x?alt=sse"
    if host == "free.example.com":
        assert flow.request.headers.get("private-token") == OWN_KEY  # record-only: the client's own key passes
    else:
        assert OWN_KEY not in upstream and flow.request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_the_token_in_the_tunnel_is_removed_too(tmp_path, monkeypatch):
    tok = token()
    flow = asyncio.run(decide(tmp_path, monkeypatch, host="free.example.com",
                              headers={"proxy-authorization": basic(tok), "authorization": f"Bearer {tok}",
                                       "x-api-key": OWN_KEY}))
    assert flow.response is None
    assert tok not in repr(flow.request.headers.fields) and flow.request.headers["x-api-key"] == OWN_KEY


def test_client_credentials_in_query_keys_and_cookies_are_stripped_where_the_gateway_injects(tmp_path, monkeypatch):
    flow = asyncio.run(decide(tmp_path, monkeypatch, host="api.example.com",
                              path="/v1/x?%6bey=sk-a&API_KEY=sk-b&access%5Ftoken=sk-c&alt=sse&token=t",
                              headers={"proxy-authorization": basic(token()), "cookie": f"session={OWN_KEY}"}))
    assert flow.request.path == "/v1/x?alt=sse"
    assert "cookie" not in flow.request.headers


def test_strip_cookies_false_and_keep_query_let_them_pass(tmp_path, monkeypatch):
    flow = asyncio.run(decide(tmp_path, monkeypatch, host="cookies.example.com",
                              path="/v1/x?%6bey=sk-a&token=page-2",
                              headers={"proxy-authorization": basic(token()), "cookie": "affinity=abc"}))
    assert flow.request.path == "/v1/x?token=page-2"
    assert flow.request.headers["cookie"] == "affinity=abc"
    assert flow.request.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"


def test_a_record_only_connection_passes_query_keys_and_cookies(tmp_path, monkeypatch):
    flow = asyncio.run(decide(tmp_path, monkeypatch, host="free.example.com", path="/v1/x?key=sk-own",
                              headers={"proxy-authorization": basic(token()), "cookie": "c=1"}))
    assert flow.request.path == "/v1/x?key=sk-own" and flow.request.headers["cookie"] == "c=1"
