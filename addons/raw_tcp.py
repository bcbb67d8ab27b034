"""Raw TCP and other protocols: recorded (policy.raw_tcp = "record") or refused, never passed unseen.

mitmproxy relays bytes it does not recognise as HTTP without any request hook. This addon
sees every such connection where it is decided:

- next_layer: mitmproxy has picked a raw layer (TCP, UDP, DNS, QUIC) for a connection: non-HTTP
  bytes in a tunnel, with or without TLS, an unknown ALPN, a reverse tcp:// or tls:// listener,
  `tcp_hosts`, `ignore_hosts`. recorder/policy/raw_policy.py decides; a refusal puts a layer in its
  place that closes the client connection before anything reaches the upstream.
- response: an HTTP 101 that switches to anything but WebSocket (mitmproxy then relays raw TCP);
  refused by killing the flow before the 101 is forwarded, or let through to be recorded.
- tcp_start / tcp_message / tcp_end / tcp_error: what is recorded is recorded here. A client
  read is written before it is forwarded; if it cannot be, it is not sent and both connections
  are closed (addons/layers.py guard_tcp).
"""
from __future__ import annotations

import logging
import time
import weakref

from mitmproxy import ctx, http, tcp
from mitmproxy.proxy import layer, layers

from addons.capture import NOT_RESPONDING, Capture
from addons.config import WiretrailConfig
from addons.flow_state import set_killed
from addons.identity import Identity, identity_of
from addons.layers import RefusedLayer, find_layer, guard_tcp, protocol_of, raw_layer_in
from addons.masking import Masking
from addons.policy import Policy, connection_of
from recorder.auth.identity import ANONYMOUS
from recorder.policy.raw_policy import RawDecision, decide_raw
from recorder.protocols.websocket import (
    TcpState,
    tcp_close_fields,
    tcp_message_fields,
    tcp_open_fields,
    tcp_refused_fields,
)
from recorder.store.records import TCP_CLOSE, TCP_MESSAGE, TCP_OPEN, TCP_REFUSED

log = logging.getLogger("wiretrail")


class _Decided:
    """What was decided for a raw flow before its tcp_start."""

    __slots__ = ("decision", "identity", "via", "upgrade_of")

    def __init__(self, decision: RawDecision, identity, via: str, upgrade_of: str | None = None):
        self.decision, self.identity, self.via, self.upgrade_of = decision, identity, via, upgrade_of


