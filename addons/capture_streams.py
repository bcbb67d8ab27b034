"""Capture's streams: what it keeps per flow (FlowCapture), and the tee that forwards each
chunk at once and records it in batches of at most capture.chunk_interval."""
from __future__ import annotations

import asyncio
import time

from mitmproxy import http

from recorder.protocols.connect.envelopes import is_rpc
from recorder.store.bodies import BodyStream, ChunkBytes
from recorder.store.records import HTTP_CHUNK, HTTP_RESPONSE
from recorder.store.sessions import Session


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
_MAX_BATCH_BYTES = 1 << 20  # a fast stream is recorded in batches of at most 1 MiB
# A request's end waits for its last batch to be written: smaller batches let the writer work
# while the rest of the body arrives, so less is left to write when the end comes.
_MAX_REQUEST_BATCH_BYTES = 256 << 10


class CaptureStreams:
    """Streamed bodies: the tee, its batches and their acks."""

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
            if self.storage_failing and self.cfg.storage.fail_closed and direction == "response":
                # Storage fails: the rest of the reply is not forwarded unrecorded (rule 2).
                self._abort_soon(fc, 502, "response", f"not recorded ({next(iter(self.storage_failing))}): the rest "
                                 "of the reply was not forwarded")
        if not final and not fc.ended:
            # The writer's masker may hold back the end of this batch (what could still be a
            # secret). If nothing follows within the interval, a tick makes it release what
            # the hold-back's time bound allows (recorder/store/bodies.py).
            fc.timers[direction] = self.loop.call_later(self.cfg.capture.chunk_interval, self._tick, fc, direction)

    def _record_acked(self, fc: FlowCapture, fields: dict) -> asyncio.Future:
        """Record a batch of a streamed request; a failure aborts the flow at once, before more
        of the body (and certainly before its end) goes upstream."""
        fut = self.waits.write(fc.session, HTTP_CHUNK, fields)

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
