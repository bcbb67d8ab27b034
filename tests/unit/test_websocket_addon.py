"""The WebSocket capture addon, driven by taddons/tflow: what hooks alone decide.

The end-to-end tests (tests/e2e/test_websocket_e2e.py) run a real client, gateway and upstream;
these pin down that mitmproxy's message list stays bounded, that a WebSocket nobody records lets
nothing through, and the records of a WebSocket still open at shutdown."""
import asyncio

from mitmproxy import websocket
from mitmproxy.test import taddons, tflow
from wsproto.frame_protocol import Opcode

from addons.capture import Capture
from addons.config import WiretrailConfig
from addons.masking import Masking
from addons.websocket import WebSocketCapture
from recorder.forensics.reader import iter_session_files, read_session
from tests.unit.test_capture_addon import write_config


async def upgraded(capture):
    """A WebSocket flow whose upgrade capture recorded: request, then the 101."""
    flow = tflow.twebsocketflow()
    flow.websocket.messages = []
    reply, flow.response = flow.response, None
    await capture.requestheaders(flow)
    await capture.request(flow)
    flow.response = reply
    capture.response(flow)
    return flow


def test_messages_are_recorded_in_order_and_mitmproxy_keeps_only_the_last(tmp_path):
    cfg_path = write_config(tmp_path)

    async def main():
        cfg = WiretrailConfig()
        masking = Masking(cfg)
        capture = Capture(cfg, masking)
        ws = WebSocketCapture(cfg, capture)
        with taddons.context(cfg, capture, ws) as tctx:
            tctx.configure(cfg, wiretrail_config=str(cfg_path))
            cfg.running()
            masking.running()
            capture.running()
            flow = await upgraded(capture)
            ws.websocket_start(flow)
            for i in range(100):
                flow.websocket.messages.append(
                    websocket.WebSocketMessage(Opcode.TEXT, i % 2 == 0, f"message {i}!".encode()))
                await ws.websocket_message(flow)
                assert len(flow.websocket.messages) == 1  # not 100: handed over, then dropped
                assert not flow.websocket.messages[-1].dropped
            flow.websocket.close_code, flow.websocket.closed_by_client = 1000, True
            ws.websocket_end(flow)
            # A WebSocket whose upgrade nothing recorded lets no message through.
            other = tflow.twebsocketflow(messages=False)
            other.websocket.messages = [websocket.WebSocketMessage(Opcode.TEXT, True, b"sneaky")]
            ws.websocket_start(other)
            await ws.websocket_message(other)
            assert other.websocket.messages[-1].dropped
            # One still open at shutdown gets its ws.close before the session is sealed.
            third = await upgraded(capture)
            ws.websocket_start(third)
            ws.done()
            capture.done()
        return [read_session(p) for p in iter_session_files(tmp_path / "store")], flow.id, third.id

    (s,), fid, tid = asyncio.run(main())
    assert s.state == "closed", s.problems
    mine = [r for r in s.records if r.get("flow") == fid]
    msgs = [r for r in mine if r["t"] == "ws.message"]
    assert [r["body"]["text"] for r in msgs] == [f"message {i}!" for i in range(100)]
    assert [r["from"] for r in msgs[:2]] == ["client", "server"]
    assert mine[-1]["t"] == "ws.close" and mine[-1]["messages"] == {"client": 50, "server": 50}
    third = [r for r in s.records if r.get("flow") == tid]
    assert [r["t"] for r in third][-2:] == ["ws.open", "ws.close"]
    assert third[-1]["by"] == "gateway" and third[-1]["code"] == 1001
    assert b"sneaky" not in b"".join(str(r).encode() for r in s.records)
