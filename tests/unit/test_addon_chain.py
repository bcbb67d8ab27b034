"""AddonChain: the parts in order, one dispatch per event, and flows failed closed."""
import asyncio
import json

from mitmproxy.test import taddons, tflow

from addons.chain import AddonChain
from addons.flow_state import REFUSAL


class Part:
    def __init__(self, name, calls, fail_on=()):
        self.name, self.calls, self.fail_on = name, calls, set(fail_on)

    def _hit(self, hook):
        self.calls.append((self.name, hook))
        if hook in self.fail_on:
            raise RuntimeError(f"{self.name} broke in {hook}")

    async def requestheaders(self, flow):
        await asyncio.sleep(0)
        self._hit("requestheaders")

    def request(self, flow):
        self._hit("request")

    def response(self, flow):
        self._hit("response")

    def running(self):
        self._hit("running")

    def done(self):
        self._hit("done")


def chain_of(*fail_on):
    calls = []
    parts = [Part(f"p{i}", calls, fails) for i, fails in enumerate(fail_on)]
    return AddonChain(parts), calls


def test_hooks_run_in_order_and_async_ones_are_awaited():
    chain, calls = chain_of((), (), ())
    flow = tflow.tflow()
    asyncio.run(chain.requestheaders(flow))
    chain.request(flow)
    assert calls == [("p0", "requestheaders"), ("p1", "requestheaders"), ("p2", "requestheaders"),
                     ("p0", "request"), ("p1", "request"), ("p2", "request")]
    assert flow.response is None
    assert not hasattr(chain, "http_connect")  # no part has it: mitmproxy skips the chain


def test_an_exception_before_upstream_answers_500_and_the_later_parts_still_see_the_flow():
    for hook, run in [("requestheaders", lambda c, f: asyncio.run(c.requestheaders(f))),
                      ("request", lambda c, f: c.request(f))]:
        chain, calls = chain_of((), (hook,), ())
        flow = tflow.tflow()
        with taddons.context():
            run(chain, flow)
        assert flow.response.status_code == 500, hook
        body = json.loads(flow.response.content)
        assert body["error"]["code"] == "internal_error" and "not forwarded" in body["error"]["message"]
        assert flow.metadata[REFUSAL]["reason"] == "internal_error"  # capture records the attempt
        assert ("p2", hook) in calls


def test_an_exception_after_upstream_is_logged_and_the_reply_still_reaches_the_other_parts():
    chain, calls = chain_of(("response",), ())
    flow = tflow.tflow(resp=True)
    with taddons.context():
        chain.response(flow)
    assert calls == [("p0", "response"), ("p1", "response")]
    assert flow.response.status_code == 200  # the upstream's reply, untouched


def test_a_part_that_fails_to_start_stops_the_gateway_and_the_rest_does_not_start():
    chain, calls = chain_of((), ("running",), ())
    with taddons.context() as tctx:
        stopped = []
        tctx.master.shutdown = lambda: stopped.append(True)
        chain.running()
    assert calls == [("p0", "running"), ("p1", "running")] and stopped == [True]


def test_done_reaches_every_part_even_after_one_fails():
    chain, calls = chain_of(("done",), ())
    with taddons.context():
        chain.done()
    assert calls == [("p0", "done"), ("p1", "done")]


class MessagePart:
    """Has the hooks of WebSocket and raw TCP capture, and fails in the ones it is told to."""

    def __init__(self, calls, fail_on=()):
        self.calls, self.fail_on = calls, set(fail_on)

    def _hit(self, hook, arg):
        self.calls.append(hook)
        if hook in self.fail_on:
            raise RuntimeError(f"broke in {hook}")

    async def websocket_message(self, flow):
        self._hit("websocket_message", flow)

    def websocket_start(self, flow):
        self._hit("websocket_start", flow)

    def websocket_end(self, flow):
        self._hit("websocket_end", flow)

    async def tcp_message(self, flow):
        self._hit("tcp_message", flow)

    def next_layer(self, nextlayer):
        self._hit("next_layer", nextlayer)


class Blocker:
    def __init__(self):
        self.blocked = []

    def block_failed(self, hook, arg):
        self.blocked.append((hook, arg))


def test_websocket_tcp_and_layer_hooks_are_dispatched_and_a_failure_blocks_what_they_guard():
    calls = []
    blocker = Blocker()
    chain = AddonChain([MessagePart(calls, fail_on=("websocket_message", "next_layer", "websocket_end")),
                        MessagePart(calls), blocker])
    flow = tflow.twebsocketflow()
    with taddons.context():
        asyncio.run(chain.websocket_message(flow))
        chain.websocket_start(flow)
        chain.next_layer("the next layer")
        chain.websocket_end(flow)  # after the fact: logged only
        tcp_flow = tflow.ttcpflow()
        asyncio.run(chain.tcp_message(tcp_flow))
    assert calls == ["websocket_message", "websocket_message", "websocket_start", "websocket_start",
                     "next_layer", "next_layer", "websocket_end", "websocket_end", "tcp_message", "tcp_message"]
    assert blocker.blocked == [("websocket_message", flow), ("next_layer", "the next layer")]


def test_an_exception_before_a_server_connection_opens_kills_it():
    from mitmproxy.proxy import server_hooks
    from mitmproxy.test import tflow as tf

    class Connects:
        async def server_connect(self, data):
            raise RuntimeError("policy broke")

    chain = AddonChain([Connects()])
    data = server_hooks.ServerConnectionHookData(server=tf.tserver_conn(), client=tf.tclient_conn())
    data.server.error = None
    with taddons.context():
        asyncio.run(chain.server_connect(data))
    assert data.server.error and "server_connect failed" in data.server.error


# -- the chain refuses a part it would never call ----------------------------------------------


class WithUndispatchedHook(Part):
    def client_connected(self, client):  # a real mitmproxy hook the chain does not dispatch
        self._hit("client_connected")


def test_a_part_with_a_hook_the_chain_does_not_dispatch_is_refused_at_start():
    import pytest

    from addons.chain import UndispatchedHook

    with pytest.raises(UndispatchedHook, match="WithUndispatchedHook defines client_connected"):
        AddonChain([Part("ok", []), WithUndispatchedHook("bad", [])])


def test_every_part_of_the_gateway_has_all_its_hooks_dispatched():
    from addons import gateway
    from addons.chain import undispatched

    assert {type(p).__name__: undispatched(p) for p in gateway.parts if undispatched(p)} == {}


# -- the gateway's part order ------------------------------------------------------------------


def test_the_gateway_parts_are_in_the_order_their_contracts_need():
    from addons import gateway

    names = [type(p).__name__ for p in gateway.parts]
    assert names[0] == "StartupGate" and names[-1] == "StartupGateOpener"  # flows wait for every part's running
    assert names[-2] == "FreezeStartupHeap"

    def before(a, b, why):
        assert names.index(a) < names.index(b), f"{a} must run before {b}: {why}"

    before("WiretrailConfig", "Identity", "every part reads the validated config")
    before("Identity", "Policy", "policy decides by who it is")
    before("Policy", "Credentials", "the credential injected is the matched connection's")
    before("Credentials", "Masking", "masking knows the injected secrets")
    before("Masking", "Trailers", "trailers are masked as headers")
    before("Trailers", "Capture", "request trailers are stripped of credentials before capture records them")
    before("RawTcp", "Capture", "a refused 101 is killed before capture records the reply")
    before("WebSocketCapture", "Capture", "its done closes open WebSockets before capture seals")
    before("Capture", "Timeouts", "a timeout ends a flow capture knows")
    before("Capture", "Postgres", "database sessions are capture's sessions")
