"""Capture: every exchange becomes records in its session's artifact.

Small bodies with a length are buffered and recorded whole. SSE, bodies without a
length and large bodies are streamed: a tee forwards each chunk at once and hands a
copy, batched by at most `capture.chunk_interval`, to the writer (a thread, or a process of
its own with storage.writer = "process"). A request
goes upstream only after its record is written; if it cannot be, the client gets a
503 and nothing is forwarded (fail closed).
"""
from __future__ import annotations

import asyncio
import collections
import logging
import time
import uuid

from mitmproxy import http
from mitmproxy.addons.errorcheck import ErrorCheckHandler

from addons import live_connections, proxy_control
from addons.config import WiretrailConfig
from addons.flow_state import (
    identity_of,
    injected_of,
    is_tunneled,
    killed_reason,
    noted_identity,
    trailers_stripped,
)
from addons.masking import Masking
from addons.policy import connection_of, destination_of, peer_address
from addons.refusal import error_response, refusal_of
from addons.streaming import header_values, request_streams, response_streams
from recorder.auth.identity import VerifiedIdentity
from recorder.masking.headers import recordable_headers
from recorder.protocols.connect.envelopes import is_rpc
from recorder.store.agent_runs import agent_run
from recorder.store.anchors import AnchorSpec
from recorder.store.bodies import BodyBytes, BodyStream, ChunkBytes
from recorder.store.records import (
    AUTH_REFUSED,
    HTTP_CHUNK,
    HTTP_END,
    HTTP_ERROR,
    HTTP_REQUEST,
    HTTP_RESPONSE,
    HTTP_TRAILERS,
    TUNNEL,
)
from recorder.store.sessions import Session, SessionRegistry, QUIET_IDLE
from recorder.store.writer import RECORD_LOST, RECORD_REPAIRED, Alarm, RecordWriter, StorageError
from recorder.store.writer_process import ProcessRecordWriter

log = logging.getLogger("wiretrail")

NOT_RESPONDING = "storage not responding"  # the cause when a record is late past storage.write_timeout
NOT_RECORDED = ("wiretrail could not record this request, so it was not forwarded. "
                "The gateway operator has been told; retry later.")
_MAX_BATCH_BYTES = 1 << 20  # a fast stream is recorded in batches of at most 1 MiB
# A request's end waits for its last batch to be written: smaller batches let the writer work
# while the rest of the body arrives, so less is left to write when the end comes.
_MAX_REQUEST_BATCH_BYTES = 256 << 10
# What a body is rendered by; the last two name a Connect/gRPC stream's per-message compression.
_BODY_HEADERS = (b"content-encoding", b"content-type", b"connect-content-encoding", b"grpc-encoding")
_URL_CACHE_SIZE = 4096  # recorded URLs remembered; an agent calls the same few again and again


