"""Capture's records: the fields of each record made from a flow (requests, responses,
ends, errors, trailers, refusals, tunnels), masked headers and URLs, and the 503 of a
request whose record could not be written."""
from __future__ import annotations

import logging
import time
import uuid

from mitmproxy import http

from addons.capture_store import NOT_RECORDED, NOT_RESPONDING
from addons.capture_streams import FlowCapture
from addons.flow_state import injected_of, noted_identity, trailers_stripped
from addons.policy import connection_of, destination_of, peer_address
from addons.refusal import error_response, refusal_of
from addons.streaming import header_values
from recorder.auth.identity import VerifiedIdentity
from recorder.masking.headers import recordable_headers
from recorder.store.bodies import BodyBytes, BodyStream
from recorder.store.records import AUTH_REFUSED, HTTP_END, HTTP_ERROR, HTTP_REQUEST, HTTP_TRAILERS, TUNNEL
from recorder.store.sessions import Session


log = logging.getLogger("wiretrail")

_URL_CACHE_SIZE = 4096  # recorded URLs remembered; an agent calls the same few again and again


def _side(message: str, phase: str) -> str | None:
    """Which side ended the exchange, where the error says so."""
    low = message.lower()
    if phase == "client":
        return "client"
    if phase == "connect" or "server" in low:
        return "server"
    return None


def _phase(flow: http.HTTPFlow) -> str:
    msg = (flow.error.msg if flow.error else "").lower()
    if "client" in msg:
        return "client"
    if flow.response is not None:
        return "response"
    server = flow.server_conn
    if server.timestamp_tcp_setup is None or (server.tls and server.timestamp_tls_setup is None):
        return "connect"
    if flow.request.timestamp_end is None:
        return "request"
    return "response"
# What a body is rendered by; the last two name a Connect/gRPC stream's per-message compression.
_BODY_HEADERS = (b"content-encoding", b"content-type", b"connect-content-encoding", b"grpc-encoding")


