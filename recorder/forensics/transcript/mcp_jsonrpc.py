"""MCP over HTTP: JSON-RPC 2.0 requests (tools/call and the rest), replies as JSON or SSE."""
from __future__ import annotations

import json

from recorder.forensics.exchange import Exchange
from recorder.forensics.transcript.model import Message, Part, Turn, load_json, text_of, tool_table
from recorder.http.sse import is_sse, parse_sse

PROTOCOL = "mcp"


def _rpc_list(data) -> list[dict]:
    items = data if isinstance(data, list) else [data]
    return [i for i in items if isinstance(i, dict) and i.get("jsonrpc") == "2.0"]


def matches(ex: Exchange) -> bool:
    return bool(_rpc_list(load_json(ex.request_body)))


def _request_message(rpc: dict) -> Message:
    method = str(rpc.get("method"))
    params = rpc.get("params") if isinstance(rpc.get("params"), dict) else {}
    rid = None if rpc.get("id") is None else str(rpc.get("id"))
    if method == "tools/call":
        return Message("client", [Part("tool_call", name=params.get("name"), id=rid, arguments=params.get("arguments"))])
    kind = "notification" if "id" not in rpc else "request"
    detail = f" {json.dumps(params, ensure_ascii=False)}" if params else ""
    return Message("client", [Part("other", text=f"{kind} {method}{detail}", id=rid)])


def _result_text(result) -> str:
    if isinstance(result, dict) and isinstance(result.get("content"), list):
        return text_of(result["content"])
    if isinstance(result, dict) and isinstance(result.get("tools"), list):
        return "tools: " + ", ".join(str(t.get("name")) for t in result["tools"] if isinstance(t, dict))
    return json.dumps(result, ensure_ascii=False)


def _reply_message(rpc: dict, calls: dict[str, str]) -> Message:
    rid = None if rpc.get("id") is None else str(rpc.get("id"))
    if isinstance(rpc.get("error"), dict):
        err = rpc["error"]
        return Message("server", [Part("tool_result", id=rid, name=calls.get(rid), text=f"error {err.get('code')}: {err.get('message')}", is_error=True)])
    if "result" in rpc:
        result = rpc["result"]
        is_error = result.get("isError") if isinstance(result, dict) else None
        part_type = "tool_result" if rid in calls else "text"
        return Message("server", [Part(part_type, id=rid, name=calls.get(rid), text=_result_text(result), is_error=is_error or None)])
    # A request or notification from the server (in an SSE stream).
    return Message("server", [Part("other", text=f"{rpc.get('method')} {json.dumps(rpc.get('params'), ensure_ascii=False)}")])


def decode(ex: Exchange) -> Turn:
    turn = Turn(ex, PROTOCOL)
    calls: dict[str, str] = {}
    for rpc in _rpc_list(load_json(ex.request_body)):
        msg = _request_message(rpc)
        turn.messages.append(msg)
        if rpc.get("method") == "tools/call" and rpc.get("id") is not None:
            calls[str(rpc["id"])] = str((rpc.get("params") or {}).get("name"))
        if rpc.get("method") == "initialize" and isinstance(rpc.get("params"), dict):
            info = rpc["params"].get("clientInfo") or {}
            turn.notes.append(f"client {info.get('name')} {info.get('version')}".rstrip())
    body = ex.response_body
    if is_sse(ex.response_header("content-type"), body):
        turn.streamed = True
        replies = [d for ev in parse_sse(body) for d in _rpc_list(ev.json())]
    else:
        replies = _rpc_list(load_json(body))
    turn.reply = [_reply_message(r, calls) for r in replies]
    for r in replies:  # tools/list: what the server offers, diffed between turns like an LLM's tools
        if isinstance(r.get("result"), dict) and isinstance(r["result"].get("tools"), list):
            turn.tools = tool_table(r["result"]["tools"], lambda t: t.get("name"))
    session = ex.request_header("mcp-session-id") or ex.response_header("mcp-session-id")
    if session:
        turn.notes.append(f"mcp session {session}")
    return turn
