"""Trailers: header fields after a body (HTTP/2, and HTTP/1.1 chunked), checked like headers.

mitmproxy hands request trailers to the `request` hook and response trailers to the
`response` hook, for buffered and streamed bodies alike, and sends them on only after the
hook returns. So here, before capture records them:

- request trailers never carry a credential upstream: every credential field (the names of
  credentials.CLIENT_CREDENTIAL_HEADERS, the headers that carried the identity token,
  cookies) is removed, on every connection: no API reads a key from a trailer, and a
  connection that injects must not pass the client's own;
- with masking.mask_requests / mask_responses, the values forwarded are masked as header
  values are.

Capture records what is forwarded as an `http.trailers` record, with the names it removed.
"""
from __future__ import annotations

from mitmproxy import http

from addons.config import WiretrailConfig
from addons.credentials import CLIENT_CREDENTIAL_HEADERS
from addons.identity import TOKEN_HEADERS
from addons.masking import Masking

TRAILERS_STRIPPED = "wiretrail.trailers_stripped"  # flow.metadata: names removed from request trailers

_NEVER_IN_TRAILERS = frozenset(name.encode() for name in CLIENT_CREDENTIAL_HEADERS + ("cookie",))


class Trailers:
    def __init__(self, config: WiretrailConfig, masking: Masking):
        self.config_addon = config
        self.masking = masking

    def request(self, flow: http.HTTPFlow):
        trailers = flow.request.trailers
        if not trailers or flow.response is not None:
            return
        names = _NEVER_IN_TRAILERS | frozenset(n.lower().encode() for n in flow.metadata.get(TOKEN_HEADERS) or ())
        kept = tuple(f for f in trailers.fields if f[0].lower() not in names)
        if len(kept) != len(trailers.fields):
            flow.metadata[TRAILERS_STRIPPED] = sorted({f[0].lower().decode("latin-1") for f in trailers.fields
                                                       if f[0].lower() in names})
            trailers.fields = kept
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
