"""Connect and gRPC framing: which bodies are RPC messages, and the envelopes they come in.

A streamed Connect or gRPC body is a run of envelopes: 1 flag byte, a 4-byte big-endian
length, then that many bytes of message. One HTTP chunk can end in the middle of an
envelope or hold several, so each direction of a stream has its own EnvelopeReader.
Flags: 0x01 the message is compressed with the direction's message encoding
(`connect-content-encoding` or `grpc-encoding`); 0x02 (Connect) the end-of-stream message,
JSON; 0x80 (gRPC-Web) the trailers, as HTTP header text. A unary Connect call
(`application/proto`) has no envelope: its body is one message, compressed, if at all,
by the ordinary Content-Encoding.
"""
from __future__ import annotations

import io
import zlib
from dataclasses import dataclass

import zstandard

try:  # brotli ships with mitmproxy, but the recorder must not depend on it
    import brotli
except ImportError:  # pragma: no cover
    brotli = None

COMPRESSED = 0x01
END_STREAM = 0x02  # Connect
GRPC_WEB_TRAILERS = 0x80
HEADER = 5
MAX_MESSAGE = 64 << 20  # decompressed bytes per message, against compression bombs

# Content-Type (without parameters) -> (framing, codec)
_TYPES = {
    "application/connect+proto": ("connect", "proto"),
    "application/connect+json": ("connect", "json"),
    "application/grpc": ("grpc", "proto"),
    "application/grpc+proto": ("grpc", "proto"),
    "application/grpc+json": ("grpc", "json"),
    "application/grpc-web": ("grpc-web", "proto"),
    "application/grpc-web+proto": ("grpc-web", "proto"),
    "application/grpc-web+json": ("grpc-web", "json"),
    "application/proto": ("unary", "proto"),
    "application/protobuf": ("unary", "proto"),
    "application/x-protobuf": ("unary", "proto"),
    "application/vnd.google.protobuf": ("unary", "proto"),
}

# Message encodings the recorder can undo (Connect and gRPC name them like Content-Encoding).
ENCODINGS = ("identity", "gzip", "deflate", "zstd") + (("br",) if brotli is not None else ())


def framing_of(content_type: str | None) -> tuple[str, str] | None:
    """(framing, codec) for an RPC body's Content-Type, or None when it is not one."""
    if not content_type:
        return None
    return _TYPES.get(content_type.split(";", 1)[0].strip().lower())


def is_rpc(content_type: str | None) -> bool:
    return framing_of(content_type) is not None


def message_encoding_header(content_type: str | None) -> str | None:
    """The header that names a stream's per-message compression."""
    framing = framing_of(content_type)
    if framing is None or framing[0] == "unary":
        return None
    return "connect-content-encoding" if framing[0] == "connect" else "grpc-encoding"


def accepted(encoding: str | None) -> bool:
    return (encoding or "identity").strip().lower() in ENCODINGS


@dataclass
class Envelope:
    flags: int
    payload: bytes  # as it crossed the wire (compressed when flags & COMPRESSED)
    offset: int  # where it starts in its direction's stream


class EnvelopeReader:
    """Splits one direction of a stream into envelopes, whatever the chunk boundaries."""

    __slots__ = ("buf", "offset")

    def __init__(self):
        self.buf = bytearray()
        self.offset = 0  # stream offset of buf[0]

    def feed(self, data: bytes) -> list[Envelope]:
        self.buf += data
        out = []
        pos = 0
        buf = self.buf
        while len(buf) - pos >= HEADER:
            length = int.from_bytes(buf[pos + 1:pos + 5], "big")
            end = pos + HEADER + length
            if end > len(buf):
                break
            out.append(Envelope(buf[pos], bytes(buf[pos + HEADER:end]), self.offset + pos))
            pos = end
        if pos:
            del buf[:pos]
            self.offset += pos
        return out

    @property
    def pending(self) -> int:
        return len(self.buf)

    def rest(self) -> bytes:
        """What is left when the stream ends: an envelope cut short (the stream broke)."""
        rest, self.buf = bytes(self.buf), bytearray()
        return rest

    def expected(self) -> int | None:
        """The length the cut-short envelope announced, when its header arrived."""
        return int.from_bytes(self.buf[1:5], "big") if len(self.buf) >= HEADER else None


class DecompressError(ValueError):
    pass


def decompress(payload: bytes, encoding: str | None, limit: int = MAX_MESSAGE) -> bytes:
    """One compressed message, undone. Raises DecompressError saying why it cannot be."""
    enc = (encoding or "identity").strip().lower()
    try:
        if enc in ("gzip", "x-gzip"):
            return _zlib(payload, 16 + zlib.MAX_WBITS, limit)
        if enc == "deflate":
            try:
                return _zlib(payload, zlib.MAX_WBITS, limit)
            except (zlib.error, DecompressError):
                return _zlib(payload, -zlib.MAX_WBITS, limit)  # sent raw, without the zlib header
        if enc == "zstd":
            reader = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(payload))
            out = reader.read(limit + 1)
            _check(out, limit)
            return out
        if enc == "br" and brotli is not None:
            out = brotli.Decompressor().process(payload)
            _check(out, limit)
            return out
    except (zlib.error, zstandard.ZstdError) as e:
        raise DecompressError(f"{enc}: {e}") from None
    except Exception as e:  # brotli.error and friends
        if brotli is not None and isinstance(e, brotli.error):
            raise DecompressError(f"{enc}: {e}") from None
        raise
    if enc == "identity":
        raise DecompressError("the message is flagged compressed, but no message encoding was named")
    raise DecompressError(f"the message encoding {enc!r} is not one the recorder can undo "
                          f"({', '.join(ENCODINGS)})")


def _zlib(payload: bytes, wbits: int, limit: int) -> bytes:
    d = zlib.decompressobj(wbits)
    out = d.decompress(payload, limit + 1)
    _check(out, limit)
    if d.unconsumed_tail:
        raise DecompressError(f"more than {limit} bytes once decompressed")
    if not d.eof:
        raise DecompressError("truncated compressed data")
    return out


def _check(out: bytes, limit: int) -> None:
    if len(out) > limit:
        raise DecompressError(f"more than {limit} bytes once decompressed")

