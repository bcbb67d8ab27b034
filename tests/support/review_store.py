"""Signed session stores for the review page's tests, written by recorder's real writer (with
its ledger and signatures), session by session: `Store(dir).session(sub=...)` gives a writer of
one session whose flows are OpenAI chat or MCP exchanges."""
from __future__ import annotations

import json
from pathlib import Path

from recorder.store import format_v1
from recorder.store.sessions import SessionRegistry
from recorder.store.signing import generate, load_signer
from recorder.store.writer import RecordWriter

T0 = 1767225600.0  # 2026-01-01T00:00:00Z


class Store:
    def __init__(self, root: Path, *, signed: bool = True, clock_start: float = T0):
        self.root = Path(root)
        self.dir = self.root / "store"
        self.keys = self.root / "keys"
        self.signer = None
        if signed:
            generate(self.keys)
            self.signer = load_signer(self.keys / "gateway.key")
        self.clock = [clock_start]
        self.writer = RecordWriter(fsync="never", storage_dir=self.dir, signer=self.signer,
                                   checkpoint_interval=3600, clock=lambda: self.clock[0])
        self.writer.start()
        self.registry = SessionRegistry(self.writer, self.dir, idle_timeout=600, max_duration=36000,
                                        signing_key_id=self.signer.key_id if self.signer else None,
                                        clock=lambda: self.clock[0])
        self.n = 0

    @property
    def public_key(self) -> Path:
        return self.keys / "gateway.pub"

    def session(self, sub: str = "alice", email: str | None = None, groups=("eng",), ip: str = "10.0.0.9",
                agent: dict | None = None) -> "SessionWriter":
        ident = {"sub": sub, "email": email or f"{sub}@example.com", "groups": list(groups), "iss": "https://idp/",
                 "method": "jwt", "authenticated": True}
        s = self.registry.begin_flow(f"{sub} {self.n}", ident, (ip, 50000 + self.n))
        self.n += 1
        return SessionWriter(self, s)

    def stop(self) -> None:
        self.registry.close_all()
        assert self.writer.stop()


class SessionWriter:
    def __init__(self, store: Store, session):
        self.store, self.session, self.n = store, session, 0

    def tick(self, seconds: float = 1.0) -> float:
        self.store.clock[0] += seconds
        return self.store.clock[0]

    def raw(self, t: str, fields: dict) -> None:
        """Any record, a type this gateway does not write included (as a newer gateway's would be):
        straight to the writer, past Session.record's check of the type."""
        self.session.records += 1
        self.session.writer.record(self.session.id, t, self.tick(), fields)

    def flow(self, url: str, request: dict | bytes | None, reply: dict | bytes, *, method="POST", status=200,
             ua="claude-cli/1.0.3 (external)", headers=()) -> str:
        self.n += 1
        flow = f"{self.session.id[-8:]}-{self.n:04d}-0000-0000-000000000000"
        body = request if isinstance(request, (bytes, type(None))) else json.dumps(request).encode()
        ts = self.tick()
        self.session.record("http.request", {
            "flow": flow, "conn": "c1", "connection": "llm", "method": method, "url": url, "http_version": "HTTP/1.1",
            "headers": [["content-type", "application/json"], ["user-agent", ua], ["authorization", "[credential:llm]"],
                        *map(list, headers)],
            "body": format_v1.encode_body(body) if body else None, "streamed": False}, ts=ts)
        rbody = reply if isinstance(reply, bytes) else json.dumps(reply).encode()
        self.session.record("http.response", {
            "flow": flow, "status": status, "reason": "OK", "http_version": "HTTP/1.1",
            "headers": [["content-type", "application/json"]], "body": format_v1.encode_body(rbody),
            "streamed": False}, ts=ts + 0.25)
        self.session.record("http.end", {"flow": flow, "status": status, "size": {"request": len(body or b""),
                                         "response": len(rbody)}, "duration_ms": 420.0, "ttfb_ms": 250.0}, ts=ts + 0.42)
        return flow

    def chat(self, messages: list[dict], reply_text: str = "", tool_calls: list[dict] | None = None,
             tools: list[dict] | None = None, model: str = "gpt-4o", usage=(100, 20), status: int = 200) -> str:
        req = {"model": model, "messages": messages}
        if tools is not None:
            req["tools"] = tools
        msg: dict = {"role": "assistant", "content": reply_text or None}
        if tool_calls:
            msg["tool_calls"] = [{"id": c["id"], "type": "function", "function": {"name": c["name"],
                                  "arguments": json.dumps(c["arguments"])}} for c in tool_calls]
        reply = {"id": "chatcmpl-1", "model": model, "choices": [{"index": 0, "message": msg,
                 "finish_reason": "tool_calls" if tool_calls else "stop"}],
                 "usage": {"prompt_tokens": usage[0], "completion_tokens": usage[1]}}
        if status >= 400:
            reply = {"error": {"message": "rate limited", "type": "rate_limit"}}
        return self.flow("https://api.openai.com/v1/chat/completions", req, reply, status=status)

    def mcp_call(self, name: str, arguments: dict, result_text: str, rid: int = 1) -> str:
        req = {"jsonrpc": "2.0", "id": rid, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
        reply = {"jsonrpc": "2.0", "id": rid, "result": {"content": [{"type": "text", "text": result_text}]}}
        return self.flow("https://mcp.example.com/mcp", req, reply, ua="mcp-client/0.1")

    def refused(self, url: str = "api.openai.com:443") -> None:
        self.n += 1
        self.raw("auth.refused", {"flow": f"refused-{self.n}", "conn": "c9", "mode": "regular", "method": "CONNECT",
                                  "url": url, "status": 403, "reason": "forbidden", "message": "not in group",
                                  "headers": []})

    @property
    def path(self) -> Path:
        return self.session.path

    @property
    def id(self) -> str:
        return self.session.id

    def close(self) -> Path:
        self.store.registry.end_flow(self.session)
        self.store.registry._open.pop(self.session.key, None)
        self.store.registry._close(self.session, "idle")
        return self.session.path

    def leave_open(self) -> Path:
        self.store.registry.end_flow(self.session)
        return self.session.path
