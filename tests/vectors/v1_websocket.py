"""The WebSocket test vector (docs/format.md §4, "WebSocket records"): an upgrade and three messages.

Run `python tests/vectors/v1_websocket.py` to (re)write v1-websocket.jsonl next to this file.
"""
from __future__ import annotations

from pathlib import Path

from recorder.store import format_v1

HERE = Path(__file__).resolve().parent
JSONL = HERE / "v1-websocket.jsonl"

SESSION_ID = "01KDVDNA00B8Y9W7VV5N66X2GB"
FLOW_ID = "7d1c2b3a-4e5f-4a6b-8c7d-9e0f1a2b3c4d"
CONN_ID = "0b6f2c1e-8d3a-4f5b-9c7d-2e1f0a9b8c7d"
URL = "https://api.openai.com/v1/responses"

RECORDS: list[tuple[str, float, dict]] = [
    ("session.open", 1767225600.0, {
        "session": SESSION_ID,
        "identity": {"sub": "alice", "email": "alice@example.com", "groups": ["engineering"],
                     "iss": "https://idp.example.com/", "method": "jwt", "authenticated": True},
        "client": {"ip": "127.0.0.1", "port": 50123}, "gateway": {"host": "gw1", "version": "0.1.0"},
        "key": None, "opened": 1767225600.0,
    }),
    ("http.request", 1767225600.25, {
        "flow": FLOW_ID, "conn": CONN_ID, "connection": "openai", "mode": "regular", "method": "GET", "url": URL,
        "http_version": "HTTP/1.1",
        "headers": [["upgrade", "websocket"], ["authorization", "[credential:openai]"]], "body": None,
        "streamed": False,
    }),
    ("http.response", 1767225600.5, {
        "flow": FLOW_ID, "status": 101, "reason": "Switching Protocols", "http_version": "HTTP/1.1",
        "headers": [["upgrade", "websocket"]], "body": None, "streamed": False,
    }),
    ("http.end", 1767225600.5, {
        "flow": FLOW_ID, "status": 101, "size": {"request": 0, "response": 0}, "duration_ms": 250.0, "ttfb_ms": 250.0,
    }),
    ("ws.open", 1767225600.5, {
        "flow": FLOW_ID, "conn": CONN_ID, "connection": "openai", "url": URL, "subprotocol": None, "extensions": None,
    }),
    ("ws.message", 1767225600.75, {
        "flow": FLOW_ID, "from": "client", "n": 0, "kind": "text",
        "body": format_v1.encode_body(b'{"type":"response.create","model":"gpt-5","input":"hi"}'),
    }),
    ("ws.message", 1767225601.0, {
        "flow": FLOW_ID, "from": "server", "n": 0, "kind": "text",
        "body": format_v1.encode_body(b'{"type":"response.output_text.delta","delta":"Hello"}'),
    }),
    ("ws.message", 1767225601.25, {
        "flow": FLOW_ID, "from": "server", "n": 1, "kind": "binary",
        "body": {"b64": "AAH+/w==", "size": 4},
    }),
    ("ws.close", 1767225601.5, {
        "flow": FLOW_ID, "code": 1000, "reason": "", "by": "client", "messages": {"client": 1, "server": 2},
        "size": {"client": 55, "server": 57}, "duration_ms": 1000.0,
    }),
    ("session.close", 1767225602.0, {
        "reason": "shutdown", "counts": {"flows": 1, "records": 10, "errors": 0}, "duration_s": 2.0,
    }),
]


def build_lines() -> list[bytes]:
    chain = format_v1.Chain()
    return [chain.next_line(t, ts, fields) for t, ts, fields in RECORDS]


if __name__ == "__main__":
    lines = build_lines()
    JSONL.write_bytes(b"".join(line + b"\n" for line in lines))
    for line in lines:
        print(line.decode())
    print("sha256 of the last line:", format_v1.line_hash(lines[-1]))
