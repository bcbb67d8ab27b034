"""mitmproxy's protocol layers, where an addon hook cannot reach: closing what may not pass.

Hooks can drop a WebSocket message or blank a TCP read, but not close a connection. The
gateway needs that when a message cannot be recorded (rule 2) and when a connection speaks
something it does not record. Three tools, all on mitmproxy 11.0.2's layer API:

- `RefusedLayer`: put in place of the layer mitmproxy chose (next_layer); it closes the
  client connection at once, before anything reaches the upstream.
- `guard_tcp`: wraps a TCPLayer so that a read the gateway refused is not sent, and both
  connections are closed.
- `close_websocket`: makes a WebsocketLayer close both sides with a close code and reason,
  through mitmproxy's own close path.
"""
from __future__ import annotations

import logging

import wsproto.events
from mitmproxy import ctx
from mitmproxy import flow as mflow
from mitmproxy import websocket as mwebsocket
from mitmproxy.proxy import commands, events, layer, layers
from mitmproxy.proxy.layers.tcp import TcpErrorHook
from mitmproxy.proxy.layers.websocket import WebsocketLayer, WebSocketMessageInjected

log = logging.getLogger("wiretrail")

RAW_LAYERS = (layers.TCPLayer, layers.UDPLayer, layers.DNSLayer, layers.RawQuicLayer)


class RefusedLayer(layer.Layer):
    """Closes the client connection on its first event; nothing is relayed."""

    def __init__(self, context, message: str):
        super().__init__(context)
        self.message = message
        self.closed = False

    def _handle_event(self, event: events.Event) -> layer.CommandGenerator[None]:
        if not self.closed:
            self.closed = True
            yield commands.Log(f"wiretrail: refused: {self.message}", logging.WARNING)
            yield commands.CloseConnection(self.context.client)
        yield from ()


def raw_layer_in(top) -> layer.Layer | None:
    """The raw relay layer (TCP, UDP, DNS, QUIC) in a stack mitmproxy decided on, if any."""
    seen = 0
    current = top
    while current is not None and seen < 16:
        if isinstance(current, RAW_LAYERS):
            return current
        current = getattr(current, "child_layer", None)
        seen += 1
    return None


def protocol_of(raw) -> str:
    if isinstance(raw, layers.UDPLayer):
        return "udp"
    if isinstance(raw, layers.DNSLayer):
        return "dns"
    if isinstance(raw, layers.RawQuicLayer):
        return "quic"
    return "tcp"


def _children(node):
    for name in ("child_layer", "layer"):
        child = getattr(node, name, None)
        if isinstance(child, layer.Layer):
            yield child
    for name in ("_handle_event", "_handle"):  # a layer that hands its events to a child it keeps nowhere else
        child = getattr(getattr(node, name, None), "__self__", None)
        if isinstance(child, layer.Layer) and child is not node:
            yield child
    streams = getattr(node, "streams", None)
    if isinstance(streams, dict):
        yield from streams.values()


def find_layer(client_conn, kind: type, flow) -> object | None:
    """The layer of `kind` that carries `flow` on this client connection, by walking its stack."""
    try:
        handler = ctx.master.addons.get("proxyserver").connections.get(client_conn.id)
    except Exception:
        return None
    if handler is None:
        return None
    stack, seen = [handler.layer], set()
    while stack:
        node = stack.pop()
        if id(node) in seen or len(seen) > 256:
            continue
        seen.add(id(node))
        if isinstance(node, kind) and getattr(node, "flow", None) is flow:
            return node
        stack.extend(_children(node))
    return None


def guard_tcp(tcp_layer, refused) -> None:
    """From now on, a read the hooks refused (`refused()` gives the reason) is not sent on:
    the flow gets its tcp_error and both connections are closed. Installed before the
    layer starts relaying (its `start` looks `relay_messages` up on the instance)."""
    original = tcp_layer.relay_messages

    def relay(event):
        gen = original(event)
        reply = None
        while True:
            try:
                cmd = gen.send(reply)
            except StopIteration:
                return
            reason = refused()
            if reason and isinstance(cmd, commands.SendData):
                gen.close()
                yield from _close_tcp(tcp_layer, reason)
                return
            reply = yield cmd

    tcp_layer.relay_messages = relay


def _close_tcp(tcp_layer, reason: str):
    f = tcp_layer.flow
    if f is not None and f.error is None:
        f.error = mflow.Error(reason)
        yield TcpErrorHook(f)
        f.live = False
    for conn in (tcp_layer.context.server, tcp_layer.context.client):
        if conn.connected:
            yield commands.CloseConnection(conn)
    tcp_layer._handle_event = tcp_layer.done


def close_websocket(flow, code: int, reason: str) -> bool:
    """Close the flow's WebSocket on both sides with `code` and `reason`. Call it from a
    websocket_message hook after dropping the message. False if its layer is not found."""
    ws_layer = find_layer(flow.client_conn, WebsocketLayer, flow)
    if ws_layer is None:
        return False
    # The layer takes queued events before the wire's: the close comes next, as if the client
    # had sent it; mitmproxy then sends it to both sides and closes them. A wake-up message,
    # which our hook drops, makes the layer look at its queue now rather than at the client's
    # next bytes.
    ws_layer.client_ws._events.append(wsproto.events.CloseConnection(code=code, reason=reason[:120]))
    wake = mwebsocket.WebSocketMessage(wsproto.frame_protocol.Opcode.TEXT, True, b"")
    try:
        ctx.master.addons.get("proxyserver").inject_event(WebSocketMessageInjected(flow, wake))
    except Exception as e:
        log.error(f"wiretrail: could not close the WebSocket of {flow.request.pretty_url}: {e}")
        return False
    return True
