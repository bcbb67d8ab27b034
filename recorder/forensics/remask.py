"""Re-masking a recorded session with today's rules, into a new session file.

The original is never touched. The new file has its own session id and a fresh hash
chain; its session.open records `remasked_from` (the original id, the hash of the last
line of its intact chain, its state), so the new file says where it came from and the
original still proves what was recorded. Bodies are masked again as they were stored
(buffered bodies whole, streamed chunks as one stream per flow and direction, so a
secret split across chunks is found). Checkpoints and seals are dropped: they sign
the original chain, not the new one.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from recorder.store import format_v1
from recorder.protocols.connect.record import RpcRemask, is_stored_rpc
from recorder.store.ids import new_session_id
from recorder.forensics.reader import SessionRead
from recorder.store.session_file import write_session_file

_ENVELOPE = set(format_v1.ENVELOPE)
_SIGNATURES = ("checkpoint", "seal")
TAG = b"[MASKED:"


@dataclass
class RemaskResult:
    session_id: str
    path: Path
    records: int
    head: str
    masked_before: int = 0  # mask tags in the original's bodies, headers, urls and messages
    masked_after: int = 0
    dropped: dict = field(default_factory=dict)


def _header(headers, name: str) -> str | None:
    if isinstance(headers, list):
        for item in headers:
            if isinstance(item, list) and len(item) == 2 and str(item[0]).lower() == name:
                return str(item[1])
    return None


class _Remasker:
    def __init__(self, masker):
        self.masker = masker
        self.before = 0
        self.after = 0
        self.dropped = {"checkpoint": 0, "seal": 0}
        self.rpc: dict = {}  # (flow, dir) -> RpcRemask, for Connect/gRPC bodies

    def rpc_body(self, key, body: dict, final: bool, n=None) -> dict:
        """A Connect/gRPC body: its messages masked again (recorder/protocols/connect/record.py)."""
        rr = self.rpc.get(key) or self.rpc.setdefault(key, RpcRemask(self.masker))
        out = rr.body(body, final, n)
        self.before += format_v1.decode_body(body).count(TAG)
        self.after += format_v1.decode_body(out).count(TAG)
        return out

    def text(self, value):
        if not isinstance(value, str):
            return value
        out = self.masker.mask_text(value)
        self.before += value.count("[MASKED:")
        self.after += out.count("[MASKED:")
        return out

    def headers(self, headers):
        if not isinstance(headers, list):
            return headers
        return [[self.text(item[0]), self.text(item[1])] if isinstance(item, list) and len(item) == 2 else item
                for item in headers]

    def body(self, body, masked: bytes) -> dict:
        data = format_v1.decode_body(body)
        self.before += data.count(TAG)
        self.after += masked.count(TAG)
        out = format_v1.encode_body(masked, size=body.get("size"), truncated=bool(body.get("truncated")))
        for k, v in body.items():  # encoding notes (encoding, wire_size, decoded, decode_error) stay
            if k not in ("text", "b64", "size", "truncated"):
                out[k] = v
        return out


class _Streams:
    """Streamed bodies masked as one stream per flow and direction, as the writer does."""

    def __init__(self, records: list[dict], masker):
        self.masker = masker
        self.ctypes: dict[tuple[str, str], str | None] = {}
        self.last: dict[tuple[str, str], int] = {}  # the last chunk of each flow direction finishes its stream
        for i, rec in enumerate(records):
            t, flow = rec.get("t"), rec.get("flow")
            if t in ("http.request", "http.response"):
                self.ctypes[(flow, t[5:])] = _header(rec.get("headers"), "content-type")
            elif t == "http.chunk":
                self.last[(flow, rec.get("dir"))] = i
        self.open: dict[tuple[str, str], object] = {}

    def chunk(self, i: int, rec: dict, data: bytes) -> bytes:
        key = (rec.get("flow"), rec.get("dir"))
        sm = self.open.get(key)
        if sm is None:
            sm = self.open[key] = self.masker.stream(self.ctypes.get(key))
        # The gateway's time bound on what a stream holds, at the record's time: text is not
        # moved to a much later chunk (whose time would then be wrong), as the gateway did not.
        ts = rec.get("ts")
        out = sm.feed(data, now=ts if isinstance(ts, (int, float)) and not isinstance(ts, bool) else None)
        if self.last.get(key) == i:
            out += sm.finish()
        return out


def _stored(body: dict) -> tuple[bytes, dict]:
    """A stored body's bytes, decoded now when the recording gateway could not undo its
    Content-Encoding (raw deflate, stacked codings) but today's decoders can; and its notes."""
    data = format_v1.decode_body(body)
    if body.get("decoded") is False and body.get("encoding") and not body.get("truncated"):
        from recorder.http.content_decoding import DecodeError, decoder_for

        decoder = decoder_for(body["encoding"])
        if decoder is not None:
            try:
                decoded = decoder.decode(data) + decoder.flush()
            except DecodeError:
                return data, body
            notes = {k: v for k, v in body.items() if k not in ("decoded", "decode_error")}
            notes["size"] = len(decoded)
            return decoded, notes
    return data, body


