"""The wiretrail addons as one mitmproxy addon: each event is dispatched once, and fails closed.

mitmproxy walks its whole chain for every event and calls each addon inside a `safecall`
that logs an exception and goes on. For wiretrail that has two costs:

- speed: eight addons took about 5 % of a small request in dispatch alone
  (docs/performance.md);
- safety: an exception in identity or policy would be logged and the request would go
  upstream unchecked; one in a part's `running` would leave the gateway up half-started.

`AddonChain` calls the parts' hooks in order. An exception before the request has gone
upstream answers the flow with 500 (nothing is forwarded; capture records the refusal).
One after it is logged and the other parts still run, so the reply is still recorded. An
exception in `running` stops the gateway.

A part that defines a mitmproxy hook the chain does not dispatch would never be called, and
nothing would say so: the chain refuses it when it is built, so the gateway does not start.
"""
from __future__ import annotations

import inspect
import logging

import mitmproxy.proxy.layers  # noqa: F401 (registers the protocol hooks in hooks.all_hooks)
import mitmproxy.proxy.server_hooks  # noqa: F401 (registers the connection hooks)
from mitmproxy import ctx, hooks

from addons.refusal import refuse

log = logging.getLogger("wiretrail")

BEFORE_UPSTREAM = ("http_connect", "requestheaders", "request")
# What a connection carries past its request: the layer mitmproxy picks for it (next_layer)
# and WebSocket and raw TCP messages. An exception there stops what the hook guards: the
# parts' `block_failed(hook, arg)` refuse the layer, drop the message and close the connection.
GUARDED = ("next_layer", "websocket_start", "websocket_message", "tcp_start", "tcp_message")
# After upstream, and tls_clienthello (if policy fails there, the connection is intercepted
# and its requests are checked as usual): logged, and the other parts still run.
LOGGED = ("responseheaders", "response", "error", "tls_clienthello", "websocket_end", "tcp_end", "tcp_error")
# Errors in these reach mitmproxy: `load` and `configure` raise OptionsError on a bad config.
PASSED_THROUGH = ("load", "configure")
# Before an upstream connection opens: an exception kills that connection (nothing is sent).
CONNECTING = ("server_connect",)
DISPATCHED = BEFORE_UPSTREAM + GUARDED + LOGGED + PASSED_THROUGH + CONNECTING + ("running", "done")


class UndispatchedHook(Exception):
    """A part defines a hook the chain would never call."""


def undispatched(part) -> list[str]:
    """The mitmproxy hooks `part` defines that the chain does not dispatch."""
    return sorted(name for name in hooks.all_hooks if name not in DISPATCHED and callable(getattr(part, name, None)))


class AddonChain:
    def __init__(self, parts: list):
        self.parts = list(parts)
        for p in self.parts:
            missing = undispatched(p)
            if missing:
                raise UndispatchedHook(
                    f"{type(p).__name__} defines {', '.join(missing)}, which the wiretrail chain does not dispatch, "
                    "so it would never run: add the hook to a list in addons/chain.py (and say there what a failure "
                    "in it does), or remove it from the part")
        blockers = [p.block_failed for p in self.parts if callable(getattr(p, "block_failed", None))]
        for hook in DISPATCHED:
            handlers = [getattr(p, hook) for p in self.parts if callable(getattr(p, hook, None))]
            if not handlers:
                continue
            if hook in PASSED_THROUGH:
                method = _passed_through(handlers)
            elif hook == "running":
                method = _running(handlers)
            elif hook == "done":
                method = _done(handlers)
            elif hook in GUARDED:
                method = _guarded(hook, handlers, fail_closed=False, blockers=blockers)
            else:
                method = _guarded(hook, handlers, fail_closed=hook in BEFORE_UPSTREAM)
            setattr(self, hook, method)


def _name(handler) -> str:
    return f"{type(handler.__self__).__name__}.{handler.__name__}"


def _fail(hook: str, handler, flow, fail_closed: bool, blockers=()) -> None:
    log.exception(f"wiretrail: {_name(handler)} failed")
    if hook in CONNECTING:
        flow.server.error = f"wiretrail could not check this connection ({hook} failed)"
    elif fail_closed and getattr(flow, "response", True) is None:
        refuse(flow, 500, "internal_error", f"wiretrail could not check this request ({hook} failed), so it "
               "was not forwarded. The gateway operator can see why in its log.")
    for block in blockers:
        try:
            block(hook, flow)
        except Exception:
            log.exception(f"wiretrail: {_name(block)} failed to stop what {hook} guards")


def _guarded(hook: str, handlers: list, *, fail_closed: bool, blockers=()):
    if not any(inspect.iscoroutinefunction(h) for h in handlers):
        def dispatch(arg):
            for h in handlers:
                try:
                    h(arg)
                except Exception:
                    _fail(hook, h, arg, fail_closed, blockers)
        return dispatch

    is_async = [inspect.iscoroutinefunction(h) for h in handlers]
    steps = list(zip(handlers, is_async))

    async def dispatch_async(arg):
        for h, awaited in steps:
            try:
                if awaited:
                    await h(arg)
                else:
                    h(arg)
            except Exception:
                _fail(hook, h, arg, fail_closed, blockers)
    return dispatch_async


def _passed_through(handlers: list):
    def dispatch(*args):
        for h in handlers:
            h(*args)
    return dispatch


def _done(handlers: list):
    def done():
        for h in handlers:  # every part, so capture still seals if another one fails
            try:
                h()
            except Exception:
                log.exception(f"wiretrail: {_name(h)} failed while stopping")
    return done


def _running(handlers: list):
    def stop(h) -> None:
        # mitmproxy's save.py model: stop rather than run half-started (no verifier, no store).
        log.exception(f"wiretrail: {_name(h)} failed while starting; the gateway stops")
        ctx.master.shutdown()

    if not any(inspect.iscoroutinefunction(h) for h in handlers):
        def running():
            for h in handlers:
                try:
                    h()
                except Exception:
                    stop(h)
                    return
        return running

    async def running_async():
        for h in handlers:
            try:
                if inspect.iscoroutinefunction(h):
                    await h()
                else:
                    h()
            except Exception:
                stop(h)
                return
    return running_async
