"""What wiretrail must do to live connections that mitmproxy 11.0.2 has no addon API for.

An addon sees flows in hooks; it cannot end one between hooks, nor slow a connection down.
Everything here reaches mitmproxy's own objects (the proxyserver addon's connection handlers
and their layers), checked against mitmproxy 11.0.2 (docs/integrity.md, "Ending a flow"):

- `abort(flow, status, message)`: end one flow now. Its upstream side is reset (HTTP/2:
  RST_STREAM CANCEL on that stream only; HTTP/1: the connection is closed at once, so
  nothing more of the request leaves, not even the end of a chunked body), and the client
  gets `status` with `message` (mitmproxy's error page) or, once its response has begun,
  a reset. The flow's `error` hook runs as for any failure.
- `pause(client)` / `resume(client)`: mitmproxy reads no more from a client connection and
  its server connections while paused (it holds the lock mitmproxy's own read loop takes
  to wait for slow writers, so TCP flow control slows the sender).
- `close_client(client, why)` and `last_activity(client)`, for the timeouts.

Fixes of mitmproxy behaviour are applied when this module is imported (each below):
- an HTTP/2 error names the side it came from (mitmproxy says "reset by client" for both);
- a streamed request's end reaches an HTTP/1.1 upstream only as the last chunk of a
  chunked body, and request trailers can go to an HTTP/1.1 upstream;
- HttpLayer routes wiretrail's AbortFlow event to the one stream it names.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mitmproxy import ctx, http
from mitmproxy.connection import Client
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import commands, events, layer, tunnel
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1, _http2

log = logging.getLogger("wiretrail")

HttpLayer = http_layers.HttpLayer
HttpStream = http_layers.HttpStream


# -- fix: which side ended an HTTP/2 stream ------------------------------------------------------
# mitmproxy's Http2Connection reports a reset as "stream reset by client" and a closed
# connection as "peer closed connection", whichever side it came from.


class _ServerProtocolError(http_layers.ResponseProtocolError):
    """An error from an HTTP/2 server connection, worded so that it names the server."""

    def __init__(self, stream_id: int, message: str, code: int = status_codes.BAD_GATEWAY):
        if message.startswith("stream reset by client"):
            message = "stream reset by server" + message[len("stream reset by client"):]
        elif "server" not in message.lower():
            message = f"server: {message}"
        super().__init__(stream_id, message, code)


class _ClientProtocolError(http_layers.RequestProtocolError):
    """An error from an HTTP/2 client connection, worded so that it names the client."""

    def __init__(self, stream_id: int, message: str, code: int = 400):
        if "client" not in message.lower():
            message = f"client: {message}"
        super().__init__(stream_id, message, code)


_http2.Http2Client.ReceiveProtocolError = _ServerProtocolError
_http2.Http2Server.ReceiveProtocolError = _ClientProtocolError


# -- fix: the end of a streamed request is where the upstream learns it --------------------------
# A streamed request goes upstream without a Content-Length: over HTTP/1.1 chunked, so that
# its end is the last chunk, which mitmproxy sends after the `request` hook (capture holds it
# there until the body is on the record); over HTTP/2 its end is END_STREAM, sent then too.
# mitmproxy 11.0.2 also sent an HTTP/2 request without Content-Length to an HTTP/1.1 upstream
# with no framing at all (the upstream saw an empty body), and could not send trailers over
# HTTP/1.1 (it crashed): both are fixed here.


def _frame_for_http1(req: http.Request) -> None:
    if "chunked" in req.headers.get("transfer-encoding", "").lower():
        return
    if req.stream or req.trailers:
        req.headers.pop("content-length", None)
        req.headers["transfer-encoding"] = "chunked"
    elif "content-length" not in req.headers:
        req.headers["content-length"] = str(len(req.raw_content or b""))


_original_h1_send = _http1.Http1Client.send


def _h1_client_send(self, event):
    if isinstance(event, http_layers.RequestHeaders) and not event.end_stream:
        _frame_for_http1(event.request)
    elif isinstance(event, http_layers.RequestTrailers):
        self.wiretrail_trailers = event.trailers  # sent in the chunked body's last chunk
        return iter(())
    elif isinstance(event, http_layers.RequestEndOfMessage) and getattr(self, "wiretrail_trailers", None):
        return _h1_end_with_trailers(self)
    return _original_h1_send(self, event)


def _h1_end_with_trailers(self):
    trailers, self.wiretrail_trailers = self.wiretrail_trailers, None
    yield commands.SendData(self.conn, b"0\r\n" + b"".join(k + b": " + v + b"\r\n" for k, v in trailers.fields)
                            + b"\r\n")
    yield from self.mark_done(request=True)


_http1.Http1Client.send = _h1_client_send

_original_h2_handle_event = _http2.Http2Client._handle_event


def _h2_client_handle_event(self, event):
    if isinstance(event, http_layers.RequestHeaders) and not event.end_stream and event.request.stream:
        event.request.headers.pop("content-length", None)
    return _original_h2_handle_event(self, event)


_http2.Http2Client._handle_event = _h2_client_handle_event


# -- ending one flow -----------------------------------------------------------------------------


@dataclass
class AbortFlow(events.MessageInjected):
    """Injected at a connection's root layer; HttpLayer hands it to the stream in `path`."""

    stream: object = None  # the HttpStream to end
    path: frozenset = frozenset()  # id()s of the layers from the root to that stream
    status: int = 502


