"""Bytes that are not HTTP, to a registered host, through a real gateway: refused by default,
recorded with policy.raw_tcp = "record". The raw upstreams' own logs are the ground truth.

Ways in: non-HTTP bytes in a CONNECT tunnel without TLS, the same after TLS, and an HTTP 101
upgrade to a protocol that is not WebSocket (mitmproxy relays raw TCP after it).
"""
from __future__ import annotations

import socket
import ssl
import time

import pytest

from tests.support.artifacts import Artifacts, store_bytes
from tests.support.disk import fill, small_tmpfs
from tests.support.idp import AUDIENCE, ISSUER, LocalIdP
from tests.support.raw_upstream import RawUpstream
from tests.support.ws_client import connect_tunnel
from tests.support.ws_upstream import FakeWsUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

RAW = b"\x00\x01RAWPROTO hello\x02\x03"  # not HTTP: mitmproxy falls back to raw TCP


@pytest.fixture
def idp():
    with LocalIdP() as server:
        yield server


@pytest.fixture
def plain_raw():
    up = RawUpstream().start()
    yield up
    up.stop()


@pytest.fixture
def tls_raw(test_ca):
    up = RawUpstream(test_ca, tls=True).start()
    yield up
    up.stop()


@pytest.fixture
def upgrader(test_ca):
    up = FakeWsUpstream(test_ca).start()
    yield up
    up.stop()


def raw_gateway(start_gateway, idp, ports, **policy):
    return start_gateway(
        config={"identity": {"mode": "jwt", "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": idp.jwks_url},
                "policy": {"unregistered": "deny", **policy}},
        extra_toml=f"""
[[connections]]
name = "raw-svc"
hosts = ["127.0.0.1"]
ports = {list(ports)}
credential = "none"
inject = "none"
""")


def tunnel(gw, port: int, token: str, tls: bool = False) -> socket.socket:
    sock = connect_tunnel(gw, f"127.0.0.1:{port}", token)
    if tls:
        ctx = ssl.create_default_context(cafile=str(gw.ca_path))
        sock = ctx.wrap_socket(sock, server_hostname="127.0.0.1")
    sock.settimeout(10)
    return sock


def read_until_closed(sock: socket.socket, timeout: float = 10.0) -> tuple[bytes, bool]:
    """Everything the gateway sends until it closes the connection: (data, closed)."""
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            sock.settimeout(max(0.05, deadline - time.monotonic()))
            chunk = sock.recv(65536)
        except (socket.timeout, TimeoutError):
            return data, False
        except (ConnectionResetError, ssl.SSLError, OSError):
            return data, True
        if not chunk:
            return data, True
        data += chunk
    return data, False


def read_exactly(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def refusals(art: Artifacts) -> list[dict]:
    return [r for r in art.records if r["t"] == "tcp.refused"]


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "after-tls"])
def test_raw_tcp_to_a_registered_host_is_refused_by_default(start_gateway, idp, plain_raw, tls_raw, tls):
    up = tls_raw if tls else plain_raw
    gw = raw_gateway(start_gateway, idp, [plain_raw.port, tls_raw.port])
    sock = tunnel(gw, up.port, idp.token("alice"), tls=tls)
    try:
        sock.sendall(RAW)
        data, closed = read_until_closed(sock)
    finally:
        sock.close()
    assert closed and data == b"", (closed, data)
    assert gw.stop() == 0
    assert up.received() == b"" and up.connections == []  # nothing reached the upstream
    found = refusals(Artifacts(gw.store_dir))
    assert len(found) == 1, Artifacts(gw.store_dir).summary()
    assert found[0]["reason"] == "raw_tcp" and found[0]["port"] == up.port and found[0]["connection"] == "raw-svc"
    assert "policy.raw_tcp" in gw.log_text()


@pytest.mark.parametrize("tls", [False, True], ids=["plain", "after-tls"])
def test_raw_tcp_is_recorded_both_ways_when_the_policy_says_record(start_gateway, idp, plain_raw, tls_raw, tls):
    up = tls_raw if tls else plain_raw
    gw = raw_gateway(start_gateway, idp, [plain_raw.port, tls_raw.port], raw_tcp="record")
    sock = tunnel(gw, up.port, idp.token("alice"), tls=tls)
    sock.sendall(RAW)
    assert read_exactly(sock, len(b"echo:" + RAW)) == b"echo:" + RAW
    second = b"\x7fsecond read \xff"
    sock.sendall(second)
    assert read_exactly(sock, len(b"echo:" + second)) == b"echo:" + second
    sock.close()
    assert up.wait_for(lambda u: u.connections and u.connections[0].closed)
    assert gw.stop() == 0
    assert up.received() == RAW + second

    art = Artifacts(gw.store_dir)
    recs = [r for r in art.records if r["t"].startswith("tcp.")]
    assert [r["t"] for r in recs][0] == "tcp.open" and recs[-1]["t"] == "tcp.close", art.summary()
    opened = recs[0]
    assert opened["host"] == "127.0.0.1" and opened["port"] == up.port and opened["connection"] == "raw-svc"
    assert opened["via"] == "connect"
    client = b"".join(decode(r) for r in recs if r["t"] == "tcp.message" and r["from"] == "client")
    server = b"".join(decode(r) for r in recs if r["t"] == "tcp.message" and r["from"] == "server")
    assert client == RAW + second and server == b"echo:" + RAW + b"echo:" + second
    assert recs[-1]["size"] == {"client": len(RAW + second), "server": len(server)}
    assert all(s.state in ("closed", "sealed") for s in art.sessions), art.summary()


