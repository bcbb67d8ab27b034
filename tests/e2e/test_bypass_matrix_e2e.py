"""The bypass matrix (issue 15): every way in is refused, or its marker is on the record.

For each cell of tests/support/bypass_matrix.py (regular and reverse mode; HTTP/1.1, HTTP/2 with
and without request trailers, WebSocket, raw TCP; a registered host by name and by address alias,
an unregistered host; policy.unregistered deny, tunnel, record) a real client sends a unique
marker through a real mitmdump to a real upstream. The upstream's own log of what it received is
the ground truth:

- the marker reached the upstream: it must be in the artifact (read with recorder.forensics.reader), or,
  only for an unregistered host under "tunnel", the store holds a `tunnel` record for it;
- it did not: the client must have been refused.

A marker that reaches the upstream and is not on the record is a bypass, and fails the cell. The
outcome must also be the one the table in docs/integrity.md promises (generated from the same list).

One gateway per policy, shared by the module: it listens in regular mode and on one reverse-mode
listener per protocol and destination (reverse:https:// for HTTP and WebSocket, reverse:tcp://
for raw TCP).
"""
from __future__ import annotations

import base64
import json
import socket
import ssl
import time
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support.artifacts import Artifacts, recorded_body
from tests.support.bypass_matrix import POLICIES, Cell, cells, expected, figures_sentence, markdown_table
from tests.support.checks import wait_until
from tests.support.gateway import Gateway, _accepts, free_ports
from tests.support.h2_client import H2Client
from tests.support.h2_upstream import H2Upstream
from tests.support.raw_upstream import RawUpstream
from tests.support.upstream import FakeUpstream
from tests.support.ws_client import WsClient, WsRefused, connect_tunnel
from tests.support.ws_upstream import FakeWsUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
NAME, ALIAS, UNREGISTERED = "localhost", "127.0.0.1", "127.0.0.1"
RAW_PREFIX = b"\x00\x01RAWPROTO "  # not HTTP: mitmproxy falls back to raw TCP
KINDS = ("http1", "h2", "websocket", "raw-tcp")  # one upstream kind each; h2-trailers uses h2's


def kind_of(protocol: str) -> str:
    return "h2" if protocol == "h2-trailers" else protocol


# -- the upstreams: one registered and one unregistered of each kind --------------------------------


class Upstreams:
    def __init__(self, ca):
        self.ca = ca
        self.servers = {}
        for where in ("registered", "unregistered"):
            self.servers[("http1", where)] = FakeUpstream(ca, sse_events=1, sse_delay=0.01).start()
            self.servers[("h2", where)] = H2Upstream(ca).start()
            self.servers[("websocket", where)] = FakeWsUpstream(ca).start()
            self.servers[("raw-tcp", where)] = RawUpstream().start()

    def get(self, kind: str, destination: str):
        return self.servers[(kind, "unregistered" if destination == "unregistered" else "registered")]

    def port(self, kind: str, destination: str) -> int:
        return self.get(kind, destination).port

    def registered_ports(self) -> list[int]:
        return [self.servers[(k, "registered")].port for k in KINDS]

    def log(self, kind: str, destination: str) -> str:
        """Everything that upstream received, as text: the ground truth."""
        up = self.get(kind, destination)
        if kind == "http1":
            return json.dumps([[ex.target, ex.headers, ex.body.decode("utf-8", "replace"), ex.trailers]
                               for ex in up.exchanges])
        if kind == "h2":
            return json.dumps([[st.headers, st.body.decode("utf-8", "replace"), st.trailers] for st in up.streams])
        if kind == "websocket":
            return json.dumps([[c.path, c.headers, [d.decode("utf-8", "replace") for _, d, _ in c.messages]]
                               for c in up.connections])
        return up.received().decode("utf-8", "replace")

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()


@pytest.fixture(scope="module")
def upstreams(test_ca):
    ups = Upstreams(test_ca)
    yield ups
    ups.stop()


# -- the gateways: one per policy, regular mode plus a reverse listener per kind and destination ----


