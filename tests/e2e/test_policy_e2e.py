"""Policy by destination and the credential swap, end to end (issue 15, findings 4, 5, 9, 10, 13).

A real mitmdump, the TLS fake upstream (on 127.0.0.1, and ::1 where IPv6 is up) and an
attacker's client on raw sockets: it writes the CONNECT line, the TLS server name (SNI) and the
Host header itself, and accepts any certificate (the gateway's, or the upstream's when a
connection is tunnelled). The upstream's own log of what it received is the ground truth:
a request either is refused, or is on the record; the identity token never reaches the
upstream; an injected credential never goes with a Host or SNI naming another host.
"""
from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import subprocess

import httpx
import pytest

from recorder.auth.identity import mint_dev_token
from tests.support.artifacts import TEST_ID_HEADER, header, store_bytes
from tests.support.checks import wait_for_records
from tests.support.clients import TIMEOUT, new_test_id, read_http_head
from tests.support.gateway import WIRETRAIL
from tests.support.tls import OTHER_NAME, REGISTERED_NAME
from tests.support.upstream import HAS_IPV6_LOOPBACK

pytestmark = pytest.mark.e2e

SECRET = "policy-e2e-" + "s" * 40
UPSTREAM_KEY = "sk-" + "upstream" + hashlib.sha256(b"wiretrail-policy-e2e").hexdigest()[:32]
OWN_KEY = "sk-" + "the-agents-own-key-" + "x" * 12  # the client's own, different API key
POLICIES = ("deny", "tunnel", "record")


@pytest.fixture
def files(tmp_path):
    (tmp_path / "dev.secret").write_text(SECRET)
    (tmp_path / "upstream.key").write_text(UPSTREAM_KEY + "\n")
    return tmp_path


def token(groups=("engineering",)) -> str:
    return mint_dev_token(SECRET, sub="alice", groups=list(groups), issuer="wt-test", audience="wiretrail")


def config(files, unregistered: str) -> dict:
    return {"identity": {"mode": "jwt", "issuer": "wt-test", "audience": "wiretrail",
                         "hs256_secret": f"file:{files / 'dev.secret'}"},
            "policy": {"unregistered": unregistered}}


def injecting(upstream, files, hosts=("127.0.0.1",), ports=True) -> str:
    return f"""
[[connections]]
name = "fake-llm"
hosts = {json.dumps(list(hosts))}
{f"ports = [{upstream.port}]" if ports else ""}
credential = "file:{files / 'upstream.key'}"
inject = "bearer"
allow_groups = ["engineering"]
"""


# -- an attacker's client ----------------------------------------------------------------------


class Answer:
    def __init__(self, status: int, body: bytes, stage: str):
        self.status, self.body, self.stage = status, body, stage

    def __repr__(self):
        return f"{self.stage} {self.status} {self.body[:300]!r}"


def _read_head(sock) -> tuple[int, bytes]:
    status, _headers, rest = read_http_head(sock)
    return status, rest


def _read_all(sock, first: bytes) -> bytes:
    data = first
    try:
        while True:
            more = sock.recv(65536)
            if not more:
                break
            data += more
    except (OSError, ssl.SSLError):
        pass
    return data


