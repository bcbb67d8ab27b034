"""Capture's storage: the writer and the session registry it starts and stops, the
fail-closed wait for a record (write_and_wait, storage.write_timeout), storage failures
and back-pressure (reading paused while the store is behind)."""
from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy.addons.errorcheck import ErrorCheckHandler

from addons import live_connections
from addons.capture_streams import FlowCapture
from recorder.store.anchors import AnchorSpec
from recorder.store.records import HTTP_ERROR
from recorder.store.sessions import QUIET_IDLE, Session, SessionRegistry
from recorder.store.writer import Alarm, RECORD_LOST, RECORD_REPAIRED, RecordWriter, StorageError
from recorder.store.writer_process import ProcessRecordWriter


log = logging.getLogger("wiretrail")

NOT_RESPONDING = "storage not responding"  # the cause when a record is late past storage.write_timeout


def _log_event(text: str) -> None:
    """The writer's notes: an Alarm is an error, except while mitmproxy still starts up, when any
    error makes it exit (addons/errorcheck.py); then it is a warning, loud in its own words."""
    starting = any(isinstance(h, ErrorCheckHandler) for h in logging.getLogger().handlers)
    (log.error if isinstance(text, Alarm) and not starting else log.warning)(f"wiretrail: {text}")


def _resolve(fut: asyncio.Future, err) -> None:
    if not fut.done():
        fut.set_result(err)


class CaptureStore:
    """The gateway's lifecycle and every write: plain asyncio around the writer."""

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
