"""Fixes of mitmproxy 11.0.2's HTTP layers, applied when this module is imported (by
addons/proxy_control.py, which every part that ends or slows flows imports):

- an HTTP/2 error names the side it came from (mitmproxy says "reset by client" for both);
- a streamed request's end reaches an HTTP/1.1 upstream only as the last chunk of a
  chunked body, and request trailers can go to an HTTP/1.1 upstream.
"""
from __future__ import annotations

from mitmproxy import http
from mitmproxy.net.http import status_codes
from mitmproxy.proxy import commands
from mitmproxy.proxy.layers import http as http_layers
from mitmproxy.proxy.layers.http import _http1, _http2


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