def _masked_fields(rm: _Remasker, streams: _Streams, i: int, rec: dict, fields: dict) -> dict:
    """One record's fields with every text in it masked again (urls, headers, bodies, messages)."""
    t = rec.get("t")
    masker = rm.masker
    if t in ("http.request", "http.response"):
        if "url" in fields:
            fields["url"] = rm.text(fields["url"])
        fields["headers"] = rm.headers(fields.get("headers"))
        if is_stored_rpc(fields.get("body")):
            fields["body"] = rm.rpc_body((rec.get("flow"), t[5:]), fields["body"], True)
        elif isinstance(fields.get("body"), dict):
            data, b = _stored(fields["body"])
            ctype = streams.ctypes.get((rec.get("flow"), t[5:]))
            fields["body"] = rm.body(b, masker.mask_body(data, ctype))
    elif t == "http.chunk" and is_stored_rpc(fields.get("body")):
        key = (rec.get("flow"), rec.get("dir"))
        fields["body"] = rm.rpc_body(key, fields["body"], streams.last.get(key) == i, rec.get("n"))
    elif t == "http.chunk" and isinstance(fields.get("body"), dict):
        b = fields["body"]
        fields["body"] = rm.body(b, streams.chunk(i, rec, format_v1.decode_body(b)))
    elif t == "http.error" and "message" in fields:
        fields["message"] = rm.text(fields["message"])
    elif t == "mcp.message" and isinstance(fields.get("body"), dict):  # one stdio line (wiretrail mcp-stdio)
        data, b = _stored(fields["body"])
        fields["body"] = rm.body(b, masker.mask_body(data, "application/json"))
    elif t in ("mcp.open", "mcp.close"):
        if isinstance(fields.get("command"), list):
            fields["command"] = [rm.text(a) if isinstance(a, str) else a for a in fields["command"]]
        for key in ("cwd", "message"):
            if isinstance(fields.get(key), str):
                fields[key] = rm.text(fields[key])
    elif t == "auth.refused":
        if "url" in fields:
            fields["url"] = rm.text(fields["url"])
        fields["headers"] = rm.headers(fields.get("headers"))
    return fields


def masked_records(read: SessionRead, masker) -> list[dict]:
    """The session's records, one for one, with today's rules applied to every text: what
    `show`, `export` and replay print, so that a session recorded before a rule existed does
    not reach a terminal or an export unmasked. Envelope fields stay as stored."""
    rm = _Remasker(masker)
    streams = _Streams(read.records, masker)
    return [_masked_fields(rm, streams, i, rec, dict(rec)) for i, rec in enumerate(read.records)]


def remasked_records(read: SessionRead, rm: _Remasker, new_id: str) -> Iterator[tuple[str, float, dict]]:
    records = read.records
    streams = _Streams(records, rm.masker)
    closed = False
    dropped = rm.dropped
    for i, rec in enumerate(records):
        t = rec.get("t")
        ts = rec.get("ts") if isinstance(rec.get("ts"), (int, float)) else time.time()
        fields = {k: v for k, v in rec.items() if k not in _ENVELOPE}
        if t in _SIGNATURES:
            dropped[t] += 1
            continue
        if t == "session.open":
            fields["session"] = new_id
            fields["remasked_from"] = {"session": read.session_id, "head": read.head, "state": read.state,
                                       "records": len(records), "file": read.path.name}
            fields["remasked_at"] = time.time()
        elif t == "session.close":
            closed = True
            fields["remasked"] = {"dropped": dropped}
        else:
            fields = _masked_fields(rm, streams, i, rec, fields)
        yield t, ts, fields
    if not closed:
        yield "session.close", time.time(), {
            "reason": f"remasked from a session that was {read.state} (not closed)",
            "counts": {"records": len(records)},
            "remasked": {"dropped": dropped},
        }


def remask_session(read: SessionRead, masker, out: Path | None = None) -> RemaskResult:
    """Write the re-masked copy of `read` and return where. `out` is a directory (the file
    is named by the new session id) or a file path; default: the original's directory."""
    new_id = new_session_id()
    if out is None:
        path = read.path.parent / (new_id + format_v1.FILE_SUFFIX)
    elif out.is_dir() or not out.name.endswith(format_v1.FILE_SUFFIX):
        path = out / (new_id + format_v1.FILE_SUFFIX)
    else:
        path = out
    rm = _Remasker(masker)
    count, head = write_session_file(path, remasked_records(read, rm, new_id))
    return RemaskResult(new_id, path, count, head, rm.before, rm.after, rm.dropped)
