"""mitmproxy 11.0.2's hook dispatch with the addon walk done once per hook, not once per event.

For every event, mitmproxy's AddonManager walks its whole addon tree (about 45 addons in
mitmdump, most of which implement few hooks): a generator per addon, a `getattr` per addon and
hook, a `safecall` context manager per addon, and `Hook.args()` through `dataclasses.fields` per
call. That walk was about a third of the event loop's time in a 500-session burst
(docs/performance.md). Here the (addon, handler) pairs of each hook are found once and kept
until the tree changes: an addon added or removed, or a script (re)loaded. What is called, in
what order, with what arguments, and how an exception or AddonHalt is handled is unchanged;
tests/unit/test_hook_dispatch.py checks that against mitmproxy's own methods.

Applied by `install()`, which addons/gateway.py calls when mitmdump loads it.
"""
from __future__ import annotations

import asyncio
import dataclasses
import inspect
import types

from mitmproxy import addonmanager, exceptions, hooks
from mitmproxy.addons import script

_ORIGINAL = {}  # name -> mitmproxy's own function, for uninstall() (tests)


def _handlers(manager, name: str) -> list:
    """[(top-level addon, [(addon, handler), ...])] for hook `name`, in mitmproxy's order."""
    cache = manager.__dict__.get("_wiretrail_hooks")
    if cache is None:
        cache = manager.__dict__["_wiretrail_hooks"] = {}
    got = cache.get(name)
    if got is None:
        got = []
        for top in manager.chain:
            pairs = []
            for a in addonmanager.traverse([top]):
                func = getattr(a, name, None)
                if func:
                    if callable(func):
                        pairs.append((a, func))
                    elif not isinstance(func, types.ModuleType):
                        pairs.append((a, _not_callable(name, a)))  # raised when called, in safecall
            if pairs:
                got.append((top, pairs))
        cache[name] = got
    return got


def _not_callable(name: str, addon):
    def raiser(*_args):
        raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")
    return raiser


def _forget(manager) -> None:
    manager.__dict__.pop("_wiretrail_hooks", None)


_FIELDS: dict[type, tuple[str, ...]] = {}


def _args(event: hooks.Hook) -> list:
    names = _FIELDS.get(type(event))
    if names is None:
        names = _FIELDS[type(event)] = tuple(f.name for f in dataclasses.fields(event))
    return [getattr(event, n) for n in names]


async def trigger_event(self, event: hooks.Hook):
    """Asynchronously trigger an event across all addons."""
    assert isinstance(event, hooks.Hook)
    args = _args(event)
    for _top, pairs in _handlers(self, event.name):
        try:
            with addonmanager.safecall():
                for _addon, func in pairs:
                    res = func(*args)
                    if res is not None and inspect.isawaitable(res):
                        await res
        except exceptions.AddonHalt:
            return


def trigger(self, event: hooks.Hook):
    """Trigger an event across all addons (sync handlers only)."""
    assert isinstance(event, hooks.Hook)
    args = _args(event)
    for _top, pairs in _handlers(self, event.name):
        try:
            with addonmanager.safecall():
                for addon, func in pairs:
                    if inspect.iscoroutinefunction(func):
                        raise exceptions.AddonManagerError(
                            f"Async handler {event.name} ({addon}) cannot be called from sync context")
                    func(*args)
        except exceptions.AddonHalt:
            return


def _forgetting(original):
    def wrapper(self, *a, **kw):
        try:
            return original(self, *a, **kw)
        finally:
            _forget(self)
            # Script.loadscript registers a script before its Script points at it: forget again
            # once the current step is over.
            try:
                asyncio.get_running_loop().call_soon(_forget, self)
            except RuntimeError:
                pass
    wrapper.__wrapped__ = original
    wrapper.__doc__ = original.__doc__
    return wrapper


def _script_forgetting(original):
    def wrapper(self, *a, **kw):
        try:
            return original(self, *a, **kw)
        finally:
            from mitmproxy import ctx
            master = getattr(ctx, "master", None)
            if master is not None:
                _forget(master.addons)
    wrapper.__wrapped__ = original
    return wrapper


def install() -> None:
    """Replace AddonManager.trigger_event and trigger; the tree-changing methods drop the cache."""
    if _ORIGINAL:
        return
    am = addonmanager.AddonManager
    for name in ("trigger_event", "trigger", "register", "remove", "add", "clear"):
        _ORIGINAL[name] = getattr(am, name)
    _ORIGINAL["loadscript"] = script.Script.loadscript
    _ORIGINAL["configure"] = script.ScriptLoader.configure
    am.trigger_event = trigger_event
    am.trigger = trigger
    for name in ("register", "remove", "add", "clear"):
        setattr(am, name, _forgetting(_ORIGINAL[name]))
    script.Script.loadscript = _script_forgetting(_ORIGINAL["loadscript"])
    script.ScriptLoader.configure = _script_forgetting(_ORIGINAL["configure"])


def uninstall() -> None:
    """mitmproxy's own methods back (tests)."""
    if not _ORIGINAL:
        return
    am = addonmanager.AddonManager
    for name in ("trigger_event", "trigger", "register", "remove", "add", "clear"):
        setattr(am, name, _ORIGINAL[name])
    script.Script.loadscript = _ORIGINAL["loadscript"]
    script.ScriptLoader.configure = _ORIGINAL["configure"]
    _ORIGINAL.clear()
