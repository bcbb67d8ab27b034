"""Holds flows that arrive before wiretrail is ready.

mitmproxy listens before the script's addons have run `running`: until then there is no
verifier, no policy and no store. A CONNECT let through in that window would open a tunnel
as anonymous for its whole life. The gate is first in the chain and makes such flows wait;
its opener is last and opens it once every addon before it has run `running`.
"""
from __future__ import annotations

import asyncio
import logging

from mitmproxy import http

from addons.refusal import error_response

log = logging.getLogger("wiretrail")


class StartupGate:
    def __init__(self, timeout: float = 30.0):
        self.timeout = timeout
        self.is_open = False
        self._opened = asyncio.Event()
        self.waiting = 0  # flows held right now

    def open(self) -> None:
        self.is_open = True
        self._opened.set()

    def opener(self) -> "StartupGateOpener":
        return StartupGateOpener(self)

    async def _wait(self, flow: http.HTTPFlow) -> None:
        self.waiting += 1
        try:
            await asyncio.wait_for(self._opened.wait(), self.timeout)
        except asyncio.TimeoutError:
            # Not a refusal of the caller: nothing is up to record one.
            log.error(f"wiretrail: not ready after {self.timeout:g} s; answering 503")
            flow.response = error_response(flow, 503, "not_ready",
                                           "wiretrail is still starting and cannot record; retry shortly.",
                                           {"retry-after": "1"})
        finally:
            self.waiting -= 1

    async def http_connect(self, flow: http.HTTPFlow):
        if not self.is_open:
            await self._wait(flow)

    async def requestheaders(self, flow: http.HTTPFlow):
        if not self.is_open:
            await self._wait(flow)


class StartupGateOpener:
    """Last in the chain: its `running` comes after every other addon's."""

    def __init__(self, gate: StartupGate):
        self.gate = gate

    def running(self):
        if not self.gate.is_open:
            self.gate.open()


class StoreOpened:
    """Right after capture in the chain: `running` waits until the writer has tried to open the
    store's ledger. One it cannot open (another gateway with the same id holds its lock, or it
    is not writable) is then logged as an error during start-up, and mitmproxy exits, whichever
    writer is in use: the process writer opens it in its own process, after `running` returned."""

    def __init__(self, capture, timeout: float = 30.0):
        self.capture = capture
        self.timeout = timeout

    async def running(self):
        writer = self.capture.writer
        if writer is None:
            return
        err = await asyncio.get_running_loop().run_in_executor(None, writer.wait_opened, self.timeout)
        if err is not None:
            await asyncio.sleep(0)  # the writer's own report of it is logged first