class CaptureRecords:
    """From a flow to the records of its exchange."""

    def _error_fields(self, flow: http.HTTPFlow, fc: FlowCapture) -> dict:
        if fc.abort is not None:  # the gateway ended it: say why, not what mitmproxy saw next
            phase, message = fc.abort
            return {"flow": fc.flow_id, "phase": phase, "message": message, "by": "gateway"}
        msg = flow.error.msg if flow.error else "unknown error"
        fields = {"flow": fc.flow_id, "phase": _phase(flow), "message": self.mask_text(msg)}
        side = _side(msg, fields["phase"])
        if side is not None:
            fields["by"] = side
        return fields

    def record_tunnel(self, client, host: str, port: int, ident: VerifiedIdentity, details: dict | None = None) -> None:
        """An unregistered host passed through uninspected (policy "tunnel"): note who and where
        (`details`: the address it is pinned to and the TLS SNI)."""
        if self.registry is None or self.stopped:
            return
        peer = client.peername or ("", 0)
        log.info(f"wiretrail: tunnel {ident.sub} {peer[0]} -> {host}:{port}: unregistered, passed through "
                 "uninspected (policy.unregistered = \"tunnel\"; its content is not recorded)")
        session = self.registry.begin_flow(ident.key(), ident.record(), (peer[0], peer[1]), exchange=False)
        session.record(TUNNEL, {"conn": client.id, "host": host, "port": port, **(details or {})})
        self.registry.end_flow(session)

    def _record_refusal(self, flow: http.HTTPFlow) -> None:
        """Every refused attempt is recorded, so the trail shows who tried. Never the token."""
        if self.registry is None or self.stopped:
            return
        refusal = refusal_of(flow)
        session = self.session_for(noted_identity(flow), flow.client_conn.peername or ("", 0), exchange=False)
        req = flow.request
        session.record(AUTH_REFUSED, {
            "flow": flow.id,
            "conn": flow.client_conn.id,
            "mode": flow.client_conn.proxy_mode.type_name,
            "method": req.method,
            "url": f"{req.host}:{req.port}" if req.method == "CONNECT" else self.mask_text(req.pretty_url),
            "dest": destination_of(flow),
            "status": refusal["status"],
            "reason": refusal["reason"],
            "message": refusal["message"],
            "headers": self._headers(req.headers),
        })
        self.registry.end_flow(session)

    def session_for(self, ident: VerifiedIdentity | None, peer: tuple, *, exchange: bool = True) -> Session:
        """The session of this identity and client address, counting one more flow (end it with
        registry.end_flow). `ident` None: nobody was verified, and the refused attempts from one
        address share a session. Also for other front ends (addons/postgres.py)."""
        if ident is not None:
            key, record = ident.key(), ident.record()
        else:
            key = "refused " + peer[0]
            record = {"sub": None, "email": None, "name": None, "groups": [], "iss": None,
                      "method": self.cfg.identity.mode, "authenticated": False}
        return self.registry.begin_flow(key, record, (peer[0], peer[1]), exchange=exchange)

    def record_connection_error(self, client, ident: VerifiedIdentity | None, phase: str, message: str) -> None:
        """A client connection the gateway ended before any request was complete (a header
        timeout): an http.error of its own flow, with the connection id."""
        if self.registry is None or self.stopped:
            return
        if ident is not None and not ident.authenticated and self.cfg.identity.mode != "none":
            ident = None  # not verified (a CONNECT refused, say): the unverified session of its address
        session = self.session_for(ident, client.peername or ("", 0), exchange=False)
        session.record(HTTP_ERROR, {"flow": str(uuid.uuid4()), "conn": client.id, "phase": phase,
                                      "message": message, "by": "gateway"})
        self.registry.end_flow(session)

    async def _record_request(self, flow: http.HTTPFlow, fc: FlowCapture, body: BodyBytes | None) -> bool:
        """Write the http.request record and wait until it is written. False if refused."""
        req = flow.request
        conn = connection_of(flow)
        fields = {
            "flow": fc.flow_id,
            "conn": flow.client_conn.id,
            "connection": conn.name if conn else None,
            "mode": flow.client_conn.proxy_mode.type_name,
            "method": req.method,
            "url": self.recorded_url(req),
            "dest": destination_of(flow),
            "http_version": req.http_version,
            "headers": self._headers(req.headers, injected_of(flow)),
            "body": body,
            "streamed": body is None,
        }
        fc.request_recorded = True
        writes = [self.write_and_wait(fc.session, HTTP_REQUEST, fields)]
        if body is not None and req.trailers:  # buffered: its trailers go upstream right after it
            writes.append(self.write_and_wait(fc.session, HTTP_TRAILERS, self._trailer_fields(flow, "request")))
        err = None
        for write in writes:
            err = err or await write
        if err is None or not self._unrecorded(flow, fc, err):
            return True
        # A late record is still queued: the 503 is recorded after it, so the session shows
        # the request was not forwarded. A failed one had nothing written; nor has its refusal.
        fc.refused = getattr(err, "cause", None) != NOT_RESPONDING
        flow.response = error_response(flow, 503, "not_recorded", NOT_RECORDED, {"retry-after": "5"})
        return False

    def _trailer_fields(self, flow: http.HTTPFlow, direction: str) -> dict:
        message = flow.request if direction == "request" else flow.response
        fields = {"flow": flow.id, "dir": direction, "headers": self._headers(message.trailers)}
        stripped = trailers_stripped(flow) if direction == "request" else None
        if stripped:
            fields["stripped"] = stripped
        return fields

    def _response_fields(self, flow: http.HTTPFlow, body: BodyBytes | None, *, streamed: bool) -> dict:
        resp = flow.response
        return {
            "flow": flow.id,
            "status": resp.status_code,
            "reason": resp.reason,
            "http_version": resp.http_version,
            "headers": self._headers(resp.headers),
            "body": body,
            "streamed": streamed,
        }

    def _record_end(self, flow: http.HTTPFlow, fc: FlowCapture) -> None:
        req, resp = flow.request, flow.response
        start = req.timestamp_start
        end = (resp.timestamp_end if resp and resp.timestamp_end else None) or time.time()
        ttfb = round((resp.timestamp_start - start) * 1000, 3) if resp and resp.timestamp_start else None
        fc.session.record(
            HTTP_END,
            {
                "flow": fc.flow_id,
                "status": resp.status_code if resp else None,
                "size": dict(fc.wire),
                "duration_ms": round((end - start) * 1000, 3),
                "ttfb_ms": ttfb,
                "address": peer_address(flow),
            },
        )

    @property
    def _masker(self):
        return self.masking.masker

    def _body_bytes(self, message: http.Message) -> BodyBytes:
        encoding, content_type, connect, grpc = header_values(message.headers, *_BODY_HEADERS)
        return BodyBytes(message.raw_content or b"", encoding, self.cfg.capture.max_body,
                         masker=self._masker, content_type=content_type, message_encoding=connect or grpc)

    def _body_stream(self, message: http.Message) -> BodyStream:
        encoding, content_type, connect, grpc = header_values(message.headers, *_BODY_HEADERS)
        return BodyStream(encoding, self.cfg.capture.max_body, masker=self._masker, content_type=content_type,
                          message_encoding=connect or grpc)

    def _headers(self, headers: http.Headers, injected: dict | None = None) -> list[list[str]]:
        masker = self._masker  # None only before masking runs: nothing is recorded then (an error, fail closed)
        return recordable_headers(headers.items(multi=True), masker.key, injected, masker=masker)

    def recorded_url(self, req: http.Request) -> str:
        """req.pretty_url, masked. Building it costs more than the rest of the request record
        (it parses the Host header each time), so each distinct request line is done once."""
        d = req.data
        key = (d.method, d.scheme, d.host, d.port, d.path, d.authority, d.http_version, header_values(d.headers, b"host")[0])
        masker = self._masker
        if masker is not self._urls_masker:  # a new masker (SIGHUP) may mask more
            self._urls.clear()
            self._urls_masker = masker
        url = self._urls.get(key)
        if url is None:
            if len(self._urls) >= _URL_CACHE_SIZE:
                self._urls.clear()
            url = self._urls[key] = self.mask_text(req.pretty_url)
        return url

    def mask_text(self, text: str) -> str:
        # URLs and error texts are short: masked here (a query string can carry a key).
        masker = self._masker
        return masker.mask_text(text) if text else text
