"""addons/hook_dispatch.py calls what mitmproxy's own AddonManager calls, in the same order, with
the same handling of errors and AddonHalt, and sees addons added and removed later."""
from __future__ import annotations

import asyncio
import logging
import re
import types

import pytest
from mitmproxy import exceptions, hooks
from mitmproxy.addons import script
from mitmproxy.test import taddons, tflow

from addons import hook_dispatch


class Leaf:
    def __init__(self, name: str, calls: list, fail: str | None = None, halt: str | None = None):
        self.name, self.calls, self.fail, self.halt = name, calls, fail, halt

    def requestheaders(self, flow):
        self.calls.append((self.name, "requestheaders", flow.id))
        if self.fail == "requestheaders":
            raise ValueError(f"{self.name} failed")
        if self.halt == "requestheaders":
            raise exceptions.AddonHalt()

    async def response(self, flow):
        await asyncio.sleep(0)
        self.calls.append((self.name, "response", flow.id))
        if self.fail == "response":
            raise ValueError(f"{self.name} failed")


class Parent:
    def __init__(self, name: str, calls: list, children: list):
        self.name, self.calls, self.addons = name, calls, children

    def requestheaders(self, flow):
        self.calls.append((self.name, "requestheaders", flow.id))


class ModuleNamed:
    """A module imported under a hook's name is not a handler (mitmproxy skips it)."""
    requestheaders = types.ModuleType("requestheaders")


class NotCallable:
    name = "not-callable"
    requestheaders = 42


class AsyncOnly:
    name = "async-only"

    async def requestheaders(self, flow):
        pass


def _tree(calls: list, fail=None, halt=None) -> list:
    return [
        Leaf("a", calls),
        Parent("p", calls, [Leaf("p.1", calls, fail=fail), Parent("p.2", calls, [Leaf("p.2.1", calls)]),
                            Leaf("p.3", calls)]),
        ModuleNamed(),
        Leaf("b", calls, halt=halt),
        Leaf("c", calls),
    ]


