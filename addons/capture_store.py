"""Capture's storage: the writer and the session registry it starts and stops, the
fail-closed wait for a record (write_and_wait: recorder/store/record_waits.py), what a failed
record does to its flow (refused, aborted, or passed when fail_closed = false), and
back-pressure (reading paused while the store is behind)."""
from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy import http
from mitmproxy.addons.errorcheck import ErrorCheckHandler

from addons import live_connections, proxy_control
from addons.capture_streams import FlowCapture
from recorder.store.open_store import open_store
from recorder.store.record_waits import NOT_RESPONDING, RecordWaits
from recorder.store.records import HTTP_ERROR
from recorder.store.sessions import QUIET_IDLE, Session
from recorder.store.writer import Alarm, RECORD_LOST, StorageError


log = logging.getLogger("wiretrail")

NOT_RECORDED = ("wiretrail could not record this request, so it was not forwarded. "
                "The gateway operator has been told; retry later.")


def _log_event(text: str) -> None:
    """The writer's notes: an Alarm is an error, except while mitmproxy still starts up, when any
    error makes it exit (addons/errorcheck.py); then it is a warning, loud in its own words."""
    starting = any(isinstance(h, ErrorCheckHandler) for h in logging.getLogger().handlers)
    (log.error if isinstance(text, Alarm) and not starting else log.warning)(f"wiretrail: {text}")


def _storage_recovered() -> None:
    log.warning("wiretrail: storage recovered; recording again")


class CaptureStore:
    """The gateway's lifecycle and every write."""

    @property
    def storage_failing(self) -> frozenset[str]:
        """The causes of the storage failure now in force (empty once a write succeeds again)."""
        return frozenset(self.waits.failing) if self.waits is not None else frozenset()

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
        self.waits = RecordWaits(self.loop, cfg.storage.write_timeout, on_failing=self._storage_failed,
                                 on_recovered=_storage_recovered, on_record_error=self._record_error,
                                 where=str(cfg.storage.dir))
        self._queue_limit = cfg.storage.queue_limit
        self.writer, self.registry = open_store(cfg, signer, on_error=self.waits.storage_error_from_thread,
                                                on_event=_log_event)
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
        self._expiry_task = asyncio.ensure_future(
            self._every(min(cfg.sessions.idle_timeout / 4, QUIET_IDLE / 2), self.registry.expire))
        self.waits.start()

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
        self.waits.stop()
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

    def _flush_writer(self) -> None:
        self._flush_scheduled = False
        if not self.stopped:
            self.writer.flush_soon()

    async def write_and_wait(self, session: Session, rtype: str, fields: dict) -> BaseException | None:
        """Write a record and wait until it is on disk: None, or why not. For every part that records
        before it forwards (WebSocket, raw TCP, databases), with the same fail-closed wait,
        write_timeout and storage-error logging as HTTP requests."""
        return await self.waits.write(session, rtype, fields)

    def _write(self, session: Session, rtype: str, fields: dict) -> asyncio.Future:
        """Hand a record to the writer; the future gets None once it is written, or the error."""
        return self.waits.write(session, rtype, fields)

    @property
    def _failing(self) -> set[str] | frozenset[str]:  # capture_streams.py's name for storage_failing
        return self.waits.failing if self.waits is not None else frozenset()

    def _storage_failed(self, err: StorageError) -> None:
        until = "" if err.cause == "writer failed" else " until storage recovers"
        log.error(f"wiretrail: cannot record ({err.cause}): {err.detail}; "
                  + (f"refusing traffic with 503{until}" if self.cfg.storage.fail_closed
                     else "traffic passes UNRECORDED (fail_closed = false)"))

    def _record_error(self, err: StorageError) -> None:
        """One record of one flow was lost or repaired: logged each time; a lost one ends its flow."""
        log.error(f"wiretrail: {err.cause}: {err.detail}")
        fc = self.flows.get(err.flow) if err.flow else None
        if err.cause == RECORD_LOST and fc is not None and self.cfg.storage.fail_closed:
            self._abort_soon(fc, 502, "record", f"a record of this exchange could not be written: {err.detail}")

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
