"""Connect and gRPC streams: only what the recorder can read goes through.

The recorder stores Connect/gRPC messages decoded and masked (recorder/protocols/connect), so it must
be able to undo their per-message compression. In `requestheaders`:
- a request whose messages are compressed with an encoding the recorder cannot undo is
  refused (415), before anything goes upstream;
- the encodings the client offers for the reply (`connect-accept-encoding`,
  `grpc-accept-encoding`) are narrowed to those the recorder can undo, so the server picks
  one of them; a reply that still uses another is cut before any of it is forwarded;
- with `masking.mask_requests` or `mask_responses`, which rewrite bytes as they are
  forwarded and cannot do so inside protobuf messages, an RPC is refused (415) rather
  than broken.
"""
from __future__ import annotations

import logging

from mitmproxy import http

from addons.config import WiretrailConfig
from addons.flow_state import is_refused
from addons.refusal import refuse
from recorder.protocols.connect.envelopes import ENCODINGS, accepted, framing_of, message_encoding_header

log = logging.getLogger("wiretrail")

_ACCEPT = {"connect-content-encoding": "connect-accept-encoding", "grpc-encoding": "grpc-accept-encoding"}


class RpcStreams:
    def __init__(self, config: WiretrailConfig):
        self.config_addon = config

    def requestheaders(self, flow: http.HTTPFlow):
        if flow.response is not None or is_refused(flow) or self.config_addon.current is None:
            return
        req = flow.request
        ctype = req.headers.get("content-type")
        framing = framing_of(ctype)
        if framing is None:
            return
        masking = self.config_addon.current.masking
        if masking.mask_requests or masking.mask_responses:
            option = "mask_requests" if masking.mask_requests else "mask_responses"
            refuse(flow, 415, "cannot_mask",
                   f"masking.{option} is on, and it cannot rewrite {framing[0]} messages as they are forwarded "
                   "(they are recorded masked either way); the gateway operator can turn it off")
            return
        header = message_encoding_header(ctype)
        if header is None:
            return
        encoding = req.headers.get(header)
        if not accepted(encoding):
            refuse(flow, 415, "cannot_record",
                   f"this request's messages are compressed with {encoding!r} ({header}), which the gateway "
                   f"cannot undo to record them; send them as one of: {', '.join(ENCODINGS)}")
            return
        accept = _ACCEPT[header]
        offered = req.headers.get(accept)
        if offered is not None:
            kept = [e.strip() for e in offered.split(",") if e.strip() and accepted(e)]
            if kept:
                req.headers[accept] = ",".join(kept)
            else:
                del req.headers[accept]

    def responseheaders(self, flow: http.HTTPFlow):
        resp = flow.response
        ctype = resp.headers.get("content-type")
        header = message_encoding_header(ctype)
        if header is None or accepted(resp.headers.get(header)):
            return
        log.error(f"wiretrail: the reply's messages are compressed with {resp.headers.get(header)!r} ({header}), "
                  f"which the recorder cannot undo; the stream is cut before any of it is forwarded: "
                  f"{flow.request.pretty_url}")
        flow.kill()
