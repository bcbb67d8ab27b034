"""Connect and gRPC bodies as the record stores them: masked message trees, not bytes.

The writer thread renders each direction of an RPC body (`RpcStream`, one per direction,
fed chunk by chunk) into a body `{"framing", "messages", "size"}` (docs/format.md,
"Connect and gRPC bodies"). The raw bytes are not stored: they would hold every secret the
messages carry, compressed or not. Each message is stored as its masked field tree
(`proto`), from which `stored_bytes` rebuilds the body the upstream would have seen had the
secrets been masked (with the envelopes uncompressed), for replay and export. What cannot
be decoded is masked as bytes and says why; what cannot be decompressed is left out, with
its size and hash.
"""
from __future__ import annotations

import base64
import hashlib
import json

from recorder.protocols.connect import wire
from recorder.protocols.connect.envelopes import (
    COMPRESSED,
    END_STREAM,
    GRPC_WEB_TRAILERS,
    DecompressError,
    EnvelopeReader,
    decompress,
    framing_of,
)
from recorder.protocols.connect.tree_masking import TreeMasker

NOT_RECORDED = "it could hold a secret the gateway cannot see, so its bytes are not recorded"


def _text_or_b64(data: bytes) -> dict:
    try:
        return {"text": data.decode("utf-8")}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(data).decode("ascii")}


class _Arrivals:
    """When each byte of one fed chunk arrived, by its offset in the direction's stream."""

    __slots__ = ("ends", "last")

    def __init__(self, times: list | None, size: int, start: int):
        self.ends: list[tuple[int, float]] = []
        self.last = round(times[-1][1], 6) if times else None
        if times and sum(n for n, _ in times) == size:  # the pieces are these bytes (no Content-Encoding)
            pos = start
            for n, t in times:
                pos += n
                self.ends.append((pos, round(t, 6)))

    def at(self, end: int) -> float | None:
        """The arrival time of the piece holding byte `end - 1` (a message's last)."""
        for piece_end, t in self.ends:
            if end <= piece_end:
                return t
        return self.last


