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

What the timeouts read of live connections is in addons/live_connections.py. Fixes of mitmproxy
behaviour are applied when this module is imported: addons/mitmproxy_fixes.py, and here, HttpLayer
routes wiretrail's AbortFlow event to the one stream it names.
"""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from mitmproxy import ctx, http
from mitmproxy.connection import Client
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import events, layer
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1, _http2

from addons import mitmproxy_fixes  # noqa: F401 (its fixes apply when it is imported)

log = logging.getLogger("wiretrail")

HttpLayer = http_layers.HttpLayer
HttpStream = http_layers.HttpStream


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


