"""Masking: one Masker for the gateway, and masking of what is forwarded when asked for.

Capture hands the Masker to the writer thread, which masks every body and header value
before anything is written. This addon also applies the two options that change what
crosses the wire, both off by default (docs/masking.md states their latency cost):

  mask_responses  the client receives replies with secrets masked; streams are masked
                  as they flow, holding back only a tail that could still be a secret.
  mask_requests   the upstream LLM receives requests with secrets masked, so a secret the
                  agent read never leaves the company.

It sits before capture in the chain: capture's tee records what the upstream sent and
forwards what this addon's stream callable returns.

Whatever the options, a body whose Content-Encoding the gateway cannot undo (aes128gcm,
dcb, exi, an unknown name) could hide a secret from the record: such a request is refused
(415), clients are asked only for codings the gateway decodes, and a reply that comes in
another one anyway is not forwarded. And every log line (mitmproxy's flow lines included)
goes through the masker before it is printed.
"""
from __future__ import annotations

import logging
import time
from typing import Callable

from mitmproxy import http

from addons.config import WiretrailConfig
from addons.flow_state import is_refused
from addons.refusal import refuse
from addons.streaming import request_streams, response_streams
from recorder.http.content_decoding import DecodeError, can_decode, decodable_codings, decoder_for
from recorder.masking import Masker
from recorder.masking.body_masking import mask_body
from recorder.masking.gateway import mask_key, signing_material

log = logging.getLogger("wiretrail")


class Masking:
    def __init__(self, config: WiretrailConfig, known_secrets: Callable[[], list[str]] = list):
        self.config_addon = config
        self.known_secrets = known_secrets  # the gateway's own credentials, read by the credentials addon
        self.masker: Masker | None = None
        self._known: set[str] = set()

    def running(self):
        cfg = self.config_addon.current
        if cfg is None or self.masker is not None:
            return
        self.refresh()
        _mask_logs(lambda: self.masker)
        options = [name for name in ("mask_requests", "mask_responses") if getattr(cfg.masking, name)]
        if options:
            log.info(f"wiretrail: masking what is forwarded too: {', '.join(options)}")

    def refresh(self) -> None:
        """(Re)build the masker with every secret the gateway holds. Called at start and after the
        credentials are re-read (SIGHUP); secrets seen before stay known: old copies may still pass."""
        cfg = self.config_addon.current
        # One place builds what a gateway masks with (recorder/masking/gateway.py): mcp-stdio does too.
        self._known |= set(self.known_secrets()) | set(signing_material(cfg))
        self.masker = Masker.from_config(cfg.masking, mask_key(self.config_addon.signer),
                                         known_secrets=sorted(self._known))

    # -- what is forwarded -------------------------------------------------------------------

    def requestheaders(self, flow: http.HTTPFlow):
        if flow.response is not None or is_refused(flow) or self.masker is None:
            return
        encoding = flow.request.headers.get("content-encoding")
        if not can_decode(encoding):
            refuse(flow, 415, "cannot_record",
                   f"this request body's Content-Encoding {encoding!r} cannot be decoded by the gateway, so it "
                   f"could not be recorded with its secrets masked; send it in {', '.join(decodable_codings())} "
                   "or uncompressed")
            return
        masking = self.config_addon.current.masking
        if masking.mask_responses:
            # Plain bytes can be masked as they stream; an encoded reply would need decoding first.
            flow.request.headers["accept-encoding"] = "identity"
        elif "accept-encoding" in flow.request.headers:
            _only_decodable(flow.request.headers)
        threshold = self.config_addon.current.capture.stream_threshold
        if masking.mask_requests and request_streams(flow.request, threshold):
            if flow.request.headers.get("content-encoding", "identity").lower() != "identity":
                refuse(flow, 415, "cannot_mask",
                       "masking.mask_requests is on and this request body is compressed and streamed, "
                       "so the gateway cannot mask it; send it uncompressed")
                return
            req = flow.request
            # The masked body has another length: send it chunked (HTTP/2 frames need no length).
            if req.headers.pop("content-length", None) is not None and req.http_version.startswith("HTTP/1"):
                req.headers["transfer-encoding"] = "chunked"
            req.stream = _masking_stream(self.masker.stream(req.headers.get("content-type")))

    def request(self, flow: http.HTTPFlow):
        if flow.response is not None or self.masker is None or flow.request.stream:
            return
        if self.config_addon.current.masking.mask_requests and flow.request.raw_content:
            if not _mask_message(self.masker, flow.request):
                refuse(flow, 415, "cannot_mask",
                       f"masking.mask_requests is on and the request body's Content-Encoding "
                       f"{flow.request.headers.get('content-encoding')!r} cannot be decoded, so the gateway "
                       "cannot mask it; send it uncompressed")

    def responseheaders(self, flow: http.HTTPFlow):
        if self.masker is None or is_refused(flow):
            return
        resp = flow.response
        if not can_decode(resp.headers.get("content-encoding")):
            # It was not asked for (Accept-Encoding names only what the gateway decodes).
            log.error(f"wiretrail: a reply in Content-Encoding {resp.headers.get('content-encoding')!r} cannot be "
                      f"decoded, so it cannot be recorded masked; the connection is closed: {flow.request.pretty_url}")
            flow.kill()
            return
        if not self.config_addon.current.masking.mask_responses:
            return
        if not response_streams(resp, self.config_addon.current.capture.stream_threshold):
            return  # buffered: masked whole in `response`
        encoding = resp.headers.get("content-encoding")
        decoder = decoder_for(encoding)
        if decoder is None:
            # Asked for identity and got something else: unmasked bytes must not reach the client.
            log.error(f"wiretrail: a reply in Content-Encoding {encoding!r} cannot be masked "
                      f"(masking.mask_responses); the connection is closed: {flow.request.pretty_url}")
            flow.kill()
            return
        # The masked stream has another length, and is sent decoded.
        resp.headers.pop("content-encoding", None)
        resp.headers.pop("content-length", None)
        if resp.http_version.startswith("HTTP/1"):
            resp.headers["transfer-encoding"] = "chunked"
        resp.stream = _masking_stream(self.masker.stream(resp.headers.get("content-type")), decoder)

    def response(self, flow: http.HTTPFlow):
        if self.masker is None or not self.config_addon.current.masking.mask_responses or is_refused(flow):
            return
        if not flow.response.stream and flow.response.raw_content and not _mask_message(self.masker, flow.response):
            log.error(f"wiretrail: a reply in Content-Encoding {flow.response.headers.get('content-encoding')!r} "
                      f"cannot be masked (masking.mask_responses); the connection is closed: {flow.request.pretty_url}")
            flow.kill()


