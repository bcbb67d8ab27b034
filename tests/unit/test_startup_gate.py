"""The start-up gate at hook level: flows wait until the opener's `running`, or get 503."""
import asyncio
import json

from mitmproxy.test import tflow

from addons.startup import StartupGate


def test_a_flow_waits_for_the_opener_and_then_goes_on():
    async def run():
        gate = StartupGate(timeout=5)
        flow = tflow.tflow()
        waiting = asyncio.ensure_future(gate.requestheaders(flow))
        await asyncio.sleep(0.05)
        assert not waiting.done()  # held while nothing is running
        gate.opener().running()
        await asyncio.wait_for(waiting, 1)
        return flow

    assert asyncio.run(run()).response is None


def test_a_connect_waits_too():
    async def run():
        gate = StartupGate(timeout=5)
        flow = tflow.tflow()
        flow.request.method = "CONNECT"
        waiting = asyncio.ensure_future(gate.http_connect(flow))
        await asyncio.sleep(0.05)
        held = not waiting.done()
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