def attack(gw, target: str, *, tok: str, test_id: str, sni: str | None = "", host: str | None = None,
           path: str = "/echo", headers: dict | None = None) -> Answer:
    """CONNECT `target` with the identity token, TLS with `sni` (default: the target's host when
    it is a name; None: no SNI), then POST `path` with `Host: host` (default: the target), a
    marker in the body, the test id, and the agent's own API key. Any certificate is accepted."""
    target_host = target.rpartition(":")[0]
    if sni == "":
        sni = None if any(c in target_host for c in "[:") or target_host.replace(".", "").isdigit() else target_host
    auth = base64.b64encode(f"alice:{tok}".encode()).decode()
    s = socket.create_connection(("127.0.0.1", gw.proxy_port), timeout=20)
    try:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
        status, rest = _read_head(s)
        if status != 200:
            return Answer(status, _read_all(s, rest), "connect")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["http/1.1"])
        try:
            t = ctx.wrap_socket(s, server_hostname=sni)
        except (OSError, ssl.SSLError) as e:
            return Answer(0, repr(e).encode(), "tls")
        body = json.dumps({"marker": test_id}).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        t.sendall((f"POST {path} HTTP/1.1\r\nHost: {host or target}\r\n{TEST_ID_HEADER}: {test_id}\r\n"
                   f"authorization: Bearer {OWN_KEY}\r\n{extra}content-type: application/json\r\n"
                   f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body)
        try:
            status, rest = _read_head(t)
        except (OSError, ssl.SSLError) as e:
            return Answer(0, repr(e).encode(), "request")
        return Answer(status, _read_all(t, rest), "request")
    finally:
        s.close()


def upstream_log(upstream) -> str:
    """Everything the upstream received, as text: the ground truth of what went upstream."""
    return json.dumps([{"target": ex.target, "headers": ex.headers, "body": ex.body.decode("utf-8", "replace")}
                       for ex in upstream.exchanges])


def assert_refused_or_recorded(gw, upstream, test_id: str, answer: Answer, tok: str) -> bool:
    """The bypass rule: the request never reached the upstream, or its marker is on the record.
    Returns True if it reached the upstream."""
    log = upstream_log(upstream)
    assert tok not in log, "the identity token reached the upstream"
    got = upstream.received(test_id)
    if not got:
        return False
    art = wait_for_records(gw, lambda a: test_id.encode() in store_bytes(gw.store_dir))
    assert test_id.encode() in store_bytes(gw.store_dir), f"{test_id} reached the upstream unrecorded: {answer}"
    return True


# -- finding 9: an alias of a registered host is that host, under every policy -------------------

ALIASES = ["127.0.0.1", "127.1", "2130706433", "0x7f.0.0.1", "0177.0.0.1", "[::ffff:127.0.0.1]", "[::1]",
           "localhost", "LOCALHOST.", "LocalHost"]


@pytest.mark.parametrize("policy", POLICIES)
def test_every_alias_of_a_registered_host_is_that_host(start_gateway, upstream, files, policy):
    gw = start_gateway(config=config(files, policy), extra_toml=injecting(upstream, files))
    tok = token()
    wrong = {}
    ids = {}
    for alias in ALIASES:
        if alias == "[::1]" and not HAS_IPV6_LOOPBACK:
            continue
        test_id = ids[alias] = new_test_id()
        answer = attack(gw, f"{alias}:{upstream.port}", tok=tok, test_id=test_id)
        reached = assert_refused_or_recorded(gw, upstream, test_id, answer, tok)
        # Treated as the registered host: intercepted, recorded, and the credential swapped.
        if answer.status != 200 or not reached:
            wrong[alias] = repr(answer)
            continue
        ex = upstream.exchange(test_id)
        if ex.header("authorization") != f"Bearer {UPSTREAM_KEY}" or OWN_KEY in upstream_log(upstream):
            wrong[alias] = f"not swapped: {ex.header('authorization')!r}"
    assert not wrong, f"policy {policy}: {json.dumps(wrong, indent=1)}"
    art = wait_for_records(gw, lambda a: all(a.flows_with_test_id(i) and a.flow(i).end for i in ids.values()))
    for alias, test_id in ids.items():
        req = art.flow(test_id).request
        assert req["connection"] == "fake-llm", alias
        assert header(req["headers"], "authorization") == "[credential:fake-llm]", alias
        assert req["dest"]["port"] == upstream.port and req["dest"]["address"] in ("127.0.0.1", "::1"), (alias, req["dest"])
        assert art.flow(test_id).end["address"] == req["dest"]["address"], alias
    assert not [r for r in art.records if r["t"] == "tunnel"]
    assert UPSTREAM_KEY.encode() not in store_bytes(gw.store_dir) and tok.encode() not in store_bytes(gw.store_dir)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_registered_name_is_matched_in_any_case_and_with_a_trailing_dot(start_gateway, upstream, files, policy):
    gw = start_gateway(config=config(files, policy), extra_toml=injecting(upstream, files, hosts=("localhost",)))
    tok = token()
    for spelling in ("LOCALHOST", "localhost.", "LocalHost.", "127.0.0.1", "[::1]"):
        if spelling == "[::1]" and not HAS_IPV6_LOOPBACK:
            continue
        test_id = new_test_id()
        answer = attack(gw, f"{spelling}:{upstream.port}", tok=tok, test_id=test_id)
        assert answer.status == 200, (spelling, answer)
        assert upstream.exchange(test_id).header("authorization") == f"Bearer {UPSTREAM_KEY}", spelling
        assert tok not in upstream_log(upstream) and OWN_KEY not in upstream_log(upstream)


def test_a_reverse_target_that_is_an_alias_is_that_host(start_gateway, upstream, files):
    gw = start_gateway(config=config(files, "deny"), extra_toml=injecting(upstream, files),
                       upstream_url=f"https://localhost:{upstream.port}")
    test_id = new_test_id()
    r = httpx.post(gw.reverse_url + "/echo", content=b"via reverse", trust_env=False, timeout=TIMEOUT,
                   headers={"authorization": f"Bearer {token()}", TEST_ID_HEADER: test_id})
    assert r.status_code == 200, r.text
    assert upstream.exchange(test_id).header("authorization") == f"Bearer {UPSTREAM_KEY}"
    art = wait_for_records(gw, lambda a: a.flows_with_test_id(test_id) and a.flow(test_id).end)
    flow = art.flow(test_id)
    assert flow.request["connection"] == "fake-llm" and flow.request["dest"]["host"] == "localhost"
    assert flow.end["address"] in ("127.0.0.1", "::1")  # where mitmproxy connected, by name


def test_a_destination_that_does_not_resolve_is_refused(start_gateway, upstream, files):
    gw = start_gateway(config=config(files, "tunnel"), extra_toml=injecting(upstream, files))
    test_id = new_test_id()
    answer = attack(gw, f"nowhere.wiretrail.invalid:{upstream.port}", tok=token(), test_id=test_id)
    assert answer.status == 502 and b'"unresolved"' in answer.body, answer  # NXDOMAIN, or a lookup past its deadline
    art = wait_for_records(gw, lambda a: any(r["t"] == "auth.refused" for r in a.records))
    refused = next(r for r in art.records if r["t"] == "auth.refused")
    assert refused["reason"] == "unresolved" and refused["dest"]["host"] == "nowhere.wiretrail.invalid"


# -- finding 10 and 13: the SNI or Host names another host than the CONNECT line ------------------


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("case", ["sni", "host", "sni+host", "absolute-form"])
def test_another_host_inside_a_tunnel_to_a_registered_host_is_refused(start_gateway, upstream, files, policy, case):
    """CONNECT to the registered host, then a TLS SNI, a Host, or an absolute-form request line
    naming another host the same server answers for (a CDN): the injected credential must not
    go with it."""
    gw = start_gateway(config=config(files, policy), extra_toml=injecting(upstream, files))
    tok = token()
    test_id = new_test_id()
    answer = attack(gw, f"127.0.0.1:{upstream.port}", tok=tok, test_id=test_id,
                    sni=OTHER_NAME if "sni" in case else None,
                    host=f"{OTHER_NAME}:{upstream.port}" if "host" in case else None,
                    path=f"https://{OTHER_NAME}:{upstream.port}/echo" if case == "absolute-form" else "/echo")
    assert answer.status == 421 and b"misdirected" in answer.body, answer
    assert upstream.received(test_id) == [] and tok not in upstream_log(upstream)
    art = wait_for_records(gw, lambda a: any(r["t"] == "auth.refused" for r in a.records))
    refused = next(r for r in art.records if r["t"] == "auth.refused")
    assert refused["reason"] == "misdirected" and refused["dest"]["host"] == "127.0.0.1"
    assert UPSTREAM_KEY.encode() not in store_bytes(gw.store_dir)


def h2_request(gw, target: str, *, tok: str, authority: str, test_id: str) -> tuple[int, bytes]:
    """CONNECT `target`, TLS with ALPN h2 only, one h2 POST with `:authority`; (status, body)."""
    import h2.connection
    import h2.events

    auth = base64.b64encode(f"alice:{tok}".encode()).decode()
    s = socket.create_connection(("127.0.0.1", gw.proxy_port), timeout=20)
    with s:
        s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\nProxy-Authorization: Basic {auth}\r\n\r\n".encode())
        assert _read_head(s)[0] == 200
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        ctx.set_alpn_protocols(["h2"])
        t = ctx.wrap_socket(s, server_hostname=None)
        assert t.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection()
        conn.initiate_connection()
        body = json.dumps({"marker": test_id}).encode()
        conn.send_headers(1, [(":method", "POST"), (":scheme", "https"), (":authority", authority),
                              (":path", "/echo"), (TEST_ID_HEADER, test_id), ("content-length", str(len(body)))])
        conn.send_data(1, body, end_stream=True)
        t.sendall(conn.data_to_send())
        status, got = 0, b""
        while True:
            data = t.recv(65536)
            if not data:
                break
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    got += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return status, got
            t.sendall(conn.data_to_send())
        return status, got


def test_an_h2_authority_that_names_another_host_is_refused(start_gateway, upstream, files):
    gw = start_gateway(config=config(files, "record"), extra_toml=injecting(upstream, files))
    tok = token()
    test_id = new_test_id()
    status, body = h2_request(gw, f"127.0.0.1:{upstream.port}", tok=tok, test_id=test_id,
                              authority=f"{OTHER_NAME}:{upstream.port}")
    assert status == 421 and b"misdirected" in body, (status, body)
    assert upstream.received(test_id) == [] and tok not in upstream_log(upstream)
    art = wait_for_records(gw, lambda a: any(r["t"] == "auth.refused" for r in a.records))
    refused = next(r for r in art.records if r["t"] == "auth.refused")
    assert refused["reason"] == "misdirected" and ":authority" in refused["message"]


@pytest.mark.parametrize("policy, case", [("tunnel", "sni"), ("record", "sni"), ("record", "host")])
def test_an_unregistered_destination_named_as_a_registered_host_is_refused(start_gateway, upstream, files, policy,
                                                                            case):
    """CONNECT to an unregistered address with the SNI or Host of a registered host: under
    "tunnel" it is intercepted (not tunnelled untouched) and refused; never recorded under the
    registered name. (A Host inside a tunnelled TLS connection is not seen: docs/identity.md.)"""
    gw = start_gateway(config=config(files, policy), extra_toml=injecting(upstream, files, hosts=(REGISTERED_NAME,),
                                                                           ports=False))
    tok = token()
    test_id = new_test_id()
    answer = attack(gw, f"127.0.0.1:{upstream.port}", tok=tok, test_id=test_id,
                    sni=REGISTERED_NAME if case == "sni" else None,
                    host=f"{REGISTERED_NAME}:{upstream.port}" if case == "host" else None)
    assert answer.status == 421, answer
    assert upstream.received(test_id) == [] and tok not in upstream_log(upstream)
    art = wait_for_records(gw, lambda a: any(r["t"] == "auth.refused" for r in a.records))
    assert not [r for r in art.records if r["t"] == "tunnel"]


def test_the_record_names_the_destination_and_ls_host_filters_by_it(start_gateway, upstream, files):
    """Under "record", an unregistered destination with a Host naming another unregistered host
    is forwarded to the destination: the record says both, and `ls --host` goes by where it went."""
    gw = start_gateway(config=config(files, "record"), extra_toml=injecting(upstream, files, hosts=(REGISTERED_NAME,)))
    tok = token()
    test_id = new_test_id()
    answer = attack(gw, f"127.0.0.1:{upstream.port}", tok=tok, test_id=test_id, host=f"{OTHER_NAME}:{upstream.port}")
    assert answer.status == 200, answer
    assert upstream.exchange(test_id).header("host") == f"{OTHER_NAME}:{upstream.port}"
    assert tok not in upstream_log(upstream)
    art = wait_for_records(gw, lambda a: a.flows_with_test_id(test_id) and a.flow(test_id).end)
    req = art.flow(test_id).request
    assert req["url"].startswith(f"https://{OTHER_NAME}:{upstream.port}/")  # what the client named
    assert req["dest"] == {"host": "127.0.0.1", "port": upstream.port, "address": "127.0.0.1"}
    assert req["connection"] is None

    def ls(host):
        out = subprocess.run([str(WIRETRAIL), "ls", str(gw.store_dir), "--host", host],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout

    session = art.flow(test_id).session.open_record["session"]
    assert session in ls("127.0.0.1")
    assert session not in ls(OTHER_NAME)


# -- finding 4: the identity token never goes upstream -------------------------------------------------


@pytest.mark.parametrize("headers", [
    {"authorization": "Bearer {t}", "x-api-key": "{t}"},
    {"x-api-key": "{t}", "api-key": "{t}"},
    {"api-key": "{t}", "x-goog-api-key": "{t}", "x-auth-token": "{t}"},
], ids=["authorization+x-api-key", "x-api-key+api-key", "three api-key headers"])
def test_the_token_in_several_headers_never_reaches_a_record_only_upstream(start_gateway, upstream, files, headers):
    gw = start_gateway(config=config(files, "deny"), extra_toml=f"""
[[connections]]
name = "record-only"
hosts = ["127.0.0.1"]
ports = [{upstream.port}]
credential = "none"
""")
    tok = token()
    test_id = new_test_id()
    sent = {k: v.format(t=tok) for k, v in headers.items()}
    r = httpx.post(gw.reverse_url + "/v1/messages", json={"model": "m", "messages": []}, trust_env=False,
                   timeout=TIMEOUT, headers={**sent, "private-token": OWN_KEY, TEST_ID_HEADER: test_id})
    assert r.status_code == 200, r.text
    ex = upstream.exchange(test_id)
    assert tok not in upstream_log(upstream)
    assert ex.header("private-token") == OWN_KEY  # the client's own, different key passes
    art = wait_for_records(gw, lambda a: a.flows_with_test_id(test_id))
    assert header(art.flow(test_id).request["headers"], "private-token").startswith("[MASKED:private-token:")
    assert tok.encode() not in store_bytes(gw.store_dir) and OWN_KEY.encode() not in store_bytes(gw.store_dir)


@pytest.mark.parametrize("policy", ["record", "deny"])
def test_the_token_inside_a_tunnel_never_reaches_the_upstream(start_gateway, upstream, files, policy):
    """The token on the CONNECT, and again in Authorization and x-api-key inside the tunnel (an
    agent whose API key variable holds the token): record-only, or unregistered under "record"."""
    extra = "" if policy == "record" else f"""
[[connections]]
name = "record-only"
hosts = ["127.0.0.1"]
ports = [{upstream.port}]
credential = "none"
"""
    gw = start_gateway(config=config(files, policy), extra_toml=extra)
    tok = token()
    test_id = new_test_id()
    answer = attack(gw, f"127.0.0.1:{upstream.port}", tok=tok, test_id=test_id,
                    headers={"x-api-key": tok, "api-key": f"Bearer {tok}"})
    assert answer.status == 200, answer
    assert upstream.received(test_id) and tok not in upstream_log(upstream)


# -- finding 5: the client's own credentials do not pass where the gateway injects ---------------------


def test_client_credentials_in_query_keys_and_cookies_never_reach_an_injecting_upstream(start_gateway, upstream,
                                                                                         files):
    gw = start_gateway(config=config(files, "deny"), extra_toml=injecting(upstream, files))
    tok = token()
    test_id = new_test_id()
    query = "&".join(f"{k}={OWN_KEY}-{i}" for i, k in enumerate(
        ["%6bey", "%6Bey", "KEY", "Api_Key", "api-key", "access%5Ftoken", "%2561pi_key", "x-goog-api-key", "TOKEN"]))
    answer = attack(gw, f"127.0.0.1:{upstream.port}", tok=tok, test_id=test_id, path=f"/echo?alt=sse&{query}",
                    headers={"cookie": f"session={OWN_KEY}-cookie; other=1", "x-api-key": OWN_KEY})
    assert answer.status == 200, answer
    ex = upstream.exchange(test_id)
    assert OWN_KEY not in upstream_log(upstream) and tok not in upstream_log(upstream)
    assert ex.query == {"alt": "sse"} and ex.header("cookie") is None
    assert ex.header("authorization") == f"Bearer {UPSTREAM_KEY}"
    art = wait_for_records(gw, lambda a: a.flows_with_test_id(test_id))
    assert art.flow(test_id).request["url"].endswith("/echo?alt=sse")


def test_strip_cookies_false_lets_the_clients_cookies_pass(start_gateway, upstream, files):
    gw = start_gateway(config=config(files, "deny"),
                       extra_toml=injecting(upstream, files) + 'strip_cookies = false\nkeep_query = ["token"]\n')
    test_id = new_test_id()
    answer = attack(gw, f"127.0.0.1:{upstream.port}", tok=token(), test_id=test_id, path="/echo?token=page-2&key=k",
                    headers={"cookie": "affinity=node-7"})
    assert answer.status == 200, answer
    ex = upstream.exchange(test_id)
    assert ex.header("cookie") == "affinity=node-7" and ex.query == {"token": "page-2"}
    art = wait_for_records(gw, lambda a: a.flows_with_test_id(test_id))
    assert header(art.flow(test_id).request["headers"], "cookie").startswith("[MASKED:cookie:")