def host_of(destination: str) -> str:
    return NAME if destination == "name" else ALIAS if destination == "alias" else UNREGISTERED


class MatrixGateway(Gateway):
    def __init__(self, workdir: Path, ups: Upstreams, ca, policy: str):
        self.reverse_specs = {}  # (kind, destination) -> mode spec, ports picked at start
        for kind in KINDS:
            for dest in ("name", "alias", "unregistered"):
                scheme = "tcp" if kind == "raw-tcp" else "https"
                self.reverse_specs[(kind, dest)] = f"{scheme}://{host_of(dest)}:{ups.port(kind, dest)}"
        self.reverse_ports: dict[tuple[str, str], int] = {}
        super().__init__(
            workdir, self.reverse_specs[("http1", "name")], ca.cert_path,
            config={"policy": {"unregistered": policy, "raw_tcp": "record"}},
            extra_toml=f"""
[[connections]]
name = "registered"
hosts = ["{NAME}"]
ports = {ups.registered_ports()}
credential = "none"
inject = "none"
""")

    def command(self) -> list[str]:
        cmd = super().command()
        for key, spec in self.reverse_specs.items():
            if key == ("http1", "name"):
                continue  # the base class's reverse listener
            cmd += ["--mode", f"reverse:{spec}@{self.reverse_ports[key]}"]
        return cmd

    def _start_once(self, timeout: float) -> None:
        ports = free_ports(len(self.reverse_specs) + 2)  # Gateway.start's two ports are replaced here
        self.proxy_port, self.reverse_port = ports[0], ports[1]
        self.reverse_ports = dict(zip(self.reverse_specs, ports[2:]))
        self.reverse_ports[("http1", "name")] = self.reverse_port
        super()._start_once(timeout)
        deadline = time.monotonic() + timeout
        while not all(_accepts(p) for p in self.reverse_ports.values()):
            if time.monotonic() > deadline or not self.alive():
                raise AssertionError(f"the reverse listeners did not come up:\n{self.log_text()}")
            time.sleep(0.05)


@pytest.fixture(scope="module")
def gateways(tmp_path_factory, upstreams, test_ca):
    started = {}
    try:
        for policy in POLICIES:
            gw = MatrixGateway(tmp_path_factory.mktemp(f"matrix-{policy}"), upstreams, test_ca, policy)
            started[policy] = gw.start()  # picks its ports in _start_once; retried if one was taken
        yield started
    finally:
        for gw in started.values():
            if gw.alive():
                gw.stop()


@pytest.fixture(autouse=True)
def _show_gateway_logs(request):
    """A failing cell shows the log of the gateways (tests/conftest.py reads this attribute)."""
    if "gateways" in request.fixturenames:
        setattr(request.node, "_wiretrail_gateways", list(request.getfixturevalue("gateways").values()))


# -- the clients ------------------------------------------------------------------------------------


class Refused(Exception):
    """The gateway refused: status (an HTTP status, or None for a closed connection) and what was said."""

    def __init__(self, status: int | None, detail: str):
        super().__init__(f"{status} {detail[:300]}")
        self.status = status


def client_context(gw: Gateway, ca) -> ssl.SSLContext:
    """Trusts the gateway's CA (interception) and the upstream's (a tunnel passes its certificate)."""
    ctx = ssl.create_default_context(cafile=str(gw.ca_path))
    ctx.load_verify_locations(cafile=str(ca.cert_path))
    return ctx


def reverse_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # the attacker accepts whatever the listener shows
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


def send_http1(gw, cell, ups, ca, marker: str) -> None:
    port = ups.port("http1", cell.destination)
    body = json.dumps({"marker": marker}).encode()
    if cell.mode == "regular":
        client = httpx.Client(proxy=gw.proxy_url, verify=client_context(gw, ca), trust_env=False, timeout=30)
        url = f"https://{host_of(cell.destination)}:{port}/echo"
    else:
        client = httpx.Client(trust_env=False, timeout=30)
        url = f"http://127.0.0.1:{gw.reverse_ports[('http1', cell.destination)]}/echo"
    with client:
        try:
            r = client.post(url, content=body, headers={"content-type": "application/json"})
        except httpx.ProxyError as e:
            raise Refused(int(str(e).split()[0]) if str(e)[:3].isdigit() else None, str(e)) from None
    if r.status_code != 200:
        raise Refused(r.status_code, r.text)
    assert r.content == body, r.content[:300]


