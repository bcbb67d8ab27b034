"""The zstd block walker: what of a session file's one zstd frame can be decoded.

A session file is one zstd frame whose writer ends a block after every batch (docs/format.md §2).
The walker reads the block headers (RFC 8878), so that everything in complete blocks is decoded
even when the file was cut mid-write or a block further on is corrupt; python-zstandard's
stream_reader can stop short of data already in the file, so it is not used.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import zstandard

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


@dataclass
class Decoded:
    """What decoding a file's bytes found: its content and, as (kind, message), its damage."""

    content: bytes = b""
    frame_ended: bool = False
    truncated_tail: bool = False  # the data stops inside a block (a write cut short)
    problems: list[tuple[str, str]] = field(default_factory=list)


class _Frame:
    """Where the units of one zstd frame lie in the file (RFC 8878 block headers)."""

    __slots__ = ("pieces", "end", "partial", "error")

    def __init__(self):
        self.pieces: list[tuple[int, int]] = []  # (start, end): header + first block, then one block each
        self.end: int | None = None  # offset just past the frame, when it is ended
        self.partial = False  # the data stops inside the header, a block or the checksum
        self.error: str | None = None  # a block header that no encoder writes


def walk_frame(data: bytes) -> _Frame:
    frame = _Frame()
    if len(data) < 5:
        frame.partial = True
        return frame
    fhd = data[4]
    if fhd & 0x08:
        frame.error = "reserved bit set in the zstd frame header"
        return frame
    fcs_flag, single, checksum, did_flag = fhd >> 6, fhd & 0x20, fhd & 0x04, fhd & 0x03
    pos = 5 + (0 if single else 1) + (0, 1, 2, 4)[did_flag] + (1 if single else 0, 2, 4, 8)[fcs_flag]
    start = 0  # the frame header is fed together with the first block
    while True:
        if pos + 3 > len(data):
            frame.partial = pos != len(data)  # cut inside the frame header or a block header
            return frame
        header = int.from_bytes(data[pos : pos + 3], "little")
        last, btype, bsize = header & 1, (header >> 1) & 3, header >> 3
        if btype == 3:
            frame.error = f"reserved zstd block type at byte {pos}; records after it are lost"
            return frame
        end = pos + 3 + (1 if btype == 1 else bsize)  # an RLE block stores one byte
        if last and checksum:
            end += 4
        if end > len(data):
            frame.partial = True
            return frame
        frame.pieces.append((start, end))
        start = pos = end
        if last:
            frame.end = end
            return frame


def decode(data: bytes) -> Decoded:
    """The decodable content of the file, and what is wrong with it."""
    result = Decoded()
    if not data:
        result.problems.append(("empty", "the file is empty (no zstd frame, no records)"))
        return result
    if data[:4] != ZSTD_MAGIC[: len(data[:4])]:
        result.problems.append(("not-zstd", "not a zstd stream (the file does not start with the zstd magic number)"))
        return result
    frame = walk_frame(data)
    if frame.error:
        result.problems.append(("zstd", frame.error))
    result.truncated_tail = frame.partial
    result.frame_ended = frame.end is not None
    out = []
    dobj = zstandard.ZstdDecompressor().decompressobj()
    for start, end in frame.pieces:
        try:
            out.append(dobj.decompress(data[start:end]))
        except zstandard.ZstdError as e:
            result.problems.append(("zstd", f"zstd block at byte {start} does not decode ({e}); records after it are lost"))
            result.frame_ended = False
            break
    if frame.end is not None and frame.end < len(data):
        result.problems.append(("trailing-data", f"{len(data) - frame.end} bytes after the end of the zstd frame"))
    result.content = b"".join(out)
    return result

