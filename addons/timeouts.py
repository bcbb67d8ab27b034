"""Timeouts: no client connection or exchange holds the gateway's resources without end.

mitmproxy 11.0.2 has one timeout of its own: a client connection on which nothing at all
happens for 10 minutes is closed (TCP_TIMEOUT in mitmproxy/proxy/server.py, not an option).
A client that sends one byte every few seconds, or an upstream that accepts a request and
never answers, is never cut off. This addon checks every live client connection on a timer
on the event loop (at most once a second; reading state only, no I/O), against `[timeouts]`:

  request_header     a request has begun (bytes of its headers, or the TLS handshake, arrived)
                     but its headers are not complete after this many seconds: the connection
                     is closed; recorded as an http.error, phase "request_header".
  idle               nothing moved on the connection for this long: between exchanges it is
                     closed (nothing to record); an exchange whose body stalls is ended (504,
                     or a reset once its reply began), recorded with phase "idle".
  upstream_response  a request is complete upstream (released once its records are written)
                     and no response headers came for this long: the client gets 504,
                     recorded with phase "response".

What a connection is doing is read from mitmproxy's layers (live_connections.client_phase);
exchanges are ended through proxy_control.abort, so the upstream side is reset too.
"""
from __future__ import annotations

import asyncio
import logging
import time

from mitmproxy.proxy import server as mitm_server

from addons import live_connections
from addons.config import WiretrailConfig
from addons.live_connections import BUSY, HEADER, IDLE, OPAQUE

log = logging.getLogger("wiretrail")


class Timeouts:
    def __init__(self, config: WiretrailConfig, identity, capture):
        self.config_addon = config
        self.identity = identity  # who is behind a connection, for the record of a header timeout
        self.capture = capture  # the flows in progress, and how to end and record them
        self._task: asyncio.Task | None = None
        self._phases: dict[str, tuple[str, float]] = {}  # client id -> (phase, since)

    def running(self):
        cfg = self.config_addon.current
        if cfg is None or self._task is not None:
            return
        t = cfg.timeouts
        # mitmproxy's own inactivity close stays as a backstop behind these, never before them.
        mitm_server.TCP_TIMEOUT = max(mitm_server.TCP_TIMEOUT, int(max(t.idle, t.upstream_response)) + 60)
        interval = max(0.05, min(1.0, min(t.request_header, t.idle, t.upstream_response) / 4))
        self._task = asyncio.ensure_future(self._watch(interval))

    def done(self):
        if self._task is not None:
            self._task.cancel()

    async def _watch(self, interval: float) -> None:
        while True:
            await asyncio.sleep(interval)
            try:
                self.tick(time.time())
            except Exception:  # a bug here must not stop the watch
                log.exception("wiretrail: the timeout watch failed; it goes on")

    def tick(self, now: float) -> None:
        t = self.config_addon.current.timeouts
        by_client: dict[str, list] = {}
        for fc in list(self.capture.flows.values()):
            by_client.setdefault(fc.flow.client_conn.id, []).append(fc)
        live = set()
        for client, handler in live_connections.live_clients():
            cid = client.id
            live.add(cid)
            phase = live_connections.client_phase(handler)
            prev = self._phases.get(cid)
            if prev is None or prev[0] != phase:
                # A connection's first request counts from its start (the TLS handshake is part of it).
                since = client.timestamp_start if prev is None and phase == HEADER else now
                prev = self._phases[cid] = (phase, since)
            waited = now - prev[1]
            if phase == HEADER and waited > t.request_header:
                self._phases[cid] = ("closed", now)
                message = (f"the client did not complete a request's headers within {t.request_header:g} s "
                           "(timeouts.request_header); the connection was closed")
                self.capture.record_connection_error(client, self.identity.by_client.get(client),
                                                     "request_header", message)
                live_connections.close_client(handler, "request header timeout")
            elif phase == IDLE and waited > t.idle:
                self._phases[cid] = ("closed", now)
                live_connections.close_client(handler, "idle")
            elif phase in (BUSY, OPAQUE) and now - live_connections.last_activity(handler) > t.idle \
                    and not self.capture.paused(client):
                self._stalled(handler, by_client.get(cid, []), t.idle)
        for cid in [c for c in self._phases if c not in live]:
            del self._phases[cid]
        for fc in list(self.capture.flows.values()):
            # From the request's release upstream, not its arrival: a request waiting for its own
            # record (a slow store) has not reached the upstream, which is not late yet.
            released = fc.released_at
            if fc.flow.response is None and released is not None and now - released > t.upstream_response:
                self.capture.end_flow(fc, 504, "response", f"the upstream did not answer within "
                                      f"{t.upstream_response:g} s (timeouts.upstream_response)")

    def _stalled(self, handler, flows: list, idle: float) -> None:
        ended = False
        for fc in flows:
            if fc.flow.response is None and fc.flow.request.timestamp_end:
                continue  # waiting for the upstream's answer: timeouts.upstream_response decides
            self.capture.end_flow(fc, 504, "idle", f"nothing moved on the connection for {idle:g} s "
                                  "(timeouts.idle)")
            ended = True
        if not ended and not flows:
            live_connections.close_client(handler, "idle")  # a tunnel or upgraded connection gone quiet
