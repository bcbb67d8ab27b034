"""Content-Encoding decoders, fed chunk by chunk, for what the artifact stores.

Streamed chunks arrive still encoded; the artifact stores readable, masked text, so each
body gets a decoder on the writer thread. Every coding of the IANA registry that carries
no key is decoded: gzip (x-gzip), deflate (zlib-wrapped as RFC 9110 says, or raw deflate
as some servers send it), br, zstd, compress (x-compress, LZW), identity, and any stack
of them ("gzip, br" is undone right to left). Codings that cannot be undone without a key
or a dictionary (aes128gcm, dcb, dcz, exi, pack200-gzip) and unknown names have no
decoder: addons/masking.py refuses such a request and such a reply rather than record
bytes whose secrets it cannot see.
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


class _Gzip:
    """gzip, member after member (a body may be several gzip members back to back)."""

    def __init__(self):
        self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)

    def decode(self, data: bytes) -> bytes:
        out = []
        try:
            while data:
                out.append(self._d.decompress(data))
                if not self._d.eof:
                    break
                data = self._d.unused_data
                self._d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        except zlib.error as e:
            raise DecodeError(str(e)) from e
        return b"".join(out)

    def flush(self) -> bytes:
        try:
            return self._d.flush()
        except zlib.error as e:
            raise DecodeError(str(e)) from e


def _zlib_header(b0: int, b1: int) -> bool:
    return b0 & 0x0F == 8 and b0 >> 4 <= 7 and ((b0 << 8) | b1) % 31 == 0


class _Deflate:
    """deflate: zlib-wrapped or raw, told apart by the first two bytes."""

    def __init__(self):
        self._d: _Zlib | None = None
        self._head = b""

    def decode(self, data: bytes) -> bytes:
        if self._d is None:
            self._head += data
            if len(self._head) < 2:
                return b""
            data, self._head = self._head, b""
            self._d = _Zlib(zlib.MAX_WBITS if _zlib_header(data[0], data[1]) else -zlib.MAX_WBITS)
        return self._d.decode(data)

    def flush(self) -> bytes:
        if self._d is None:
            if not self._head:
                return b""
            self._d = _Zlib(-zlib.MAX_WBITS)
            head, self._head = self._head, b""
            return self._d.decode(head) + self._d.flush()
        return self._d.flush()


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


MAX_LZW = 64 * 1024 * 1024  # compress bodies are decoded whole, at their end; more is refused


class _Lzw:
    """compress (.Z, LZW). Rare enough to decode at the end of the body, not chunk by chunk."""

    def __init__(self):
        self._buf = bytearray()

    def decode(self, data: bytes) -> bytes:
        self._buf += data
        if len(self._buf) > MAX_LZW:
            raise DecodeError(f"a compress (LZW) body over {MAX_LZW} bytes is not decoded")
        return b""

    def flush(self) -> bytes:
        data, self._buf = bytes(self._buf), bytearray()
        return unlzw(data) if data else b""


def unlzw(data: bytes) -> bytes:
    """Decode Unix compress (LZW) data, as ncompress writes it (its bit-group padding included)."""
    if len(data) < 3 or data[0] != 0x1F or data[1] != 0x9D:
        raise DecodeError("not compress (LZW) data: no 1f 9d header")
    maxbits = data[2] & 0x1F
    block_mode = bool(data[2] & 0x80)
    if not 9 <= maxbits <= 16:
        raise DecodeError(f"compress (LZW): {maxbits} bits is not supported")
    maxmaxcode = 1 << maxbits
    data = data + b"\0\0"  # codes are read three bytes at a time
    total_bits = (len(data) - 2) * 8
    posbits = 24
    origin = 24  # codes come in groups of n_bits bytes from here; a new width or a clear skips to the next group
    n_bits = 9
    maxcode = (1 << n_bits) - 1
    table = [bytes([i]) for i in range(256)]
    if block_mode:
        table.append(b"")  # 256 is CLEAR
    out = bytearray()
    old = None
    while total_bits - posbits >= n_bits:
        if len(table) > maxcode:
            posbits = origin = _next_group(posbits, origin, n_bits)
            n_bits += 1
            maxcode = maxmaxcode if n_bits == maxbits else (1 << n_bits) - 1
            continue
        i = posbits >> 3
        code = ((data[i] | data[i + 1] << 8 | data[i + 2] << 16) >> (posbits & 7)) & ((1 << n_bits) - 1)
        posbits += n_bits
        if old is None:
            if code >= 256:
                raise DecodeError("compress (LZW): bad first code")
            old = table[code]
            out += old
            continue
        if code == 256 and block_mode:
            posbits = origin = _next_group(posbits, origin, n_bits)
            n_bits = 9
            maxcode = (1 << n_bits) - 1
            del table[256:]  # as in ncompress, the next code adds an entry 256 that is never used
            continue
        if code < len(table):
            entry = table[code]
        elif code == len(table):
            entry = old + old[:1]  # the KwKwK case
        else:
            raise DecodeError("compress (LZW): corrupt input")
        out += entry
        if len(table) < maxmaxcode:
            table.append(old + entry[:1])
        old = entry
    return bytes(out)


def _next_group(posbits: int, origin: int, n_bits: int) -> int:
    group = n_bits << 3
    rel = posbits - origin
    return origin + (rel - 1) + (group - (rel - 1 + group) % group)


class _Stack:
    """Several codings, undone from the last applied (listed last) to the first."""

    def __init__(self, decoders: list):
        self._ds = decoders

    def decode(self, data: bytes) -> bytes:
        for d in self._ds:
            if not data:
                return b""
            data = d.decode(data)
        return data

    def flush(self) -> bytes:
        data = b""
        for d in self._ds:
            data = (d.decode(data) if data else b"") + d.flush()
        return data


_DECODERS = {
    "gzip": _Gzip, "x-gzip": _Gzip, "deflate": _Deflate, "zstd": _Zstd, "compress": _Lzw, "x-compress": _Lzw,
}
if brotli is not None:
    _DECODERS["br"] = _Brotli


def codings(content_encoding: str | None) -> list[str]:
    """The codings of a Content-Encoding value, in the order they were applied."""
    return [c for c in (p.strip().lower() for p in (content_encoding or "").split(",")) if c and c != "identity"]


def can_decode(content_encoding: str | None) -> bool:
    return all(c in _DECODERS for c in codings(content_encoding))


def decodable_codings() -> tuple[str, ...]:
    return tuple(_DECODERS)


def decoder_for(content_encoding: str | None):
    """A decoder for a Content-Encoding header value, or None if a coding in it has none."""
    names = codings(content_encoding)
    if not names:
        return _Identity()
    if not all(c in _DECODERS for c in names):
        return None
    decoders = [_DECODERS[c]() for c in reversed(names)]
    return decoders[0] if len(decoders) == 1 else _Stack(decoders)
