"""Live client connections, as the timeouts see them: which phase a connection is in, when
it last moved, closing it; and, at a shutdown whose writer is stuck, closing everything.
mitmproxy 11.0.2 has no addon API for these: they read its proxyserver's connection handlers.
"""
from __future__ import annotations

import logging

from mitmproxy import ctx
from mitmproxy.proxy import layer, tunnel
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1, _http2

log = logging.getLogger("wiretrail")

HttpLayer = http_layers.HttpLayer

HEADER, IDLE, BUSY, OPAQUE = "header", "idle", "busy", "opaque"


def client_phase(handler) -> str:
    """What a client connection is doing, read from its layers:
    HEADER  a request has begun (bytes of its headers, or a TLS handshake) but is not complete;
    IDLE    between exchanges, nothing received of the next;
    BUSY    an exchange is in progress;
    OPAQUE  upgraded or tunnelled (WebSocket, raw TCP): no HTTP to judge."""
    client = handler.client
    lay = handler.layer
    for _ in range(64):  # a stack is a handful of layers deep
        if isinstance(lay, layer.NextLayer):
            if lay.layer is None:
                return HEADER  # no byte yet, or not enough to tell the protocol
            lay = lay.layer
        elif isinstance(lay, tunnel.TunnelLayer):
            if lay.tunnel_connection is client and lay.tunnel_state is tunnel.TunnelState.ESTABLISHING:
                return HEADER
            lay = lay.child_layer
        elif isinstance(lay, HttpLayer):
            server = lay.connections.get(client)
            if isinstance(server, _http1.Http1Server):
                if server.state == server.passthrough:  # CONNECT, or an upgrade
                    lay = getattr(lay.streams.get(server.stream_id), "child_layer", None)
                    if lay is None:
                        return BUSY
                    continue
                if server.state == server.read_headers:
                    return HEADER if len(server.buf) else IDLE
                return BUSY
            if isinstance(server, _http2.Http2Server):
                if server.streams:
                    return BUSY
                return HEADER if getattr(server.h2_conn.incoming_buffer, "data", b"") else IDLE
            return BUSY
        else:
            nxt = getattr(lay, "child_layer", None) or getattr(lay.__dict__.get("_handle_event"), "__self__", None)
            if not isinstance(nxt, layer.Layer) or nxt is lay:
                return OPAQUE
            lay = nxt
    return BUSY


def live_clients() -> list:
    """(client, handler) of every live client connection."""
    try:
        server = ctx.master.addons.get("proxyserver")
    except Exception:
        return []
    return [(h.client, h) for h in list(server.connections.values()) if getattr(h, "client", None) is not None]


def last_activity(handler) -> float:
    """time.time() of the last event on any of the connection's sockets (mitmproxy's own watchdog)."""
    return handler.timeout_watchdog.last_activity


def close_client(handler, why: str) -> None:
    """Close a client connection and everything on it, as mitmproxy's inactivity timeout does."""
    io = handler.transports.get(handler.client)
    if io is not None and io.handler is not None:
        io.handler.cancel(why)


def stop_serving() -> None:
    """At a shutdown whose writer is stuck: close the listening sockets and every connection
    now. mitmproxy leaves them to the process's exit, which a writer thread stuck in the kernel
    (a hung disk) delays without bound; until then a client would connect and wait for nothing."""
    try:
        server = ctx.master.addons.get("proxyserver")
    except Exception:
        return
    if server is None:
        return
    for instance in list(server.servers):
        for listener in list(getattr(instance, "_servers", ())):
            try:
                listener.close()
            except Exception:
                pass
    for handler in list(server.connections.values()):
        for io in list(handler.transports.values()):
            transport = getattr(io.writer, "transport", None)
            if transport is not None:
                transport.abort()
