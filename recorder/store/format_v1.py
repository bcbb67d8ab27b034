"""Session artifact format v1: record lines, the hash chain and body encoding.

docs/format.md is the normative spec; this module is its codec. The writer and the
reader both use it, so the two cannot drift apart.
"""
from __future__ import annotations

import base64
import hashlib

import orjson

VERSION = 1
ZERO_HASH = "0" * 64
FILE_SUFFIX = ".jsonl.zst"
SEAL_CONTEXT = b"wiretrail-seal-v1\n"

# Fields every record carries, in this order at the front of each line.
ENVELOPE = ("v", "seq", "t", "ts", "prev")


def line_hash(line: bytes) -> str:
    """The chain hash of one line: SHA-256 of its exact bytes, without the newline."""
    return hashlib.sha256(line).hexdigest()


def encode_record(seq: int, prev: str, rtype: str, ts: float, fields: dict) -> bytes:
    """One record as its line bytes (no newline). Envelope fields come first."""
    record = {"v": VERSION, "seq": seq, "t": rtype, "ts": ts, "prev": prev}
    for key, value in fields.items():
        if key not in record:
            record[key] = value
    return orjson.dumps(record)


class Chain:
    """The running seq/prev state of one session file."""

    __slots__ = ("seq", "prev")

    def __init__(self, seq: int = 0, prev: str = ZERO_HASH):
        self.seq = seq
        self.prev = prev

    def next_line(self, rtype: str, ts: float, fields: dict) -> bytes:
        line = encode_record(self.seq, self.prev, rtype, ts, fields)
        self.seq += 1
        self.prev = line_hash(line)
        return line


def signed_bytes(session_id: str, seq: int, prev: str) -> bytes:
    """What a checkpoint or seal signs: its own seq and prev, bound to the session."""
    return SEAL_CONTEXT + session_id.encode() + b"\n" + str(seq).encode() + b"\n" + prev.encode()


def encode_body(data: bytes, *, size: int | None = None, truncated: bool = False) -> dict:
    """A body as stored: {"text"} for UTF-8, {"b64"} for anything else, with size."""
    try:
        body: dict = {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        body = {"b64": base64.b64encode(data).decode("ascii")}
    body["size"] = len(data) if size is None else size
    if truncated:
        body["truncated"] = True
    return body


def decode_body(body: dict | None) -> bytes:
    """The stored bytes of a body (after masking, and cut if it was truncated). A Connect or
    gRPC body stores messages, not bytes: they are encoded again (recorder/protocols/connect/record.py)."""
    if not body:
        return b""
    if "messages" in body:
        from recorder.protocols.connect.record import stored_bytes

        return stored_bytes(body)
    if "text" in body:
        return body["text"].encode("utf-8")
    if "b64" in body:
        return base64.b64decode(body["b64"])
    return b""
