"""An MCP client built on the official MCP Python SDK, for end-to-end tests.

Run by the SDK's own venv (tests/support/mcp_sdk.py), never imported by the tests:

    python mcp_client_app.py --transport streamable-http|sse URL [--proxy URL --ca PEM] [--header 'K: V']
    python mcp_client_app.py --transport stdio -- CMD ARGS...

It runs one scenario against tests/support/mcp_server_app.py and prints a JSON document of
what it got: each step's result (or error), the progress it saw, the server requests it
answered (sampling, elicitation) and the session id. Exit 0 even when a step failed: the
document says which (a test asserts on it); exit 2 when it could not connect at all.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import sys
import traceback

import httpx

from mcp import ClientSession, types
from mcp.shared.context import RequestContext

TIMEOUT = float(os.environ.get("MCP_TEST_STEP_TIMEOUT", "30"))


def dump(obj):
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_none=True, by_alias=True)
    return obj


class Scenario:
    def __init__(self, steps: list[str]):
        self.steps = steps
        self.out: dict = {"steps": [], "progress": {}, "server_requests": []}

    async def sampling(self, context: RequestContext, params: types.CreateMessageRequestParams):
        question = params.messages[0].content.text if params.messages else ""
        self.out["server_requests"].append({"method": "sampling/createMessage", "question": question})
        return types.CreateMessageResult(role="assistant", model="test-model",
                                         content=types.TextContent(type="text", text=f"42 is the answer to {question}"),
                                         stopReason="endTurn")

    async def elicitation(self, context: RequestContext, params):
        self.out["server_requests"].append({"method": "elicitation/create", "message": params.message})
        return types.ElicitResult(action="accept", content={"confirm": True})

    async def roots(self, context: RequestContext):
        self.out["server_requests"].append({"method": "roots/list"})
        return types.ListRootsResult(roots=[types.Root(uri="file:///work/project", name="project")])

    async def step(self, name: str, coro):
        try:
            result = await asyncio.wait_for(coro, TIMEOUT)
            self.out["steps"].append({"step": name, "ok": True, "result": dump(result)})
        except Exception as e:  # the document says what failed
            self.out["steps"].append({"step": name, "ok": False, "error": f"{type(e).__name__}: {e}"})

    def progress(self, key: str):
        seen = self.out["progress"].setdefault(key, [])

        async def callback(progress: float, total: float | None, message: str | None):
            seen.append([progress, total, message])

        return callback

    async def run(self, session: ClientSession) -> None:
        await self.step("initialize", session.initialize())
        for name in self.steps:
            if name == "list_tools":
                await self.step("list_tools", session.list_tools())
            elif name == "read_secret":
                await self.step("read_secret", session.call_tool("read_secret", {}))
            elif name == "count":
                await self.step("count", session.call_tool("count", {"n": 3}, progress_callback=self.progress("count")))
            elif name == "concurrent":
                await asyncio.gather(
                    self.step("count_a", session.call_tool("count", {"n": 4}, progress_callback=self.progress("a"))),
                    self.step("count_b", session.call_tool("count", {"n": 2}, progress_callback=self.progress("b"))),
                )
            elif name == "long_count":  # long enough to kill the gateway in the middle of it
                await self.step("long_count", session.call_tool("count", {"n": 40},
                                                                progress_callback=self.progress("long")))
            elif name == "big":  # 64 KiB of arguments: no partly filled block of a full disk has room for it
                await self.step("big", session.call_tool("explode", {"reason": "must-not-arrive-" + os.urandom(32768).hex()}))
            elif name == "resumable":
                await self.step("resumable", session.call_tool("resumable", {}, progress_callback=self.progress("r")))
            elif name == "gate":  # wait until the test says go (it changes the world in between)
                gate = os.environ["MCP_TEST_GATE"]
                for _ in range(1200):
                    if os.path.exists(gate):
                        break
                    await asyncio.sleep(0.05)
            elif name == "explode":
                await self.step("explode", session.call_tool("explode", {"reason": "on purpose"}))
            elif name == "ask_model":
                await self.step("ask_model", session.call_tool("ask_model", {"question": "what is six times seven"}))
            elif name == "confirm":
                await self.step("confirm", session.call_tool("confirm", {"action": "deploy"}))
            elif name == "add_tool":
                await self.step("add_tool", session.call_tool("add_tool", {}))
                await asyncio.sleep(0.2)  # the list_changed notification arrives
                await self.step("list_tools_again", session.list_tools())
            elif name == "resources":
                await self.step("list_resources", session.list_resources())
                await self.step("read_resource", session.read_resource("config://app"))
                await self.step("read_missing", session.read_resource("config://missing"))
            elif name == "prompts":
                await self.step("list_prompts", session.list_prompts())
                await self.step("get_prompt", session.get_prompt("review", {"code": "print(1)"}))
            else:
                raise SystemExit(f"unknown step {name}")


def http_factory(proxy: str | None, ca: str | None, extra: dict):
    def factory(headers=None, timeout=None, auth=None) -> httpx.AsyncClient:
        verify = ssl.create_default_context(cafile=ca) if ca else True
        merged = dict(headers or {})
        merged.update(extra)
        return httpx.AsyncClient(headers=merged, timeout=timeout or httpx.Timeout(TIMEOUT, read=300),
                                 auth=auth, proxy=proxy, verify=verify, trust_env=False)
    return factory


async def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--transport", choices=("streamable-http", "sse", "stdio"), required=True)
    p.add_argument("--url")
    p.add_argument("--proxy")
    p.add_argument("--ca")
    p.add_argument("--header", action="append", default=[])
    p.add_argument("--steps", default="list_tools,read_secret,count,explode,ask_model,confirm,add_tool,resources,prompts")
    p.add_argument("command", nargs="*")
    args = p.parse_args()
    extra = dict((h.split(":", 1)[0].strip(), h.split(":", 1)[1].strip()) for h in args.header)
    scenario = Scenario([s for s in args.steps.split(",") if s])
    callbacks = dict(sampling_callback=scenario.sampling, elicitation_callback=scenario.elicitation,
                     list_roots_callback=scenario.roots,
                     client_info=types.Implementation(name="wiretrail-test-client", version="1.0"))
    try:
        if args.transport == "streamable-http":
            from mcp.client.streamable_http import streamable_http_client

            client = http_factory(args.proxy, args.ca, extra)()
            async with client, streamable_http_client(args.url, http_client=client) as (read, write, session_id):
                async with ClientSession(read, write, **callbacks) as session:
                    await scenario.run(session)
                    scenario.out["session_id"] = session_id()
        elif args.transport == "sse":
            from mcp.client.sse import sse_client

            async with sse_client(args.url, httpx_client_factory=http_factory(args.proxy, args.ca, extra),
                                  on_session_created=lambda sid: scenario.out.__setitem__("session_id", sid)) \
                    as (read, write):
                async with ClientSession(read, write, **callbacks) as session:
                    await scenario.run(session)
        else:
            from mcp.client.stdio import StdioServerParameters, stdio_client

            params = StdioServerParameters(command=args.command[0], args=args.command[1:], env=dict(os.environ))
            async with stdio_client(params) as (read, write):
                async with ClientSession(read, write, **callbacks) as session:
                    await scenario.run(session)
    except BaseException as e:  # noqa: BLE001 - a test reads what went wrong
        scenario.out["fatal"] = f"{type(e).__name__}: {e}"
        scenario.out["traceback"] = traceback.format_exc()
        print(json.dumps(scenario.out))
        return 2
    print(json.dumps(scenario.out))
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
