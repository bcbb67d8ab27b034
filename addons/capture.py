"""Capture: every exchange becomes records in its session's artifact.

Small bodies with a length are buffered and recorded whole. SSE, bodies without a
length and large bodies are streamed: a tee forwards each chunk at once and hands a
copy, batched by at most `capture.chunk_interval`, to the writer (a thread, or a process of
its own with storage.writer = "process"). A request
goes upstream only after its record is written; if it cannot be, the client gets a
503 and nothing is forwarded (fail closed).

This module holds Capture's hooks, in the order of one flow's events. The rest is split by
concern into mixins Capture inherits: capture_store.py (start and stop, the writer, what a
record that cannot be written does to its flow, back-pressure), capture_records.py (the fields
of each record, made from a flow) and capture_streams.py (per-flow state and the streaming tee).
The wait for each record (storage.write_timeout, storage failures) is recorder/store/record_waits.py;
the writer and registry are built by recorder/store/open_store.py.
"""
from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import http

from addons import proxy_control
from addons.capture_records import CaptureRecords
from addons.capture_store import CaptureStore, NOT_RESPONDING  # noqa: F401 (other parts import it from here)
from addons.capture_streams import CaptureStreams, FlowCapture
from addons.config import WiretrailConfig
from addons.flow_state import identity_of, is_tunneled, killed_reason
from addons.masking import Masking
from addons.refusal import error_response, refusal_of
from addons.streaming import request_streams, response_streams
from recorder.store.agent_runs import agent_run
from recorder.store.records import HTTP_ERROR, HTTP_RESPONSE, HTTP_TRAILERS
from recorder.store.record_waits import RecordWaits
from recorder.store.sessions import SessionRegistry
from recorder.store.writer import RecordWriter
from recorder.store.writer_process import ProcessRecordWriter

log = logging.getLogger("wiretrail")


class Capture(CaptureStore, CaptureRecords, CaptureStreams):
    def __init__(self, config: WiretrailConfig, masking: Masking):
        self.config_addon = config
        self.masking = masking  # holds the Masker (a writer process builds its own copy from it)
        self.writer: RecordWriter | ProcessRecordWriter | None = None
        self.registry: SessionRegistry | None = None
        self.flows: dict[str, FlowCapture] = {}
        self.loop: asyncio.AbstractEventLoop | None = None
        self._expiry_task: asyncio.Task | None = None
        self.waits: RecordWaits | None = None  # the fail-closed wait for each record, from `running`
        self.cfg = None  # the GatewayConfig, from running on
        self.stopped = False
        self._flush_scheduled = False
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

    # -- hooks, in the order of one flow's events ------------------------------------------

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
