"""Moves the start-up heap out of the garbage collector's way.

Once wiretrail is running, most of the process's ~90 000 tracked objects live until it
stops: mitmproxy's addons and options, the config, the masking catalogue, the verifier.
CPython's full collections walk them all, on the event loop: 40–60 ms pauses every
~1500 requests in the bench, which hold back every stream in flight. `gc.freeze()` moves
them to a generation no collection visits (docs/performance.md, "Where the gateway's time goes").
"""
from __future__ import annotations

import gc


class FreezeStartupHeap:
    """Runs `running` after every other part, just before the start-up gate opens."""

    def running(self):
        gc.collect()  # garbage left by start-up is freed, not frozen for good
        gc.freeze()