def _run(patched: bool, scenario) -> tuple[list, list[str]]:
    """The calls and the logged addon errors of `scenario(manager, calls, loop)`."""
    if patched:
        hook_dispatch.install()
    else:
        hook_dispatch.uninstall()
    calls: list = []
    errors: list[str] = []

    class Errors(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.ERROR:
                errors.append(re.sub(r" at 0x[0-9a-f]+", "", record.getMessage()))  # addresses differ per run

    handler = Errors()
    logging.getLogger("mitmproxy.addonmanager").addHandler(handler)
    try:
        with taddons.context() as tctx:
            loop = asyncio.new_event_loop()
            try:
                scenario(tctx.master.addons, calls, loop)
            finally:
                loop.close()
    finally:
        logging.getLogger("mitmproxy.addonmanager").removeHandler(handler)
        hook_dispatch.uninstall()
    return calls, errors


def _flow():
    f = tflow.tflow(resp=True)
    f.id = "flow-1"
    return f


def _nested(m, calls, loop):
    m.add(*_tree(calls))
    loop.run_until_complete(m.trigger_event(hooks.all_hooks["requestheaders"](_flow())))
    loop.run_until_complete(m.trigger_event(hooks.all_hooks["response"](_flow())))
    m.trigger(hooks.all_hooks["requestheaders"](_flow()))


def _failing(m, calls, loop):
    m.add(*_tree(calls, fail="requestheaders"))
    loop.run_until_complete(m.trigger_event(hooks.all_hooks["requestheaders"](_flow())))
    m.trigger(hooks.all_hooks["requestheaders"](_flow()))


def _halting(m, calls, loop):
    m.add(*_tree(calls, halt="requestheaders"))
    loop.run_until_complete(m.trigger_event(hooks.all_hooks["requestheaders"](_flow())))
    m.trigger(hooks.all_hooks["requestheaders"](_flow()))


def _added_and_removed(m, calls, loop):
    first = Leaf("first", calls)
    m.add(first)
    loop.run_until_complete(m.trigger_event(hooks.all_hooks["requestheaders"](_flow())))
    later = Parent("later", calls, [Leaf("later.1", calls)])
    m.add(later)
    loop.run_until_complete(m.trigger_event(hooks.all_hooks["requestheaders"](_flow())))
    m.remove(first)
    loop.run_until_complete(m.trigger_event(hooks.all_hooks["requestheaders"](_flow())))
    later.addons.append(Leaf("later.2", calls))  # as ScriptLoader does: then register()s it
    m.register(later.addons[-1])
    loop.run_until_complete(m.trigger_event(hooks.all_hooks["requestheaders"](_flow())))


def _odd_handlers(m, calls, loop):
    m.add(Leaf("a", calls), NotCallable(), AsyncOnly(), Leaf("z", calls))
    loop.run_until_complete(m.trigger_event(hooks.all_hooks["requestheaders"](_flow())))
    m.trigger(hooks.all_hooks["requestheaders"](_flow()))


SCENARIOS = {
    "nested tree, sync and async handlers": _nested,
    "an exception skips the rest of its top-level addon only": _failing,
    "AddonHalt stops the event": _halting,
    "addons added and removed after the first event": _added_and_removed,
    "a non-callable handler and an async handler in trigger()": _odd_handlers,
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_same_calls_and_errors_as_mitmproxy(name):
    scenario = SCENARIOS[name]
    theirs = _run(False, scenario)
    ours = _run(True, scenario)
    assert theirs[0], "the scenario calls something"
    assert ours == theirs


def test_scenarios_see_what_they_claim():
    """The table above tests what it says (so that an equal result is not an empty one)."""
    calls, errors = _run(False, _failing)
    assert ("p.1", "requestheaders", "flow-1") in calls and ("p.3", "requestheaders", "flow-1") not in calls
    assert ("b", "requestheaders", "flow-1") in calls and any("p.1 failed" in e for e in errors)
    calls, _ = _run(False, _halting)
    assert ("b", "requestheaders", "flow-1") in calls and ("c", "requestheaders", "flow-1") not in calls
    calls, _ = _run(False, _added_and_removed)
    assert calls.count(("first", "requestheaders", "flow-1")) == 2
    assert calls.count(("later.2", "requestheaders", "flow-1")) == 1
    calls, errors = _run(False, _odd_handlers)
    assert any("not callable" in e for e in errors) and any("cannot be called from sync" in e for e in errors)


def test_the_walk_is_done_once_per_hook():
    hook_dispatch.install()
    try:
        with taddons.context() as tctx:
            m = tctx.master.addons
            calls: list = []
            m.add(*_tree(calls))
            walks = []
            real = hook_dispatch.addonmanager.traverse

            def counting(chain):
                walks.append(1)
                return real(chain)

            hook_dispatch.addonmanager.traverse = counting
            try:
                m.trigger(hooks.all_hooks["requestheaders"](_flow()))
                first = len(walks)
                for _ in range(49):
                    m.trigger(hooks.all_hooks["requestheaders"](_flow()))
            finally:
                hook_dispatch.addonmanager.traverse = real
            assert len(calls) == 50 * 8
            assert first >= len(m.chain) and len(walks) == first  # walked for the first event only
    finally:
        hook_dispatch.uninstall()


def test_a_script_loaded_and_reloaded_gets_the_events(tmp_path):
    """The gateway is such a script: a cache that kept the tree from before a script loaded (or its
    old module after a reload) would leave its hooks uncalled, and traffic unrecorded."""
    path = tmp_path / "part.py"
    path.write_text("calls = []\ndef requestheaders(flow):\n    calls.append('v1')\n")

    async def scenario():
        with taddons.context() as tctx:
            m = tctx.master.addons
            loader = script.ScriptLoader()
            m.add(loader)
            m.trigger(hooks.all_hooks["requestheaders"](_flow()))  # cached before the script loads
            tctx.configure(loader, scripts=[str(path)])
            for _ in range(200):  # the script loads in its watcher task
                if loader.addons and loader.addons[0].ns is not None:
                    break
                await asyncio.sleep(0.01)
            first = loader.addons[0].ns
            m.trigger(hooks.all_hooks["requestheaders"](_flow()))
            path.write_text("calls = []\ndef requestheaders(flow):\n    calls.append('v2')\n")
            loader.addons[0].loadscript()  # what the watcher does when the file changes
            await asyncio.sleep(0)  # the forget scheduled by register() runs
            second = loader.addons[0].ns
            m.trigger(hooks.all_hooks["requestheaders"](_flow()))
            return first.calls, second.calls

    hook_dispatch.install()
    try:
        first, second = asyncio.run(scenario())
    finally:
        hook_dispatch.uninstall()
    assert first == ["v1"] and second == ["v2"]