def _mask_message(masker: Masker, message: http.Message) -> bool:
    """Mask the message's body in place. False when its Content-Encoding cannot be undone."""
    try:
        content = message.get_content(strict=True)
    except ValueError:
        return False
    masked = mask_body(masker, content, message.headers.get("content-type"))
    if masked != content:
        message.content = masked  # re-encoded with the message's Content-Encoding; length updated
    return True


def _masking_stream(stream_masker, decoder=None):
    """A stream callable that forwards masked bytes. It never returns b"" for a held-back piece:
    mitmproxy frames an empty chunk as the end of a chunked body."""

    def forward(chunk: bytes):
        if chunk:
            if decoder is not None:
                try:
                    chunk = decoder.decode(chunk)
                except DecodeError:
                    chunk = b""  # undecodable: nothing unmasked goes out
            out = stream_masker.feed(chunk, time.monotonic()) if chunk else b""
        else:
            tail = b""
            if decoder is not None:
                try:
                    tail = decoder.flush()
                except DecodeError:
                    pass
            out = (stream_masker.feed(tail) if tail else b"") + stream_masker.finish()
        return [out] if out else []

    return forward


def _only_decodable(headers) -> None:
    """Accept-Encoding without the codings the gateway cannot decode (so the reply comes in one it can)."""
    wanted = []
    for part in headers.get("accept-encoding", "").split(","):
        name = part.split(";")[0].strip().lower()
        if name and (name in ("identity", "*") or can_decode(name)):
            wanted.append(part.strip() if name != "*" else "identity")
    headers["accept-encoding"] = ", ".join(wanted) if wanted else "identity"


class _MaskingFilter(logging.Filter):
    """Masks a log record's text with the gateway's current masker before any handler prints it."""

    def __init__(self, masker_of):
        super().__init__("wiretrail-masking")
        self.masker_of = masker_of

    def filter(self, record: logging.LogRecord) -> bool:
        masker = self.masker_of()
        if masker is not None:
            try:
                text = record.getMessage()
            except Exception:  # a broken format string: leave it to logging's own error report
                return True
            masked = masker.mask_text(text)
            if masked != text:
                record.msg, record.args = masked, ()
        return True


class _MaskingWriter:
    """A text stream that masks what is written to it (mitmdump's flow lines)."""

    def __init__(self, out, masker_of):
        self._out = out
        self._masker_of = masker_of

    def write(self, text: str) -> int:
        masker = self._masker_of()
        return self._out.write(masker.mask_text(text) if masker is not None and text else text)

    def __getattr__(self, name):
        return getattr(self._out, name)


def _mask_logs(masker_of) -> None:
    """Every output of the process masks: log handlers, and the flow lines mitmdump prints."""
    root = logging.getLogger()
    for handler in root.handlers:
        if not any(isinstance(f, _MaskingFilter) for f in handler.filters):
            handler.addFilter(_MaskingFilter(masker_of))
    try:
        from mitmproxy import ctx

        dumper = ctx.master.addons.get("dumper")
    except Exception:  # no master (unit tests) or no dumper (mitmweb)
        dumper = None
    if dumper is not None and not isinstance(getattr(dumper, "outfp", None), _MaskingWriter):
        dumper.outfp = _MaskingWriter(dumper.outfp, masker_of)
