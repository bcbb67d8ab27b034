"""JSON-RPC 2.0 as MCP uses it: what a message is, and how ids are compared.

A request has `method` and `id`, a notification `method` and no `id`, a response `id` and
`result` or `error`. Ids are compared as their JSON (1 and "1" are different ids), and each
side numbers its own requests: a server's request 0 is not the client's request 0.
"""
from __future__ import annotations

import json

REQUEST = "request"
NOTIFICATION = "notification"
RESULT = "result"
ERROR = "error"

# JSON-RPC's reserved error codes, named in the transcript.
ERROR_NAMES = {-32700: "parse error", -32600: "invalid request", -32601: "method not found",
               -32602: "invalid params", -32603: "internal error", -32000: "server error",
               -32001: "request timeout", -32002: "resource not found", -32042: "URL elicitation required"}


def rpc_messages(data) -> list[dict]:
    """The JSON-RPC 2.0 objects in a parsed body: one message, or a batch."""
    items = data if isinstance(data, list) else [data]
    return [m for m in items if isinstance(m, dict) and m.get("jsonrpc") == "2.0"]


def kind(msg: dict) -> str | None:
    if isinstance(msg.get("method"), str):
        return REQUEST if "id" in msg and msg.get("id") is not None else NOTIFICATION
    if "id" in msg:
        if "error" in msg:
            return ERROR
        if "result" in msg:
            return RESULT
    return None


def id_key(value) -> str:
    """An id as a comparable key (its JSON)."""
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


def id_text(value) -> str:
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def error_text(error) -> str:
    if not isinstance(error, dict):
        return json.dumps(error, ensure_ascii=False)
    code = error.get("code")
    name = ERROR_NAMES.get(code) if isinstance(code, int) and not isinstance(code, bool) else None
    head = f"{code}" + (f" {name}" if name else "")
    text = f"{head}: {error.get('message')}"
    if error.get("data") not in (None, "", {}):
        text += " " + json.dumps(error["data"], ensure_ascii=False)
    return text