def decode(rec: dict) -> bytes:
    import base64
    body = rec["body"]
    return body["text"].encode() if "text" in body else base64.b64decode(body["b64"])


def upgrade(gw, upgrader, token: str) -> ssl.SSLSocket:
    sock = tunnel(gw, upgrader.port, token, tls=True)
    sock.sendall(b"GET /raw HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: foo\r\nConnection: Upgrade\r\n\r\n")
    return sock


def test_an_upgrade_to_another_protocol_than_websocket_is_refused_by_default(start_gateway, idp, upgrader):
    gw = raw_gateway(start_gateway, idp, [upgrader.port])
    sock = upgrade(gw, upgrader, idp.token("alice"))
    data, closed = read_until_closed(sock)
    sock.close()
    assert closed and b"101" not in data, data  # the 101 never reached the client
    conn = upgrader.connection()
    assert conn.path == "/raw" and conn.raw == b""  # the upstream got the request, never a raw byte
    assert gw.stop() == 0
    art = Artifacts(gw.store_dir)
    flows = [f for f in art.flows() if f.request is not None]
    assert len(flows) == 1
    flow = flows[0]
    assert flow.response["status"] == 101
    assert [e["phase"] for e in flow.errors] == ["response"] and "'foo'" in flow.errors[0]["message"]
    assert not [r for r in art.records if r["t"].startswith("tcp.")]


def test_an_upgrade_to_another_protocol_is_recorded_as_raw_tcp_when_the_policy_says_record(
        start_gateway, idp, upgrader):
    gw = raw_gateway(start_gateway, idp, [upgrader.port], raw_tcp="record")
    sock = upgrade(gw, upgrader, idp.token("alice"))
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101")
    sock.sendall(RAW)
    assert read_exactly(sock, len(b"echo:" + RAW)) == b"echo:" + RAW
    sock.close()
    conn = upgrader.connection()
    assert conn.wait(lambda c: c.closed is not None)
    assert gw.stop() == 0
    assert conn.raw == RAW
    art = Artifacts(gw.store_dir)
    http_flow = [f for f in art.flows() if f.request is not None][0]
    opened = [r for r in art.records if r["t"] == "tcp.open"]
    assert len(opened) == 1 and opened[0]["via"] == "upgrade" and opened[0]["upgrade_of"] == http_flow.flow
    tcp_flow = opened[0]["flow"]
    client = b"".join(decode(r) for r in art.records if r["t"] == "tcp.message" and r["flow"] == tcp_flow
                      and r["from"] == "client")
    assert client == RAW


def test_raw_client_bytes_that_cannot_be_recorded_are_not_forwarded(tmp_path, start_gateway, idp, plain_raw):
    with small_tmpfs(tmp_path) as mnt:
        gw = start_gateway(
            config={"identity": {"mode": "jwt", "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": idp.jwks_url},
                    "policy": {"unregistered": "deny", "raw_tcp": "record"}, "storage": {"dir": mnt / "store"}},
            extra_toml=f"""
[[connections]]
name = "raw-svc"
hosts = ["127.0.0.1"]
ports = [{plain_raw.port}]
credential = "none"
inject = "none"
""")
        sock = tunnel(gw, plain_raw.port, idp.token("alice"))
        sock.sendall(RAW)
        assert read_exactly(sock, len(b"echo:" + RAW)) == b"echo:" + RAW
        filler = fill(mnt)
        import os
        big = b"\x00" + os.urandom(64 * 1024)  # incompressible: no block has room for its record
        sock.sendall(big)
        data, closed = read_until_closed(sock, timeout=15)
        sock.close()
        assert closed and data == b"", (closed, len(data))
        assert plain_raw.wait_for(lambda u: u.connections and u.connections[0].closed)
        assert plain_raw.received() == RAW  # the upstream never got a byte of the refused read
        filler.unlink()
        assert gw.stop() == 0
        assert "cannot record (disk full)" in gw.log_text()
        assert big[1:100] not in store_bytes(mnt / "store")