class RpcStream:
    """One direction of a Connect or gRPC body, rendered on the writer thread."""

    __slots__ = ("framing", "codec", "encoding", "masker", "tree", "reader", "unary", "n", "recorded",
                 "max_body", "truncated", "fed", "failed")

    def __init__(self, content_type: str | None, message_encoding: str | None = None, masker=None,
                 max_body: int = 0):
        self.framing, self.codec = framing_of(content_type) or ("unary", "proto")
        self.encoding = message_encoding
        self.masker = masker
        self.tree = TreeMasker(masker) if masker is not None else None
        self.reader = EnvelopeReader() if self.framing != "unary" else None
        self.unary = bytearray()
        self.n = 0
        self.recorded = 0  # message bytes recorded (decompressed), against capture.max_body
        self.max_body = max_body
        self.truncated = False
        self.fed = 0  # chunk records fed: a message's "chunk" is the one it arrived in
        self.failed: str | None = None  # why decoding broke down (recorder/store/bodies.py leaves the rest out)

    def feed(self, data: bytes, final: bool = False, times: list | None = None) -> dict:
        """The body of one chunk record: the messages completed (and released by masking) so far.
        A message held back by masking comes in a later record, with `chunk`: the `n` of the
        chunk record its last byte arrived in, so readers keep the order it happened in.
        `times`, the (length, time) of the pieces `data` arrived in, gives each message `at`:
        when its last byte reached the gateway (the batch's last time where a Content-Encoding
        changed the bytes)."""
        self.fed += 1
        if self.tree is not None:
            self.tree.release_stale()
        arrival = _Arrivals(times, len(data), self.reader.offset + self.reader.pending if self.reader else 0)
        entries: list[dict] = []
        if self.reader is None:
            self.unary += data
            if final:
                self._message(entries, None, bytes(self.unary), arrival.last)
                self.unary = bytearray()
        else:
            for env in self.reader.feed(data):
                self._message(entries, env.flags, env.payload, arrival.at(env.offset + 5 + len(env.payload)))
            if final and self.reader.pending:
                expected = self.reader.expected()
                rest = self.reader.rest()
                item = {"n": self.n, "chunk": self.fed - 1, "incomplete": True, "size": len(rest)}
                if expected is not None:
                    item["expected"] = expected
                item.update(_text_or_b64(self._mask_bytes(rest)))
                self.n += 1
                self._done(entries, item)
        if self.tree is not None:
            entries.extend(self.tree.finish() if final else self.tree.ready())
        for item in entries:
            if item.get("chunk") == self.fed - 1:
                del item["chunk"]  # recorded where it arrived
        body = {"framing": self.framing, "messages": entries, "size": len(data)}
        if self.tree is not None and self.tree.holding:
            body["held"] = self.tree.holding  # messages waiting for masking to decide (a later record)
        if self.truncated:
            body["truncated"] = True
        return body

    def tick(self) -> dict | None:
        """Capture's tick while the stream is quiet: the messages masking held past its time
        bound, as a body of their own, or None when there are none (no record is written)."""
        if self.tree is None or not self.tree.holding:
            return None
        self.tree.release_all()  # quiet for capture.chunk_interval: the hold is over
        entries = self.tree.ready()
        if not entries:
            return None
        self.fed += 1  # this body becomes the direction's next chunk record
        body = {"framing": self.framing, "messages": entries, "size": 0}
        if self.tree.holding:
            body["held"] = self.tree.holding
        return body

    def feed_undecodable(self, data: bytes, final: bool, why: str) -> dict:
        """A chunk whose Content-Encoding could not be undone: its bytes, masked as bytes."""
        entries: list[dict] = []
        if data:
            item = {"n": self.n, "chunk": self.fed, "size": len(data),
                    "undecoded": f"the Content-Encoding could not be undone ({why}); masked as bytes"}
            item.update(_text_or_b64(self._mask_bytes(data)))
            self.n += 1
            self._done(entries, item)
        body = self.feed(b"", final)
        body["messages"] = entries + body["messages"]
        body.update({"size": len(data), "decoded": False, "decode_error": why})
        return body

    # -- one message ------------------------------------------------------------------

    def _done(self, entries: list[dict], item: dict) -> None:
        if self.tree is not None:
            self.tree.add_done(item)  # keeps its place behind held messages
        else:
            entries.append(item)

    def _mask_bytes(self, data: bytes) -> bytes:
        return self.masker.mask_bytes(data) if self.masker is not None and data else data

    def _message(self, entries: list[dict], flags: int | None, payload: bytes, at: float | None = None) -> None:
        item: dict = {"n": self.n, "chunk": self.fed - 1}
        self.n += 1
        if at is not None:
            item["at"] = at
        if flags is not None:
            item["flags"] = flags
        item["size"] = len(payload)
        if self.max_body and self.recorded >= self.max_body:
            item["omitted"] = "capture.max_body"
            self.truncated = True
            self._done(entries, item)
            return
        if flags is not None and flags & COMPRESSED:
            item["compressed"] = (self.encoding or "identity").strip().lower()
            try:
                payload = decompress(payload, self.encoding)
            except DecompressError as e:
                item["omitted"] = f"cannot decompress ({e}); {NOT_RECORDED}"
                item["sha256"] = hashlib.sha256(payload).hexdigest()
                self._done(entries, item)
                return
            item["decompressed_size"] = len(payload)
        self.recorded += len(payload)
        end = flags is not None and ((self.framing == "connect" and flags & END_STREAM)
                                     or (self.framing == "grpc-web" and flags & GRPC_WEB_TRAILERS))
        if end and self.framing == "connect":
            item.update(self._end_stream(payload))
        elif end or self.codec == "json":
            item.update(_text_or_b64(self._mask_text(payload)))
        else:
            try:
                fields = wire.parse(payload)
            except (wire.WireError, RecursionError) as e:
                item["undecoded"] = f"not a protobuf message ({e}); masked as bytes"
                item.update(_text_or_b64(self._mask_bytes(payload)))
            else:
                if self.tree is not None:
                    self.tree.add(item, fields)
                    return
                item["proto"] = wire.to_json(fields)
                entries.append(item)
                return
        self._done(entries, item)

    def _mask_text(self, data: bytes) -> bytes:
        """JSON (connect+json messages, gRPC-Web trailers) is masked value by value where it parses."""
        if self.masker is None or not data:
            return data
        masked = self.masker.mask_json(data)
        return masked if masked is not None else self.masker.mask_bytes(data)

    def _end_stream(self, payload: bytes) -> dict:
        """Connect's end-of-stream message: JSON with the error and trailing metadata. Error
        details carry protobuf messages in base64: they are decoded and masked like messages."""
        try:
            end = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            return {"undecoded": "the end-of-stream message is not JSON"} | _text_or_b64(self._mask_text(payload))
        if not isinstance(end, dict):
            return _text_or_b64(self._mask_text(payload))
        details = (end.get("error") or {}).get("details") if isinstance(end.get("error"), dict) else None
        for d in details if isinstance(details, list) else ():
            if isinstance(d, dict) and isinstance(d.get("value"), str):
                d["value"] = _mask_detail(d["value"], self.masker)
        masked = self._mask_text(json.dumps(end, ensure_ascii=False).encode("utf-8"))
        try:
            return {"end": json.loads(masked)}
        except ValueError:
            return _text_or_b64(masked)


