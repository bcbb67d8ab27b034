"""Trailers: header fields after a body (HTTP/2, and HTTP/1.1 chunked), checked like headers.

mitmproxy hands request trailers to the `request` hook and response trailers to the
`response` hook, for buffered and streamed bodies alike, and sends them on only after the
hook returns. So here, before capture records them:

- request trailers never carry a credential upstream: every field named in
  recorder.auth.credentials (CREDENTIAL_HEADERS and the cookies) and every field whose value
  carries the identity token is removed, on every connection: no API reads a key from a
  trailer, and a connection that injects must not pass the client's own;
- with masking.mask_requests / mask_responses, the values forwarded are masked as header
  values are.

Capture records what is forwarded as an `http.trailers` record, with the names it removed.
"""
from __future__ import annotations

from mitmproxy import http

from addons.config import WiretrailConfig
from addons.flow_state import set_trailers_stripped
from addons.identity import Identity
from addons.masking import Masking
from recorder.auth.credentials import COOKIE_HEADERS, CREDENTIAL_HEADERS, field_carries_token


_NEVER_IN_TRAILERS = frozenset(name.encode() for name in CREDENTIAL_HEADERS + COOKIE_HEADERS)


class Trailers:
    def __init__(self, config: WiretrailConfig, identity: Identity, masking: Masking):
        self.config_addon = config
        self.identity = identity  # the flow's identity token, removed wherever it appears
        self.masking = masking

    def request(self, flow: http.HTTPFlow):
        trailers = flow.request.trailers
        if not trailers or flow.response is not None:
            return
        token = self.identity.token_of(flow)
        token = token.encode("utf-8", "surrogateescape") if token else None

        def credential(field) -> bool:
            name, value = field
            return name.lower() in _NEVER_IN_TRAILERS or (token is not None and field_carries_token(value, token))

        gone = [f for f in trailers.fields if credential(f)]
        if gone:
            set_trailers_stripped(flow, sorted({name.lower().decode("latin-1") for name, _ in gone}))
            trailers.fields = tuple(f for f in trailers.fields if not credential(f))
        if self._masks("mask_requests"):
            self._mask(trailers)

    def response(self, flow: http.HTTPFlow):
        if flow.response is not None and flow.response.trailers and self._masks("mask_responses"):
            self._mask(flow.response.trailers)

    def _masks(self, option: str) -> bool:
        cfg = self.config_addon.current
        return cfg is not None and self.masking.masker is not None and getattr(cfg.masking, option)

    def _mask(self, trailers: http.Headers) -> None:
        masker = self.masking.masker
        fields = []
        for name, value in trailers.fields:
            text = value.decode("utf-8", "surrogateescape")
            masked = masker.mask_text(text)
            fields.append((name, value if masked == text else masked.encode("utf-8", "surrogateescape")))
        trailers.fields = tuple(fields)