def send_h2(gw, cell, ups, ca, marker: str) -> None:
    port = ups.port("h2", cell.destination)
    host = host_of(cell.destination)
    try:
        if cell.mode == "regular":
            client = H2Client(gw.proxy_port, (host, port), None, context=client_context(gw, ca), timeout=10)
        else:
            listener = gw.reverse_ports[("h2", cell.destination)]
            client = H2Client(listener, ("127.0.0.1", listener), None, direct=True, context=reverse_context(),
                              timeout=10)
    except ConnectionError as e:
        status = str(e).split("HTTP/1.1 ", 1)[1][:3] if "HTTP/1.1 " in str(e) else ""
        raise Refused(int(status) if status.isdigit() else None, str(e)) from None
    with client:
        if cell.protocol == "h2-trailers":
            reply = client.request("POST", "/echo", [("content-type", "text/plain")], body=b"a plain body",
                                   trailers=[("x-marker", marker)])
        else:
            reply = client.request("POST", "/echo", [("content-type", "text/plain")], body=f"body {marker}".encode())
        reply.wait(20)
    if reply.status != 200:
        raise Refused(reply.status, f"reset={reply.reset} {reply.body[:300]!r} {client.error}")
    if cell.protocol == "h2-trailers":
        assert ("echo-x-marker", marker) in (reply.trailers or []), reply
    else:
        assert reply.body == f"body {marker}".encode(), reply


def send_websocket(gw, cell, ups, ca, marker: str) -> None:
    port = ups.port("websocket", cell.destination)
    try:
        if cell.mode == "regular":
            target = f"{host_of(cell.destination)}:{port}"
            raw = connect_tunnel(gw, target)
            ctx = client_context(gw, ca)
            ctx.set_alpn_protocols(["http/1.1"])
            sock = ctx.wrap_socket(raw, server_hostname=host_of(cell.destination))
            client = WsClient._upgrade(sock, target, "/echo", (), 10)
        else:
            client = WsClient.direct(gw.reverse_ports[("websocket", cell.destination)], "/echo")
    except WsRefused as e:
        raise Refused(e.status, repr(e.body)) from None
    try:
        client.send_text(f"hello {marker}")
        assert client.recv(1, timeout=20) == [("text", f"hello {marker}".encode())]
    finally:
        client.close()
        client.sock.close()


def send_raw(gw, cell, ups, ca, marker: str) -> None:
    port = ups.port("raw-tcp", cell.destination)
    try:
        if cell.mode == "regular":
            sock = connect_tunnel(gw, f"{host_of(cell.destination)}:{port}")
        else:
            sock = socket.create_connection(("127.0.0.1", gw.reverse_ports[("raw-tcp", cell.destination)]), timeout=10)
    except WsRefused as e:
        raise Refused(e.status, repr(e.body)) from None
    payload = RAW_PREFIX + marker.encode()
    want = b"echo:" + payload
    got = b""
    try:
        sock.settimeout(10)
        sock.sendall(payload)
        while len(got) < len(want):
            data = sock.recv(65536)
            if not data:
                break
            got += data
    except OSError as e:
        raise Refused(None, f"{e!r} after {got!r}") from None
    finally:
        sock.close()
    if got != want:
        raise Refused(None, f"closed after {got!r}")


SENDERS = {"http1": send_http1, "h2": send_h2, "h2-trailers": send_h2, "websocket": send_websocket,
           "raw-tcp": send_raw}


# -- the artifact -----------------------------------------------------------------------------------


def from_client(r: dict) -> bool:
    """A record of what the client sent (the upstreams echo, so a reply holds the marker too:
    only the client's side counts)."""
    t = r.get("t")
    if t == "http.request":
        return True
    if t in ("http.chunk", "http.trailers"):
        return r.get("dir") == "request"
    if t in ("ws.message", "tcp.message"):
        return r.get("from") == "client"
    return False


