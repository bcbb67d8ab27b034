"""The ws.* and tcp.* records: their fields, built from plain values (docs/format.md).

addons/websocket.py and addons/raw_tcp.py read mitmproxy's flows and call these; the
bodies are handed over raw (WsMessageBody, ChunkBytes) and masked by the writer.
"""
from __future__ import annotations

from recorder.protocols.ws_masking import WsDirection, WsFlush, WsMessageBody
from recorder.store.bodies import BodyStream, ChunkBytes

# Close codes the gateway sends itself (RFC 6455 §7.4.1).
CLOSE_NOT_RECORDED = 1013  # "Try Again Later": like the 503 of an HTTP request it could not record
CLOSE_NOT_CHECKED = 1011  # "Internal Error": a part of the gateway failed on this message
CLOSE_SHUTDOWN = 1001  # "Going Away"


class WsState:
    """One WebSocket on its way through capture: its session, counters and maskers."""

    __slots__ = ("flow", "session", "conn", "directions", "counts", "sizes", "started", "closing", "closed_by",
                 "close_code", "close_reason", "refused_message")

    def __init__(self, flow_id: str, session, conn: str, masker=None, max_body: int = 0, started: float = 0.0):
        self.flow = flow_id
        self.session = session
        self.conn = conn
        # The client's messages are recorded before they are forwarded: never held back.
        server = WsDirection(masker, max_body, hold=True)
        self.directions = {"client": WsDirection(masker, max_body, hold=False, before=server), "server": server}
        self.counts = {"client": 0, "server": 0}
        self.sizes = {"client": 0, "server": 0}
        self.started = started
        self.closing: str | None = None  # why the gateway is closing it; nothing more is forwarded
        self.closed_by: str | None = None
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.refused_message: int | None = None  # n of the client message that was not forwarded


def ws_open_fields(flow_id: str, conn: str, connection: str | None, url: str, subprotocol: str | None,
                   extensions: str | None) -> dict:
    return {"flow": flow_id, "conn": conn, "connection": connection, "url": url,
            "subprotocol": subprotocol, "extensions": extensions}


def ws_message_fields(state: WsState, sender: str, data: bytes, text: bool) -> dict:
    """The next ws.message of `sender` ("client" or "server"); counts it."""
    n = state.counts[sender]
    state.counts[sender] += 1
    state.sizes[sender] += len(data)
    return {"flow": state.flow, "from": sender, "n": n, "kind": "text" if text else "binary",
            "body": WsMessageBody(data, text, state.directions[sender])}


def ws_close_fields(state: WsState, *, code: int | None, reason: str | None, by: str | None, ended: float,
                    message: str | None = None) -> dict:
    fields = {
        "flow": state.flow,
        "code": code,
        "reason": reason or "",
        "by": by,
        "messages": dict(state.counts),
        "size": dict(state.sizes),
        "duration_ms": round(max(0.0, ended - state.started) * 1000, 3) if state.started else None,
        "held": WsFlush(state.directions["client"], state.directions["server"]),
    }
    if message:
        fields["message"] = message
    if state.refused_message is not None:
        fields["not_forwarded"] = state.refused_message
    return fields


# -- raw TCP ---------------------------------------------------------------------------------


class TcpState:
    """One raw TCP flow being recorded."""

    __slots__ = ("flow", "session", "streams", "counts", "sizes", "started", "refused", "ended")

    def __init__(self, flow_id: str, session, masker=None, max_body: int = 0, started: float = 0.0):
        self.flow = flow_id
        self.session = session
        self.streams = {"client": BodyStream(None, max_body, masker=masker),
                        "server": BodyStream(None, max_body, masker=masker)}
        self.counts = {"client": 0, "server": 0}
        self.sizes = {"client": 0, "server": 0}
        self.started = started
        self.refused: str | None = None  # why nothing more is forwarded
        self.ended = False


def tcp_open_fields(flow_id: str, conn: str, connection: str | None, mode: str, host: str | None,
                    port: int | None, via: str, upgrade_of: str | None = None, sni: str | None = None,
                    alpn: str | None = None) -> dict:
    fields = {"flow": flow_id, "conn": conn, "connection": connection, "mode": mode, "host": host,
              "port": port, "via": via, "sni": sni, "alpn": alpn}
    if upgrade_of:
        fields["upgrade_of"] = upgrade_of
    return fields


def tcp_message_fields(state: TcpState, sender: str, data: bytes, *, final: bool) -> dict:
    """One raw read. The client's are settled whole (final): they are forwarded right after."""
    n = state.counts[sender]
    state.counts[sender] += 1
    state.sizes[sender] += len(data)
    return {"flow": state.flow, "from": sender, "n": n, "body": ChunkBytes(data, state.streams[sender], final)}


def tcp_close_fields(state: TcpState, *, ended: float, error: str | None = None) -> dict:
    fields = {
        "flow": state.flow,
        "messages": dict(state.counts),
        "size": dict(state.sizes),
        "duration_ms": round(max(0.0, ended - state.started) * 1000, 3) if state.started else None,
    }
    if error:
        fields["error"] = error
    return fields


def tcp_refused_fields(conn: str, host: str | None, port: int | None, connection: str | None, protocol: str,
                       reason: str, message: str) -> dict:
    return {"conn": conn, "host": host, "port": port, "connection": connection, "protocol": protocol,
            "reason": reason, "message": message}