def _children(lay) -> list:
    out = []
    for name in ("layer", "child_layer"):  # NextLayer.layer; tunnels, modes and streams: child_layer
        child = getattr(lay, name, None)
        if isinstance(child, layer.Layer):
            out.append(child)
    # HttpProxy replaces its own handler by a child NextLayer's and keeps no other reference.
    owner = getattr(lay.__dict__.get("_handle_event"), "__self__", None)
    if isinstance(owner, layer.Layer) and owner is not lay:
        out.append(owner)
    if isinstance(lay, HttpLayer):
        out.extend(lay.streams.values())
    return out


def _path_to(root, flow: http.HTTPFlow) -> list | None:
    """The layers from `root` down to the HttpStream of `flow`, or None."""
    stack = [(root, (root,))]
    seen = set()
    while stack:
        lay, path = stack.pop()
        if id(lay) in seen:
            continue
        seen.add(id(lay))
        if isinstance(lay, HttpStream) and getattr(lay, "flow", None) is flow:
            return list(path)
        for child in _children(lay):
            stack.append((child, path + (child,)))
    return None


_original_handle_event = HttpLayer._handle_event


def _http_layer_handle_event(self, event):
    if not isinstance(event, AbortFlow):
        return _original_handle_event(self, event)
    return _route_abort(self, event)


def _route_abort(self, event: AbortFlow):
    stream = event.stream
    if stream in self.streams.values():
        flow = stream.flow
        server_layer = self.connections.get(flow.server_conn)
        if server_layer is not None and not isinstance(server_layer, HttpStream):
            # The upstream side first, while nothing of the request's end has left.
            if not isinstance(server_layer, _http2.Http2Client) or stream.stream_id in server_layer.our_stream_id:
                yield from self.event_to_child(server_layer, http_layers.RequestProtocolError(
                    stream.stream_id, event.message, code=status_codes.CLIENT_CLOSED_REQUEST))
        client_layer = self.connections.get(self.context.client)
        sent = getattr(client_layer, "response", None)
        if isinstance(client_layer, _http1.Http1Server) and sent is not None and sent.status_code < 200:
            # Only a "100 Continue" went out: the client still gets the error, not a bare close.
            client_layer.response = None
        yield from self.event_to_child(stream, http_layers.ResponseProtocolError(
            stream.stream_id, event.message, code=event.status))
        return
    for s in list(self.streams.values()):  # a tunnel (CONNECT) on the way to it
        if id(s) in event.path:
            yield from self.event_to_child(s, event)
            return


HttpLayer._handle_event = _http_layer_handle_event


def _handler(client: Client):
    """mitmproxy's ConnectionHandler of a live client connection, or None."""
    try:
        server = ctx.master.addons.get("proxyserver")
    except Exception:  # no master (unit tests)
        return None
    if server is None:
        return None
    return server.connections.get(client.id)


async def abort(flow: http.HTTPFlow, status: int, message: str) -> bool:
    """End `flow` now (module docstring). False if it is no longer live on a connection."""
    handler = _handler(flow.client_conn)
    if handler is None:
        return False
    server = flow.server_conn
    io = handler.transports.get(server)
    cut = False
    if io is not None and io.writer is not None and server.alpn != b"h2":
        # HTTP/1 upstream: one flow per connection. Closed here and now, not by a command that
        # runs after the stream's next step (which may send the end of a chunked body).
        io.writer.transport.abort()
        cut = True
    path = _path_to(handler.layer, flow)
    if path is None:
        return cut
    await handler.server_event(AbortFlow(flow=flow, message=message, stream=path[-1],
                                         path=frozenset(map(id, path)), status=status))
    return True


# -- back-pressure --------------------------------------------------------------------------------


class Pauses:
    """Client connections whose reading is paused, and the tasks that hold them."""

    def __init__(self):
        self._held: dict[str, tuple[asyncio.Task, asyncio.Event]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def paused(self, client: Client) -> bool:
        return client.id in self._held

    def pause(self, client: Client) -> bool:
        if client.id in self._held:
            return True
        handler = _handler(client)
        lock = getattr(handler, "_drain_lock", None)
        if lock is None:
            return False
        release = asyncio.Event()

        async def hold():
            # mitmproxy's read loop takes this lock after every read (to wait for slow
            # writers): while it is held here, no more is read from this client or its servers.
            async with lock:
                await release.wait()

        self._held[client.id] = (asyncio.ensure_future(hold()), release)
        return True

    def resume(self, client_id: str) -> None:
        held = self._held.pop(client_id, None)
        if held is not None:
            held[1].set()

    def resume_all(self) -> None:
        for cid in list(self._held):
            self.resume(cid)

    def ids(self) -> list[str]:
        return list(self._held)


# -- timeouts -------------------------------------------------------------------------------------

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