class FlowCapture:
    """What the capture keeps for one flow between its hooks."""

    __slots__ = (
        "flow_id", "flow", "session", "streams", "buffers", "buffered", "timers", "chunk_n", "wire", "refused",
        "ended", "completion", "request_recorded", "response_head", "finished", "request_acks", "request_done",
        "response_waits", "abort", "unrecorded", "arrivals", "released_at",
    )

    def __init__(self, flow: http.HTTPFlow, session: Session):
        self.flow_id = flow.id
        self.flow = flow
        self.session = session
        self.streams: dict[str, BodyStream] = {}
        self.buffers: dict[str, list[bytes]] = {"request": [], "response": []}
        self.buffered = {"request": 0, "response": 0}  # bytes waiting in buffers
        # (length, time) of each buffered chunk, for Connect/gRPC streams: the recorder stamps
        # each message with when its last byte came (its order across the two directions)
        self.arrivals: dict[str, list | None] = {"request": None, "response": None}
        self.timers: dict[str, asyncio.TimerHandle] = {}
        self.chunk_n = {"request": 0, "response": 0}
        self.wire = {"request": 0, "response": 0}
        self.refused = False
        self.ended = False
        self.request_recorded = False  # its http.request was handed to the writer (in requestheaders if streamed)
        # (handle, flow) of the response's records, due on the loop's next step once the reply is sent
        self.completion: tuple[asyncio.Handle, http.HTTPFlow] | None = None
        # (flow, time) of a streamed reply's headers: recorded with its first batch, not before its first chunk
        self.response_head: tuple[http.HTTPFlow, float] | None = None
        self.finished: set[str] = set()  # directions whose final batch went to the writer
        # A streamed request's batches, each a future of the writer's answer: its end goes
        # upstream only once all of them are written (docs/integrity.md).
        self.request_acks: set[asyncio.Future] = set()  # those not yet answered, or failed
        self.request_done = False  # a streamed request's end (and trailers) is recorded
        self.response_waits = False  # its reply ended first (bidirectional): completed with the request
        self.abort: tuple[str, str] | None = None  # (phase, message) when the gateway ended the flow
        self.unrecorded = False  # fail_closed = false: a record of it failed and that was logged
        # When the whole request was released upstream (its records written): the upstream's
        # time to answer counts from here, never the gateway's own wait for its store.
        self.released_at: float | None = None


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


