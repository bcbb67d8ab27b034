"""The start-up gate at hook level: flows wait until the opener's `running`, or get 503."""
import asyncio
import json

from mitmproxy.test import tflow

from addons.startup import StartupGate


async def held_at(gate: StartupGate, waiting: asyncio.Future, timeout: float = 2.0) -> bool:
    """True once the flow is parked at the gate (and not through it); False at the deadline."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while gate.waiting == 0 and not waiting.done() and loop.time() < deadline:
        await asyncio.sleep(0.001)
    return gate.waiting == 1 and not waiting.done()


def test_a_flow_waits_for_the_opener_and_then_goes_on():
    async def run():
        gate = StartupGate(timeout=5)
        flow = tflow.tflow()
        waiting = asyncio.ensure_future(gate.requestheaders(flow))
        assert await held_at(gate, waiting)  # held while nothing is running
        gate.opener().running()
        await asyncio.wait_for(waiting, 1)
        assert gate.waiting == 0
        return flow

    assert asyncio.run(run()).response is None


def test_a_connect_waits_too():
    async def run():
        gate = StartupGate(timeout=5)
        flow = tflow.tflow()
        flow.request.method = "CONNECT"
        waiting = asyncio.ensure_future(gate.http_connect(flow))
        held = await held_at(gate, waiting)
        gate.opener().running()
        await asyncio.wait_for(waiting, 1)
        return held, flow

    held, flow = asyncio.run(run())
    assert held and flow.response is None


def test_a_gate_that_never_opens_answers_503_after_its_timeout():
    gate = StartupGate(timeout=0.05)
    flow = tflow.tflow()
    asyncio.run(gate.requestheaders(flow))
    assert flow.response.status_code == 503
    assert json.loads(flow.response.content)["error"]["code"] == "not_ready"
    assert flow.response.headers["retry-after"] == "1"


def test_an_open_gate_lets_flows_through_untouched():
    gate = StartupGate()
    gate.open()
    flow = tflow.tflow()
    asyncio.run(gate.requestheaders(flow))
    assert flow.response is None