def _mask_detail(value: str, masker) -> str:
    """An error detail's base64 protobuf, masked inside and encoded again."""
    try:
        raw = base64.b64decode(value + "=" * (-len(value) % 4))
        fields = wire.parse(raw)
    except (ValueError, wire.WireError, RecursionError):
        return value
    if masker is None:
        return value
    tree = TreeMasker(masker)
    item: dict = {}
    tree.add(item, fields)
    tree.finish()
    data = wire.encode(wire.from_json(item["proto"])) if "proto" in item else base64.b64decode(item["b64"])
    return base64.b64encode(data).decode("ascii").rstrip("=")


# -- reading a stored body back -------------------------------------------------------------


def message_bytes(item: dict) -> bytes | None:
    """The bytes of one stored message as recorded (masked), or None when it was left out."""
    if "proto" in item:
        return wire.encode(wire.from_json(item["proto"]))
    if "end" in item:
        return json.dumps(item["end"], ensure_ascii=False, separators=(",", ":")).encode("utf-8")
    if isinstance(item.get("b64"), str):
        return base64.b64decode(item["b64"])
    if isinstance(item.get("text"), str):
        return item["text"].encode("utf-8")
    return None


def stored_bytes(body: dict) -> bytes:
    """A stored RPC body as bytes: each message re-encoded from its masked tree and framed
    again, uncompressed (the compression flag cleared). Messages left out are skipped.
    Raises ValueError when the body is not a valid one."""
    messages = body.get("messages")
    if not isinstance(messages, list):
        raise ValueError("messages is not a list")
    unary = body.get("framing") == "unary"
    out = bytearray()
    for item in messages:
        if not isinstance(item, dict):
            raise ValueError("a message is not an object")
        data = message_bytes(item)
        if data is None:
            continue
        if unary or item.get("incomplete"):
            out += data
            continue
        flags = item.get("flags", 0)
        flags = flags & ~COMPRESSED if isinstance(flags, int) and 0 <= flags < 256 else 0
        out += bytes([flags]) + len(data).to_bytes(4, "big") + data
    return bytes(out)


def is_stored_rpc(body) -> bool:
    return isinstance(body, dict) and "messages" in body


class RpcRemask:
    """`wiretrail mask`: a stored RPC body's messages masked again with today's rules, one
    direction of a flow at a time (the trails run across its chunk records)."""

    def __init__(self, masker):
        self.masker = masker
        self.tree = TreeMasker(masker)

    def body(self, body: dict, final: bool, n: int | None = None) -> dict:
        """`n`: the chunk record's `n`; a message held here into a later record keeps it as `chunk`."""
        for item in body.get("messages") or ():
            if not isinstance(item, dict):
                continue
            new = {k: v for k, v in item.items() if k not in ("proto", "b64", "text", "end", "masked_as_bytes")}
            if isinstance(n, int):
                new.setdefault("chunk", n)
            if "proto" in item:
                self.tree.add(new, wire.from_json(item["proto"]))
                continue
            if "end" in item:
                masked = self.masker.mask_json(json.dumps(item["end"], ensure_ascii=False).encode("utf-8"))
                new["end"] = json.loads(masked) if masked is not None else item["end"]
            elif isinstance(item.get("text"), str) or isinstance(item.get("b64"), str):
                new.update(_text_or_b64(self.masker.mask_bytes(message_bytes(item))))
            self.tree.add_done(new)
        out = {k: v for k, v in body.items() if k != "held"}
        out["messages"] = self.tree.finish() if final else self.tree.ready()
        if self.tree.holding:
            out["held"] = self.tree.holding
        return out
