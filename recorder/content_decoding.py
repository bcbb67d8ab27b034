"""Incremental Content-Encoding decoders for streamed bodies.

Streamed chunks arrive still encoded; the artifact stores readable text, so each
flow direction gets a decoder that is fed chunk by chunk on the writer thread.
"""
from __future__ import annotations

import zlib

import zstandard

try:  # brotli ships with mitmproxy, but the recorder must not depend on it
    import brotli
except ImportError:  # pragma: no cover
    brotli = None


class DecodeError(Exception):
    pass


class _Identity:
    def decode(self, data: bytes) -> bytes:
        return data

    def flush(self) -> bytes:
        return b""


class _Zlib:
    def __init__(self, wbits: int):
        self._d = zlib.decompressobj(wbits)

    def decode(self, data: bytes) -> bytes:
        try:
            return self._d.decompress(data)
        except zlib.error as e:
            raise DecodeError(str(e)) from e

    def flush(self) -> bytes:
        try:
            return self._d.flush()
        except zlib.error as e:
            raise DecodeError(str(e)) from e


class _Brotli:
    def __init__(self):
        self._d = brotli.Decompressor()

    def decode(self, data: bytes) -> bytes:
        try:
            return self._d.process(data)
        except brotli.error as e:
            raise DecodeError(str(e)) from e

    def flush(self) -> bytes:
        return b""


class _Zstd:
    def __init__(self):
        self._d = zstandard.ZstdDecompressor().decompressobj()

    def decode(self, data: bytes) -> bytes:
        try:
            return self._d.decompress(data)
        except zstandard.ZstdError as e:
            raise DecodeError(str(e)) from e

    def flush(self) -> bytes:
        return b""


def decoder_for(content_encoding: str | None):
    """A decoder for a Content-Encoding header value, or None if it is not one we know.

    Stacked encodings ("gzip, br") are rare; they are recorded as the wire bytes.
    """
    enc = (content_encoding or "").strip().lower()
    if enc in ("", "identity"):
        return _Identity()
    if enc in ("gzip", "x-gzip"):
        return _Zlib(16 + zlib.MAX_WBITS)
    if enc == "deflate":
        return _Zlib(zlib.MAX_WBITS)  # zlib-wrapped, as RFC 9110 says; raw deflate falls back
    if enc == "br" and brotli is not None:
        return _Brotli()
    if enc == "zstd":
        return _Zstd()
    return None
