"""WebSocket capture: every message of an upgraded flow is recorded, in its session.

The upgrade is an ordinary request: identity, policy and the credential swap decide it in
requestheaders, capture records it and its 101 reply (which then leaves the flow open).
From websocket_start on this addon records the flow's `ws.open`, each `ws.message` and the
`ws.close` (docs/format.md).

- A client message goes upstream only once its record is written (rule 2). If it cannot be,
  the message is dropped and the WebSocket is closed on both sides with code 1013 and a
  reason; the ws.close record says which message was not forwarded.
- A server message is forwarded at once and handed to the writer beside it, as a streamed
  reply's chunks are. Masking (on the writer) may hold its record back until the text that
  decides a possible secret has arrived (recorder/protocols/ws_masking.py).
- mitmproxy keeps every message in flow.websocket.messages: they are dropped once handed over.
- masking.mask_requests / mask_responses mask what is forwarded, message by message.
"""
from __future__ import annotations

import logging
import time

from mitmproxy import http

from addons.capture import NOT_RESPONDING, Capture
from addons.config import WiretrailConfig
from addons.layers import close_websocket
from addons.masking import Masking
from addons.flow_state import is_tunneled
from addons.policy import connection_of
from recorder.masking.body_masking import mask_body
from recorder.protocols.websocket import (
    CLOSE_NOT_CHECKED,
    CLOSE_NOT_RECORDED,
    CLOSE_SHUTDOWN,
    WsState,
    ws_close_fields,
    ws_message_fields,
    ws_open_fields,
)
from recorder.store.records import WS_CLOSE, WS_MESSAGE, WS_OPEN

log = logging.getLogger("wiretrail")

NOT_RECORDED_REASON = "wiretrail could not record this message; it was not forwarded"


class WebSocketCapture:
    def __init__(self, config: WiretrailConfig, capture: Capture, masking: Masking | None = None):
        self.config_addon = config
        self.capture = capture
        self.masking = masking
        self.sockets: dict[str, WsState] = {}  # flow id -> its WebSocket, from start to end

    @property
    def _masker(self):
        return self.masking.masker if self.masking is not None else None

    def websocket_start(self, flow: http.HTTPFlow):
        cap = self.capture
        fc = cap.flows.get(flow.id)
        if fc is None or fc.ended:
            if is_tunneled(flow):
                return  # an unregistered plain-http host under policy "tunnel": not recorded, by design
            # Nothing to record it in (the upgrade was refused, or capture is not running): no
            # message passes, and it is closed.
            why = "wiretrail is not recording this connection"
            self.sockets[flow.id] = _closed(flow, why)
            close_websocket(flow, CLOSE_NOT_RECORDED, why)
            return
        if fc.completion is not None:
            cap.complete_now(fc)  # the 101's records come first
        resp = flow.response
        st = WsState(flow.id, fc.session, flow.client_conn.id, self._masker, cap.cfg.capture.max_body,
                     started=time.time())
        self.sockets[flow.id] = st
        conn = connection_of(flow)
        fc.session.record(WS_OPEN, ws_open_fields(
            flow.id, flow.client_conn.id, conn.name if conn else None, cap.recorded_url(flow.request),
            resp.headers.get("sec-websocket-protocol") if resp else None,
            resp.headers.get("sec-websocket-extensions") if resp else None,
        ))

    async def websocket_message(self, flow: http.HTTPFlow):
        messages = flow.websocket.messages
        msg = messages[-1]
        st = self.sockets.get(flow.id)
        if st is None:
            if not is_tunneled(flow):
                msg.drop()  # a WebSocket nobody started recording: nothing passes
            del messages[:-1]
            return
        if st.closing is not None:
            msg.drop()
            del messages[:-1]
            return
        cap = self.capture
        masker = self._masker
        data = msg.content
        if msg.from_client:
            fields = ws_message_fields(st, "client", data, msg.is_text)
            err = await cap.write_and_wait(st.session, WS_MESSAGE, fields)
            if err is not None:
                late = getattr(err, "cause", None) == NOT_RESPONDING
                if not late:
                    cap.registry.mark_failed(st.session, err)
                if not cap.cfg.storage.fail_closed:
                    log.warning(f"wiretrail: UNRECORDED WebSocket message to {flow.request.pretty_url}: {err}")
                else:
                    msg.drop()
                    st.refused_message = fields["n"]
                    self._close(flow, st, CLOSE_NOT_RECORDED, NOT_RECORDED_REASON)
                    del messages[:-1]
                    return
            if masker is not None and self.config_addon.current.masking.mask_requests:
                msg.content = mask_body(masker, data, None, exact=False)
        else:
            st.session.record(WS_MESSAGE, ws_message_fields(st, "server", data, msg.is_text), ts=msg.timestamp)
            if masker is not None and self.config_addon.current.masking.mask_responses:
                msg.content = mask_body(masker, data, None, exact=False)
        del messages[:-1]  # handed over: mitmproxy would keep every message (later addons read the last)

    def websocket_end(self, flow: http.HTTPFlow):
        st = self.sockets.pop(flow.id, None)
        if st is None or st.session is None:
            return
        ws = flow.websocket
        by = st.closed_by or ("client" if ws.closed_by_client else "server" if ws.closed_by_client is False else None)
        code = st.close_code if st.closed_by == "gateway" else ws.close_code
        reason = st.close_reason if st.closed_by == "gateway" else ws.close_reason
        self._record_close(st, code=code, reason=reason, by=by)

    def done(self):
        # Before capture's: the WebSockets still open get their ws.close; capture then seals.
        for flow_id, st in list(self.sockets.items()):
            if st.session is not None:
                self._record_close(st, code=CLOSE_SHUTDOWN, reason="the gateway shut down", by="gateway")
        self.sockets.clear()

    # -- failing closed ---------------------------------------------------------------------

    def block_failed(self, hook: str, arg) -> None:
        if hook in ("websocket_start", "websocket_message"):
            self.block(arg, f"wiretrail could not check this WebSocket ({hook} failed)")

    def block(self, flow: http.HTTPFlow, why: str) -> None:
        """A part failed on this flow's WebSocket: nothing more passes (addons/chain.py)."""
        ws = flow.websocket
        if ws is not None and ws.messages:
            ws.messages[-1].drop()
            del ws.messages[:-1]
        st = self.sockets.get(flow.id)
        if st is None:
            st = self.sockets[flow.id] = _closed(flow, why)
            st.closing = None
        if st.closing is None:
            self._close(flow, st, CLOSE_NOT_CHECKED, "wiretrail could not check this message; it was not forwarded")

    def _close(self, flow: http.HTTPFlow, st: WsState, code: int, reason: str) -> None:
        st.closing = reason
        st.closed_by, st.close_code, st.close_reason = "gateway", code, reason
        log.error(f"wiretrail: closing the WebSocket to {flow.request.pretty_url}: {reason}")
        if not close_websocket(flow, code, reason):
            log.error("wiretrail: its connection could not be closed; every later message is dropped")

    def _record_close(self, st: WsState, *, code, reason, by) -> None:
        cap = self.capture
        fields = ws_close_fields(st, code=code, reason=cap.mask_text(reason or ""), by=by, ended=time.time())
        fc = cap.flows.get(st.flow)
        if not st.session.closed:
            st.session.record(WS_CLOSE, fields)
        if fc is not None and not fc.ended:
            cap._end(fc)


def _closed(flow: http.HTTPFlow, why: str) -> WsState:
    st = WsState(flow.id, None, flow.client_conn.id)
    st.closing = why
    return st