class RawTcp:
    def __init__(self, config: WiretrailConfig, identity: Identity, policy: Policy, capture: Capture,
                 masking: Masking | None = None):
        self.config_addon = config
        self.identity = identity
        self.policy = policy  # destinations: by name and by address, as for HTTP
        self.capture = capture
        self.masking = masking
        self.decided: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # TCPFlow -> _Decided
        self.flows: dict[str, TcpState] = {}  # tcp flow id -> what is being recorded
        self.upgrades: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # client conn -> _Decided (a 101)

    # -- deciding -----------------------------------------------------------------------------

    def _caller(self, client):
        ident = self.identity.identity_of_client(client)
        verifier_on = self.identity.verifier is not None
        return ident, (not verifier_on) or ident is not ANONYMOUS

    def next_layer(self, nextlayer: layer.NextLayer):
        if nextlayer.layer is None:
            # mitmproxy's own NextLayer addon comes after the scripts: let it decide first, then check.
            builtin = ctx.master.addons.get("nextlayer")
            if builtin is not None:
                builtin.next_layer(nextlayer)
        top = nextlayer.layer
        raw = raw_layer_in(top) if top is not None else None
        if raw is None:
            return
        context = nextlayer.context
        protocol = protocol_of(raw)
        ignored = isinstance(raw, layers.TCPLayer) and raw.flow is None
        address = context.server.address
        host, port = (address[0], address[1]) if address else (None, None)
        ident, authenticated = self._caller(context.client)
        conn = self.policy.connection_now(context.client, host, port) if host and port else None
        decision = decide_raw(self.config_addon.current, host, port, conn, protocol=protocol, identity=ident,
                              authenticated=authenticated, ignored=ignored)
        if decision.action == "tunnel":
            if ignored:
                return  # mitmproxy passes it untouched (ignore_hosts), to an unregistered host
            if raw is top:
                nextlayer.layer = layers.TCPLayer(context, ignore=True)
                self.capture.record_tunnel(context.client, host, port, ident)
                return
            decision = RawDecision("refuse", None, "tunnel", f"raw {protocol.upper()} to {host}:{port} "
                                   "inside another protocol cannot be tunnelled")
        if decision.action == "refuse":
            nextlayer.layer = RefusedLayer(context, decision.message)
            self._record_refused(context.client, host, port, decision, protocol, ident)
            return
        # record
        self.decided[raw.flow] = _Decided(decision, ident, _via(context))
        guard_tcp(raw, lambda f=raw.flow: self._refused(f))

    def response(self, flow: http.HTTPFlow):
        resp = flow.response
        if resp is None or resp.status_code != 101 or flow.websocket is not None or flow.error is not None:
            return
        # mitmproxy relays raw TCP after a 101 that is not a WebSocket upgrade.
        upgrade = resp.headers.get("upgrade") or "(none)"
        ident = identity_of(flow)
        decision = decide_raw(self.config_addon.current, flow.request.host, flow.request.port, connection_of(flow),
                              identity=ident)
        if decision.action != "record":
            why = (f"the upstream switched protocols to {upgrade!r}, which is not WebSocket; "
                   f"the gateway does not forward it: {decision.message or 'it cannot be recorded'}")
            set_killed(flow, why)
            log.warning(f"wiretrail: refused: {why} ({flow.request.pretty_url})")
            flow.kill()
            return
        self.upgrades[flow.client_conn] = _Decided(decision, ident, "upgrade", flow.id)

    # -- recording --------------------------------------------------------------------------

    def tcp_start(self, flow: tcp.TCPFlow):
        decided = self.decided.pop(flow, None)
        if decided is None:
            decided = self.upgrades.pop(flow.client_conn, None)
            tcp_layer = find_layer(flow.client_conn, layers.TCPLayer, flow)
            if tcp_layer is not None:
                guard_tcp(tcp_layer, lambda f=flow: self._refused(f))
        cap = self.capture
        if decided is None or cap.registry is None or cap.stopped:
            # A raw flow nobody decided on: nothing of it passes.
            self.flows[flow.id] = _refused_state(flow, "wiretrail did not decide on this raw connection")
            return
        ident = decided.identity or ANONYMOUS
        peer = flow.client_conn.peername or ("", 0)
        session = cap.registry.begin_flow(ident.key(), ident.record(), (peer[0], peer[1]))
        st = TcpState(flow.id, session, self.masking.masker if self.masking else None, cap.cfg.capture.max_body,
                      started=time.time())
        self.flows[flow.id] = st
        address = flow.server_conn.address or (None, None)
        conn = decided.decision.connection
        session.record(TCP_OPEN, tcp_open_fields(
            flow.id, flow.client_conn.id, conn.name if conn else None, flow.client_conn.proxy_mode.type_name,
            address[0], address[1], decided.via, decided.upgrade_of, flow.client_conn.sni,
            flow.client_conn.alpn.decode("ascii", "replace") if flow.client_conn.alpn else None,
        ))

    async def tcp_message(self, flow: tcp.TCPFlow):
        msg = flow.messages[-1]
        st = self.flows.get(flow.id)
        if st is None or st.refused is not None or st.session is None:
            msg.content = b""  # not recorded, not forwarded
            del flow.messages[:-1]
            if st is not None and st.refused is None:
                st.refused = "not recorded"
            return
        cap = self.capture
        data = msg.content
        if msg.from_client:
            err = await cap.write_and_wait(st.session, TCP_MESSAGE,
                                            tcp_message_fields(st, "client", data, final=True))
            if err is not None:
                if getattr(err, "cause", None) != NOT_RESPONDING:
                    cap.registry.mark_failed(st.session, err)
                if cap.cfg.storage.fail_closed:
                    msg.content = b""
                    st.refused = f"wiretrail could not record the client's bytes, so they were not forwarded ({err})"
                    log.error(f"wiretrail: closing a raw TCP connection: {st.refused}")
                else:
                    log.warning(f"wiretrail: UNRECORDED raw TCP bytes: {err}")
        else:
            st.session.record(TCP_MESSAGE, tcp_message_fields(st, "server", data, final=False), ts=msg.timestamp)
        del flow.messages[:-1]  # handed over: mitmproxy would keep every read (later addons read the last)

    def tcp_end(self, flow: tcp.TCPFlow):
        self._close(flow, None)

    def tcp_error(self, flow: tcp.TCPFlow):
        self._close(flow, flow.error.msg if flow.error else "error")

    def done(self):
        for flow_id in list(self.flows):
            st = self.flows.pop(flow_id)
            if st.session is not None and not st.ended:
                self._record_close(st, "the gateway shut down")

    def block_failed(self, hook: str, arg) -> None:
        if hook == "next_layer":
            if arg.layer is not None:
                arg.layer = RefusedLayer(arg.context, "wiretrail could not decide on this connection")
        elif hook in ("tcp_start", "tcp_message"):
            if arg.messages:
                arg.messages[-1].content = b""
                del arg.messages[:-1]
            st = self.flows.get(arg.id)
            if st is None:
                self.flows[arg.id] = _refused_state(arg, f"{hook} failed")
            elif st.refused is None:
                st.refused = f"wiretrail could not check this connection ({hook} failed)"

    # -- helpers ------------------------------------------------------------------------------

    def _refused(self, flow) -> str | None:
        st = self.flows.get(flow.id)
        return st.refused if st is not None else "not recorded"

    def _close(self, flow: tcp.TCPFlow, error: str | None) -> None:
        st = self.flows.pop(flow.id, None)
        if st is None or st.session is None or st.ended:
            return
        self._record_close(st, error or st.refused)

    def _record_close(self, st: TcpState, error: str | None) -> None:
        st.ended = True
        if not st.session.closed:
            if st.counts["server"]:
                # The server's stream ends: the writer releases what masking held back of it.
                st.session.record(TCP_MESSAGE, tcp_message_fields(st, "server", b"", final=True))
            st.session.record(TCP_CLOSE, tcp_close_fields(st, ended=time.time(), error=error))
        self.capture.registry.end_flow(st.session)

    def _record_refused(self, client, host, port, decision: RawDecision, protocol: str, ident) -> None:
        cap = self.capture
        log.warning(f"wiretrail: refused {protocol} to {host}:{port}: {decision.message}")
        if cap.registry is None or cap.stopped:
            return
        peer = client.peername or ("", 0)
        ident = ident or ANONYMOUS
        session = cap.registry.begin_flow(ident.key(), ident.record(), (peer[0], peer[1]))
        conn = decision.connection
        session.record(TCP_REFUSED, tcp_refused_fields(
            client.id, host, port, conn.name if conn else None, protocol, decision.reason, decision.message))
        cap.registry.end_flow(session)


def _via(ctx) -> str:
    mode = ctx.client.proxy_mode.type_name
    if mode == "regular":
        return "connect"
    return mode


def _refused_state(flow, why: str) -> TcpState:
    st = TcpState(flow.id, None)
    st.refused = why
    return st