class Capture:
    def __init__(self, config: WiretrailConfig, masking: Masking):
        self.config_addon = config
        self.masking = masking  # holds the Masker (a writer process builds its own copy from it)
        self.writer: RecordWriter | ProcessRecordWriter | None = None
        self.registry: SessionRegistry | None = None
        self.flows: dict[str, FlowCapture] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._expiry_task: asyncio.Task | None = None
        self._failing: set[str] = set()  # storage failure causes already logged
        self.cfg = None  # the GatewayConfig, from running on
        self.stopped = False
        self._flush_scheduled = False
        self._acked: collections.deque = collections.deque()  # (future, error) from the writer
        self._acks_scheduled = False
        # (deadline, future) of the records requests wait for, oldest first: a write stuck in
        # the kernel (a hung disk or NFS mount) must not hold requests forever.
        self._waiting: collections.deque = collections.deque()
        self._write_timeout = 0.0  # storage.write_timeout, from `running`
        self._watch_task: asyncio.Task | None = None
        # Back-pressure: client connections whose reading is paused while the writer is behind.
        self._pauses = proxy_control.Pauses()
        self._queue_limit = 0  # storage.queue_limit, from `running`
        self._pause_task: asyncio.Task | None = None
        self._behind_logged = -1e9  # time.monotonic() of the last "the store is behind" warning
        self._urls: dict[tuple, str] = {}  # request line and Host -> the URL as recorded (masked)
        self._urls_masker = None  # the masker those were masked with
        # Called first in `done`, before sessions close: other front ends (addons/postgres.py)
        # end their connections there, so their last records still reach the sessions.
        self.before_stop: list = []

    # -- lifecycle --------------------------------------------------------------------

    @property
    def storage_failing(self) -> frozenset[str]:
        """The causes of the storage failure now in force (empty once a write succeeds again)."""
        return frozenset(self._failing)

    def running(self):
        if self.writer is not None or self.config_addon.current is None:
            return
        cfg = self.config_addon.current
        self.cfg = cfg
        self.loop = asyncio.get_running_loop()
        signer = self.config_addon.signer
        if cfg.storage.signing_key is None:
            log.warning(
                "wiretrail: NO SIGNING KEY (storage.signing_key is not set): sessions get no checkpoints or "
                "seals and the ledger is unsigned; anyone who can write the store can rewrite it unnoticed. "
                "Make a key with `wiretrail keygen DIR` (docs/integrity.md)"
            )
        elif signer is None:
            return  # the config addon could not load it and is stopping the gateway
        # Writing (masking, hashing, compression, disk, signing) runs on a thread of the gateway,
        # or with storage.writer = "process" in a process of its own, outside the proxy's GIL.
        writer_class = ProcessRecordWriter if cfg.storage.writer == "process" else RecordWriter
        self.writer = writer_class(
            fsync=cfg.storage.fsync,
            fsync_interval=cfg.storage.fsync_interval,
            on_error=self._storage_error_from_thread,
            storage_dir=cfg.store_dir,
            signer=signer,
            checkpoint_interval=cfg.storage.checkpoint_interval,
            retention_days=cfg.storage.retention_days,
            on_event=_log_event,
            anchors=AnchorSpec.from_config(cfg.anchors),
            queue_limit=cfg.storage.queue_limit,
        )
        self._queue_limit = cfg.storage.queue_limit
        self.registry = SessionRegistry(
            self.writer,
            cfg.store_dir,
            idle_timeout=cfg.sessions.idle_timeout,
            max_duration=cfg.sessions.max_duration,
            signing_key_id=signer.key_id if signer else None,
            gateway_id=cfg.gateway.id,
        )
        # The writer first recovers sessions a crash left open (ledger), then records.
        self.writer.start()
        if signer is not None:
            log.info(f"wiretrail: signing checkpoints, seals and the ledger with key id {signer.key_id}")
        anchors = self._anchors_text(cfg)
        log.info(f"wiretrail: {anchors}")
        if not cfg.storage.fail_closed:
            log.warning(
                "wiretrail: storage.fail_closed = false: if a record cannot be written, "
                "traffic passes UNRECORDED and each such flow is logged"
            )
        log.info(f"wiretrail: recording sessions under {cfg.store_dir}"
                 + (f" (gateway {cfg.gateway.id})" if cfg.gateway.id else ""))
        if cfg.source is None:  # the embedded demo: what a newcomer does next (README)
            log.info('wiretrail: demo ready. Get a token: export WIRETRAIL_TOKEN=$(.venv/bin/wiretrail token '
                     '--sub "$(id -un)" --groups engineering); trust the CA: .venv/bin/wiretrail ca; then set '
                     'up your client as the README says ("Pointing clients at the gateway")')
        self._write_timeout = cfg.storage.write_timeout
        self._expiry_task = asyncio.ensure_future(
            self._every(min(cfg.sessions.idle_timeout / 4, QUIET_IDLE / 2), self.registry.expire))
        self._watch_task = asyncio.ensure_future(self._every(self._write_timeout / 4, self._expire_waits))

    @staticmethod
    def _anchors_text(cfg) -> str:
        a = cfg.anchors
        sinks = [f"{kind} {where}" for kind, where in (("file", a.file), ("syslog", a.syslog), ("http", a.http))
                 if where]
        if not sinks:
            return ("no [anchors]: the ledger head is not sent outside the store, so cutting its newest entries "
                    "would not show (docs/integrity.md)")
        return ("anchoring each ledger head to " + ", ".join(sinks)
                + (f" (fail_closed: traffic is refused after {a.max_lag:g} s of failure)" if a.fail_closed else ""))

    async def _every(self, seconds: float, tick) -> None:
        interval = max(0.05, min(1.0, seconds))
        while not self.stopped:
            await asyncio.sleep(interval)
            tick()

    def _expire_waits(self) -> None:
        """Answer requests whose record was not written within storage.write_timeout."""
        now = self.loop.time()
        waiting = self._waiting
        err = None
        while waiting and (waiting[0][1].done() or waiting[0][0] <= now):
            fut = waiting.popleft()[1]
            if not fut.done():
                err = err or StorageError(
                    NOT_RESPONDING, f"a record was not written within {self._write_timeout:g} s "
                    f"(storage.write_timeout); the disk or network file system under {self.cfg.storage.dir} "
                    "may be hung")
                fut.set_result(err)
        if err is not None:
            self._storage_error(err)

    def done(self):
        if self.stopped or self.writer is None:
            return
        self.stopped = True
        for stop in self.before_stop:
            try:
                stop()
            except Exception:
                log.exception("wiretrail: stopping a front end failed")
        if self._expiry_task is not None:
            self._expiry_task.cancel()
        if self._watch_task is not None:
            self._watch_task.cancel()
        for fc in list(self.flows.values()):
            if fc.completion is not None:
                self.complete_now(fc)  # answered, its records not yet made
                continue
            # Streams still open at shutdown: keep what arrived, and say why it stops here.
            self._flush_all(fc, final=True)
            fc.session.record(
                HTTP_ERROR,
                {"flow": fc.flow_id, "phase": "shutdown", "message": "the gateway shut down with the flow in progress"},
            )
            self._end(fc)
        self._pauses.resume_all()
        self.registry.close_all("shutdown")
        bound = self.cfg.storage.stop_timeout
        if not self.writer.stop(timeout=bound):
            log.error(f"wiretrail: the writer did not finish within {bound:g} s (storage.stop_timeout); the gateway "
                      f"stops anyway. NOT WRITTEN: {self.writer.unwritten()}. The sessions concerned stay "
                      "unsealed; the next start recovers what reached the disk (docs/integrity.md)")
            # A writer stuck in the kernel can keep the process from exiting: serve nothing meanwhile.
            live_connections.stop_serving()

    # -- hooks ------------------------------------------------------------------------

    def http_connect(self, flow: http.HTTPFlow):
        if refusal_of(flow) is not None:
            self._record_refusal(flow)

    async def requestheaders(self, flow: http.HTTPFlow):
        if refusal_of(flow) is not None:
            self._record_refusal(flow)
            return
        if flow.response is not None:
            return
        if self.registry is None or self.stopped:
            # mitmproxy listens before `running` and after `done`: nothing can be recorded then.
            flow.response = error_response(
                flow, 503, "not_ready", "wiretrail is starting or shutting down and cannot record; retry shortly.",
                {"retry-after": "1"},
            )
            return
        ident = identity_of(flow)
        if is_tunneled(flow):
            # An unregistered host under policy "tunnel" over plain http: forwarded, content unrecorded.
            self.record_tunnel(flow.client_conn, flow.request.host, flow.request.port, ident)
            return
        peer = flow.client_conn.peername or ("", 0)
        session = self.registry.begin_flow(ident.key(), ident.record(), (peer[0], peer[1]),
                                           agent_run(flow.request.headers))
        fc = FlowCapture(flow, session)
        self.flows[flow.id] = fc
        if request_streams(flow.request, self.cfg.capture.stream_threshold):
            # The headers go upstream as soon as this hook returns: record them first.
            ok = await self._record_request(flow, fc, None)
            if ok:
                fc.streams["request"] = self._body_stream(flow.request)
                prior = flow.request.stream if callable(flow.request.stream) else None
                flow.request.stream = self._tee(fc, "request", prior)

    async def request(self, flow: http.HTTPFlow):
        fc = self.flows.get(flow.id)
        if fc is None or fc.refused:
            return
        if fc.request_recorded:
            if "request" in fc.streams:
                await self._end_request_stream(flow, fc)
            elif flow.response is None:
                fc.released_at = time.time()
            return
        body = self._body_bytes(flow.request)
        fc.wire["request"] = len(body.data)
        if await self._record_request(flow, fc, body):
            fc.released_at = time.time()

    async def _end_request_stream(self, flow: http.HTTPFlow, fc: FlowCapture) -> None:
        """A streamed request's end (and trailers) goes upstream when this hook returns: only
        once every batch of its body is written. Otherwise the upstream side is aborted, so
        the upstream never has a complete request that is not on the record."""
        self._flush(fc, "request", final=True)
        err = None
        for fut in list(fc.request_acks):
            err = err or await fut
        fc.request_acks.clear()
        if err is None and flow.request.trailers:
            err = await self.write_and_wait(fc.session, HTTP_TRAILERS, self._trailer_fields(flow, "request"))
        if err is not None and fc.abort is None:
            if self._unrecorded(flow, fc, err):
                await self._abort(fc, 503, "request", self._not_recorded_message(err))
                return
        fc.request_done = True
        fc.released_at = time.time()
        if fc.response_waits:
            fc.response_waits = False
            self._complete(flow, fc)

    def responseheaders(self, flow: http.HTTPFlow):
        fc = self.flows.get(flow.id)
        if fc is None or fc.refused:
            return
        resp = flow.response
        # resp.stream may already be set by mitmproxy's stream_large_bodies: tee it too.
        if response_streams(resp, self.cfg.capture.stream_threshold):
            # Its http.response record (header masking, the writer's queue) waits for the stream's
            # first batch, so the first event is forwarded without it; `time` keeps when it came.
            fc.response_head = (flow, time.time())
            fc.streams["response"] = self._body_stream(resp)
            resp.stream = self._tee(fc, "response", resp.stream if callable(resp.stream) else None)

    def response(self, flow: http.HTTPFlow):
        fc = self.flows.get(flow.id)
        if fc is None or fc.ended or fc.completion is not None:
            return
        # mitmproxy sends the reply when this hook returns. Its records (header masking,
        # the body handed to the writer) are made right after, on the loop's next step,
        # so they do not delay it. Nothing else of this flow can run in between.
        fc.completion = (self.loop.call_soon(self._complete, flow, fc), flow)

    def _complete(self, flow: http.HTTPFlow, fc: FlowCapture) -> None:
        fc.completion = None
        if fc.ended:
            return
        if fc.refused:
            self._end(fc)
            return
        if "response" not in fc.streams:
            body = self._body_bytes(flow.response)
            fc.wire["response"] = len(body.data)
            fc.session.record(HTTP_RESPONSE, self._response_fields(flow, body, streamed=False))
            fc.streams["response"] = None  # recorded: a later call (a waiting request stream) does not repeat it
        if "request" in fc.streams and not fc.request_done and fc.abort is None:
            # The reply ended while the request still streams (bidirectional): the flow ends
            # with the request, whose end is recorded before it goes upstream.
            self._flush(fc, "response", final=True)
            fc.response_waits = True
            return
        self._flush_all(fc, final=True)
        killed = flow.error is not None and flow.error.msg == flow.error.KILLED_MESSAGE
        if killed:
            # Killed in `response` by a part of the gateway: the reply was not forwarded.
            fc.session.record(HTTP_ERROR, {"flow": fc.flow_id, "phase": "response", "message": self.mask_text(
                killed_reason(flow) or flow.error.msg)})
        elif flow.response is not None and flow.response.trailers:
            fc.session.record(HTTP_TRAILERS, self._trailer_fields(flow, "response"))
        self._record_end(flow, fc)
        if flow.websocket is not None and not killed:
            return  # it goes on as a WebSocket; addons/websocket.py ends it with its ws.close
        self._end(fc)

    def complete_now(self, fc: FlowCapture) -> None:
        handle, flow = fc.completion
        handle.cancel()
        self._complete(flow, fc)

    def error(self, flow: http.HTTPFlow):
        fc = self.flows.get(flow.id)
        if fc is None or fc.ended:
            return
        if fc.completion is not None:
            # The reply was complete before this error (a client gone right after it): it is
            # recorded as it was answered, as if the error had come a moment later.
            self.complete_now(fc)
            return
        # Keep whatever arrived before the failure, decoder tail included.
        self._flush_all(fc, final=True)
        fc.session.record(HTTP_ERROR, self._error_fields(flow, fc))
        self._record_end(flow, fc)
        self._end(fc)

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

    # -- records ----------------------------------------------------------------------

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

    def _unrecorded(self, flow: http.HTTPFlow, fc: FlowCapture, err: BaseException) -> bool:
        """A record of this request failed. True: refuse it (fail closed); False: it passes,
        logged (storage.fail_closed = false)."""
        if getattr(err, "cause", None) != NOT_RESPONDING:
            self.registry.mark_failed(fc.session, err)
        if not self.cfg.storage.fail_closed:
            if not fc.unrecorded:  # once per flow, not once per batch of a long upload
                fc.unrecorded = True
                log.warning(f"wiretrail: UNRECORDED flow {flow.request.method} {flow.request.pretty_url}: {err}")
            return False
        return True

    @staticmethod
    def _not_recorded_message(err: BaseException) -> str:
        cause = getattr(err, "cause", None) or "storage error"
        return f"not recorded ({cause}): the request was not completed upstream; the client got 503"

    async def _abort(self, fc: FlowCapture, status: int, phase: str, message: str) -> None:
        """End the flow now: its upstream side is reset, so the upstream never gets the rest of
        the request; the client gets `status` (or a reset, once its reply began). `error` records
        (phase, message)."""
        if fc.abort is not None or fc.ended:
            return
        fc.abort = (phase, message)
        client_message = NOT_RECORDED if status == 503 else message
        if not await proxy_control.abort(fc.flow, status, f"wiretrail: {client_message}"):
            log.error(f"wiretrail: could not end flow {fc.flow_id} ({message}): it is no longer live")

    def _abort_soon(self, fc: FlowCapture, status: int, phase: str, message: str) -> None:
        if fc.abort is None and not fc.ended:
            asyncio.ensure_future(self._abort(fc, status, phase, message))

    def end_flow(self, fc: FlowCapture, status: int, phase: str, message: str) -> None:
        """End a flow in progress (the timeouts): recorded as an http.error with `phase`."""
        self._abort_soon(fc, status, phase, message)

    def paused(self, client) -> bool:
        """Reading from this client connection is paused: the store is behind (back-pressure)."""
        return self._pauses.paused(client)

    def _slow_down(self, fc: FlowCapture) -> None:
        """The writer holds more than storage.queue_limit body bytes: read no more from this
        flow's client connection (and its server connections) until it is back under half."""
        if self._pauses.paused(fc.flow.client_conn) or not self._pauses.pause(fc.flow.client_conn):
            return
        if self._pause_task is None or self._pause_task.done():
            now = time.monotonic()
            logged = now - self._behind_logged >= 30  # once per episode, at most every 30 s
            if logged:
                self._behind_logged = now
                log.warning(f"wiretrail: the store is behind ({self.writer.pending_bytes() >> 20} MiB waiting to be "
                            "written, storage.queue_limit); reading is paused on the connections that feed it")
            self._pause_task = asyncio.ensure_future(self._resume_when_written(logged))

    async def _resume_when_written(self, logged: bool) -> None:
        while len(self._pauses) and not self.stopped:
            await asyncio.sleep(0.05)
            if self.writer.pending_bytes() <= self._queue_limit // 2:
                n = len(self._pauses)
                self._pauses.resume_all()
                if logged:
                    log.info(f"wiretrail: the store caught up; reading resumed on {n} connection(s)")
                    logged = False

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

    def _end(self, fc: FlowCapture) -> None:
        if fc.ended:
            return
        fc.ended = True
        for handle in fc.timers.values():
            handle.cancel()
        fc.timers.clear()
        self.flows.pop(fc.flow_id, None)
        self.registry.end_flow(fc.session)
        if not self._flush_scheduled:
            # After this step, once the reply is on its way: the writer then writes the
            # exchange's last records while the loop idles, not in the next request's ack.
            self._flush_scheduled = True
            self.loop.call_soon(self._flush_writer)

    def _flush_writer(self) -> None:
        self._flush_scheduled = False
        if not self.stopped:
            self.writer.flush_soon()

    # -- masking: the loop only hands the masker over; bodies are masked by the writer -----------

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

    # -- streaming ----------------------------------------------------------------------

    def _tee(self, fc: FlowCapture, direction: str, forward=None):
        """Record each chunk as it arrived; forward it, or what `forward` (a stream callable set
        before capture, e.g. masking of what is forwarded) makes of it."""
        interval = self.cfg.capture.chunk_interval
        limit = self._queue_limit
        batch = _MAX_REQUEST_BATCH_BYTES if direction == "request" else _MAX_BATCH_BYTES
        buf = fc.buffers[direction]
        stream = fc.streams.get(direction)
        arrivals = fc.arrivals[direction] = [] if stream is not None and is_rpc(stream.content_type) else None

        def tee(chunk: bytes):
            if chunk:
                buf.append(chunk)
                if arrivals is not None:
                    arrivals.append((len(chunk), time.time()))
                fc.wire[direction] += len(chunk)
                fc.buffered[direction] += len(chunk)
                if fc.buffered[direction] >= batch:
                    self._flush(fc, direction, final=False)
                elif direction not in fc.timers and not fc.ended:
                    fc.timers[direction] = self.loop.call_later(interval, self._flush, fc, direction, False)
                if limit and self.writer.pending_bytes() + fc.buffered[direction] > limit:
                    self._slow_down(fc)
            else:
                self._flush(fc, direction, final=True)
            return chunk if forward is None else forward(chunk)

        return tee

    def _flush(self, fc: FlowCapture, direction: str, final: bool) -> None:
        handle = fc.timers.pop(direction, None)
        if handle is not None:
            handle.cancel()
        stream = fc.streams.get(direction)
        buf = fc.buffers[direction]
        if stream is None or fc.session.closed:
            return
        if fc.response_head is not None and direction == "response":
            flow, at = fc.response_head
            fc.response_head = None
            fc.session.record(HTTP_RESPONSE, self._response_fields(flow, None, streamed=True), ts=at)
        # An empty final batch still goes to the writer when the stream carried data: it
        # flushes the decoder and any held-back UTF-8 tail, which live on the writer thread.
        if not buf and (not final or fc.chunk_n[direction] == 0):
            return
        if final:
            if direction in fc.finished:
                return
            fc.finished.add(direction)
        data = b"".join(buf)
        buf.clear()
        fc.buffered[direction] = 0
        arrivals = fc.arrivals[direction]
        times = None
        if arrivals is not None:
            times = list(arrivals)
            arrivals.clear()
        fields = {"flow": fc.flow_id, "dir": direction, "n": fc.chunk_n[direction],
                  "body": ChunkBytes(data, stream, final, times)}
        fc.chunk_n[direction] += 1
        if direction == "request" and fc.abort is None:
            fc.request_acks.add(self._record_acked(fc, fields))
        else:
            fc.session.record(HTTP_CHUNK, fields)
            if self._failing and self.cfg.storage.fail_closed and direction == "response":
                # Storage fails: the rest of the reply is not forwarded unrecorded (rule 2).
                self._abort_soon(fc, 502, "response", f"not recorded ({next(iter(self._failing))}): the rest "
                                 "of the reply was not forwarded")
        if not final and not fc.ended:
            # The writer's masker may hold back the end of this batch (what could still be a
            # secret). If nothing follows within the interval, a tick makes it release what
            # the hold-back's time bound allows (recorder/store/bodies.py).
            fc.timers[direction] = self.loop.call_later(self.cfg.capture.chunk_interval, self._tick, fc, direction)

    def _record_acked(self, fc: FlowCapture, fields: dict) -> asyncio.Future:
        """Record a batch of a streamed request; a failure aborts the flow at once, before more
        of the body (and certainly before its end) goes upstream."""
        fut = self._write(fc.session, HTTP_CHUNK, fields)

        def written(f: asyncio.Future) -> None:
            err = f.result()
            if err is None:
                fc.request_acks.discard(f)
            elif fc.abort is None and not fc.ended and self._unrecorded(fc.flow, fc, err):
                self._abort_soon(fc, 503, "request", self._not_recorded_message(err))

        fut.add_done_callback(written)
        return fut

    def _tick(self, fc: FlowCapture, direction: str) -> None:
        fc.timers.pop(direction, None)
        stream = fc.streams.get(direction)
        if fc.ended or stream is None or fc.session.closed:
            return
        if fc.buffers[direction]:
            self._flush(fc, direction, final=False)
            return
        fc.session.record(HTTP_CHUNK, {"flow": fc.flow_id, "dir": direction, "n": fc.chunk_n[direction],
                                         "body": ChunkBytes(b"", stream, False)})

    def _flush_all(self, fc: FlowCapture, final: bool) -> None:
        for direction in ("request", "response"):
            if direction in fc.streams:
                self._flush(fc, direction, final)

    # -- writing ------------------------------------------------------------------------

    async def write_and_wait(self, session: Session, rtype: str, fields: dict) -> BaseException | None:
        """Write a record and wait until it is on disk: None, or why not. For every part that records
        before it forwards (WebSocket, raw TCP, databases), with the same fail-closed wait,
        write_timeout and storage-error logging as HTTP requests."""
        return await self._write(session, rtype, fields)

    def _write(self, session: Session, rtype: str, fields: dict) -> asyncio.Future:
        """Hand a record to the writer; the future gets None once it is written, or the error."""
        fut = self.loop.create_future()

        def ack(err):  # on the writer's thread
            self._acked.append((fut, err))
            if not self._acks_scheduled:
                # One wake-up of the loop per batch of acks, not one per ack: each costs a
                # syscall on the writer's thread and a GIL hand-off.
                self._acks_scheduled = True
                self.loop.call_soon_threadsafe(self._resolve_acked)

        session.record(rtype, fields, ack=ack)
        if NOT_RESPONDING in self._failing:
            # Storage is stuck: refuse at once rather than after another write_timeout. The
            # record stays queued; its ack, when it comes, says storage is back.
            fut = self.loop.create_future()
            fut.set_result(StorageError(NOT_RESPONDING, "earlier records are still not written"))
            return fut
        self._waiting.append((self.loop.time() + self._write_timeout, fut))
        return fut

    def _resolve_acked(self) -> None:
        # Cleared before draining: an ack appended after this line schedules another call.
        self._acks_scheduled = False
        while self._acked:
            fut, err = self._acked.popleft()
            if err is None and self._failing:
                log.warning("wiretrail: storage recovered; recording again")
                self._failing.clear()
            _resolve(fut, err)

    def _storage_error_from_thread(self, err: StorageError) -> None:
        if self.loop is not None and not self.loop.is_closed():
            self.loop.call_soon_threadsafe(self._storage_error, err)

    def _storage_error(self, err: StorageError) -> None:
        if err.cause in (RECORD_LOST, RECORD_REPAIRED):
            # One record of one flow, not storage: logged each time; a lost one ends its flow.
            log.error(f"wiretrail: {err.cause}: {err.detail}")
            fc = self.flows.get(err.flow) if err.flow else None
            if err.cause == RECORD_LOST and fc is not None and self.cfg.storage.fail_closed:
                self._abort_soon(fc, 502, "record", f"a record of this exchange could not be written: {err.detail}")
            return
        # Once per cause, not once per request.
        if err.cause not in self._failing:
            self._failing.add(err.cause)
            until = "" if err.cause == "writer failed" else " until storage recovers"
            log.error(f"wiretrail: cannot record ({err.cause}): {err.detail}; "
                      + (f"refusing traffic with 503{until}" if self.cfg.storage.fail_closed
                         else "traffic passes UNRECORDED (fail_closed = false)"))


def _log_event(text: str) -> None:
    """The writer's notes: an Alarm is an error, except while mitmproxy still starts up, when any
    error makes it exit (addons/errorcheck.py); then it is a warning, loud in its own words."""
    starting = any(isinstance(h, ErrorCheckHandler) for h in logging.getLogger().handlers)
    (log.error if isinstance(text, Alarm) and not starting else log.warning)(f"wiretrail: {text}")


def _resolve(fut: asyncio.Future, err) -> None:
    if not fut.done():
        fut.set_result(err)