def marker_in_artifact(store_dir: Path, marker: str) -> bool:
    """The marker in a record of what the client sent, as text or base64, or in a request body
    rebuilt from its chunks."""
    art = Artifacts(store_dir)
    needle = marker.encode()
    for session in art.sessions:
        flows = set()
        for r in session.records:
            if not from_client(r):
                continue
            if isinstance(r.get("flow"), str):
                flows.add(r["flow"])
            if _in_value(r, needle):
                return True
        for flow in flows:
            try:
                if needle in recorded_body(session.records, flow, "request"):
                    return True
            except KeyError:
                pass
    return False


def _in_value(value, needle: bytes) -> bool:
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, str) and "b64" in k:
                try:
                    if needle in base64.b64decode(v):
                        return True
                except ValueError:
                    pass
            if _in_value(v, needle):
                return True
        return False
    if isinstance(value, list):
        return any(_in_value(v, needle) for v in value)
    return isinstance(value, str) and needle.decode() in value


def tunnels(store_dir: Path, port: int) -> int:
    """How many `tunnel` records name this port."""
    return sum(1 for r in Artifacts(store_dir).records if r["t"] == "tunnel" and r.get("port") == port)


# -- the matrix -------------------------------------------------------------------------------------

LIVE = [c for c in cells() if expected(c).outcome != "n/a"]


@pytest.mark.parametrize("cell", LIVE, ids=[c.id for c in LIVE])
def test_every_way_in_is_refused_or_on_the_record(gateways, upstreams, test_ca, cell: Cell):
    gw = gateways[cell.policy]
    kind = kind_of(cell.protocol)
    marker = f"marker-{cell.id}-{uuid.uuid4().hex[:8]}"
    port = upstreams.port(kind, cell.destination)
    tunnels_before = tunnels(gw.store_dir, port)
    refused = None
    try:
        SENDERS[cell.protocol](gw, cell, upstreams, test_ca, marker)
    except Refused as e:
        refused = e
    reached = marker in upstreams.log(kind, cell.destination)
    want = expected(cell)
    if refused is not None:
        # Refused: the client was told, and the upstream's log never saw the marker. Nothing can
        # reach it later: the gateway answered (or closed) instead of forwarding.
        assert not reached, f"{cell.id}: the client was refused ({refused}) but the upstream received the marker"
        outcome = "refused"
        if want.status is not None:
            assert refused.status == want.status, f"{cell.id}: refused with {refused}, expected {want.status}"
    else:
        assert reached, f"{cell.id}: the client got its echo, yet the upstream log has no marker"
        # Wait for the marker on the record, or for the `tunnel` record that says the gateway
        # passed this connection uninspected (then the marker cannot be on the record).
        wait_until(lambda: marker_in_artifact(gw.store_dir, marker) or tunnels(gw.store_dir, port) > tunnels_before,
                   timeout=10)
        if marker_in_artifact(gw.store_dir, marker):
            outcome = "recorded"
        else:
            assert cell.destination == "unregistered" and cell.policy == "tunnel", (
                f"BYPASS {cell.id}: the marker reached the upstream and is not on the record\n"
                f"{Artifacts(gw.store_dir).summary()[-4000:]}")
            assert tunnels(gw.store_dir, port) > tunnels_before, f"{cell.id}: tunnelled without a `tunnel` record"
            outcome = "tunnelled"
    assert outcome == want.outcome, f"{cell.id}: {outcome}, but the table in docs/integrity.md says {want.outcome}"


def test_docs_integrity_holds_the_generated_matrix():
    """docs/integrity.md shows the table this test drives (regenerate: python -m tests.support.bypass_matrix)."""
    doc = (REPO / "docs" / "integrity.md").read_text()
    for generated in (figures_sentence(), markdown_table()):
        assert generated in doc, ("docs/integrity.md: the bypass matrix is missing or stale; "
                                  "paste the output of `python -m tests.support.bypass_matrix`")
