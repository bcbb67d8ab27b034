"""Bodies as the hooks hand them over, and how the writer thread renders them.

The event loop only wraps raw bytes (BodyBytes for a buffered body, ChunkBytes for a
batch of a streamed one). Decoding Content-Encoding, splitting text from binary and
cutting at max_body happen on the writer thread, in queue order, so one stream's
state (BodyStream) is only ever touched by that thread.

Masking happens here too, on the writer thread: whoever builds a BodyBytes/BodyStream
passes the gateway's Masker (recorder.masking) and the body's Content-Type; the loop only
hands the reference over. Buffered bodies are masked whole (SSE as events, JSON value by
value, anything else as bytes); streamed ones through a stream masker created on the
first chunk, which holds back only what could still become a secret, for at most about
capture.chunk_interval: capture sends an empty "tick" batch after a quiet interval, and
the writer then releases what the time bound allows (a tick that releases nothing writes
no record). The recorded bytes are the bytes that crossed, except inside masked spans.
Masking runs on the decoded bytes before the max_body cut, so a cut never splits a
secret open. Bodies that are not UTF-8 (stored as b64) are masked as bytes: a secret in
them is replaced by its tag, which changes the binary (docs/masking.md).
"""
from __future__ import annotations

from recorder.store import format_v1
from recorder.protocols.connect.envelopes import is_rpc
from recorder.protocols.connect.record import RpcStream
from recorder.http.content_decoding import DecodeError, decoder_for


class BodyBytes:
    """A whole buffered body, as it crossed the wire (still content-encoded)."""

    __slots__ = ("data", "encoding", "max_body", "masker", "content_type", "message_encoding")

    def __init__(self, data: bytes, encoding: str | None = None, max_body: int = 0, masker=None,
                 content_type: str | None = None, message_encoding: str | None = None):
        self.data = data
        self.encoding = encoding
        self.max_body = max_body
        self.masker = masker  # a recorder.masking.Masker, or None (recorded unmasked)
        self.content_type = content_type
        self.message_encoding = message_encoding  # Connect/gRPC per-message compression (recorder/protocols/connect)


class BodyStream:
    """The state of one streamed body direction. Created on the loop, used by the writer."""

    __slots__ = ("decoder", "encoding", "max_body", "recorded", "wire", "decoded", "held", "decode_error",
                 "masker", "content_type", "mask_state", "ref", "records", "done", "message_encoding", "rpc")

    def __init__(self, encoding: str | None = None, max_body: int = 0, masker=None, content_type: str | None = None,
                 message_encoding: str | None = None):
        self.masker = masker  # a recorder.masking.Masker, or None (recorded unmasked)
        self.content_type = content_type
        self.message_encoding = message_encoding  # Connect/gRPC per-message compression
        self.rpc: RpcStream | None = None  # a Connect/gRPC body's messages, made on the writer thread
        self.mask_state = None  # the stream masker, made on the writer thread at the first chunk
        self.encoding = encoding
        self.decoder = decoder_for(encoding)
        self.max_body = max_body
        self.recorded = 0  # decoded bytes written to the artifact
        self.decoded = 0  # decoded bytes seen
        self.wire = 0  # bytes as they crossed the wire
        self.held = b""  # an incomplete UTF-8 sequence waiting for its next byte
        self.decode_error: str | None = None
        self.ref: int | None = None  # its number on the way to a writer process (recorder/store/writer_process.py)
        self.done = False  # its final chunk was rendered
        self.records = 0  # http.chunk records written: their `n` (a tick that writes nothing takes none)


class ChunkBytes:
    """A batch of a streamed body; `final` marks the end of the stream. An empty batch that
    is not final is a tick: it releases held-back text whose time is up."""

    __slots__ = ("data", "stream", "final", "times")

    def __init__(self, data: bytes, stream: BodyStream, final: bool = False, times: list | None = None):
        self.data = data
        self.stream = stream
        self.final = final
        self.times = times  # (length, arrival time) of the pieces of `data`: Connect/gRPC streams only


def render_bodies(fields: dict, ts: float | None = None) -> dict | None:
    """Replace BodyBytes/ChunkBytes values by their stored form. Writer thread only.
    `ts` is the record's time (the hold-back's clock). None: a tick with nothing to write."""
    out = None
    for key, value in fields.items():
        if isinstance(value, BodyBytes):
            rendered = render_buffered(value)
        elif isinstance(value, ChunkBytes):
            rendered = render_chunk(value, ts)
            if rendered is None:
                return None
            if "n" in fields:
                if out is None:
                    out = dict(fields)
                out["n"] = value.stream.records
                value.stream.records += 1
        else:
            continue
        if out is None:
            out = dict(fields)
        out[key] = rendered
    return fields if out is None else out


def _cut(data: bytes, max_body: int, already: int) -> tuple[bytes, bool]:
    if max_body and already + len(data) > max_body:
        cut = data[: max(0, max_body - already)]
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return cut, True
        return _split_utf8_tail(cut)[0], True  # text stays text
    return data, False


def render_buffered(body: BodyBytes) -> dict:
    wire = body.data
    decoder = decoder_for(body.encoding)
    note: dict = {}
    if body.encoding and body.encoding.strip().lower() not in ("", "identity"):
        note["encoding"] = body.encoding
        note["wire_size"] = len(wire)
        if decoder is None:
            note["decoded"] = False
            data = wire
        else:
            try:
                data = decoder.decode(wire) + decoder.flush()
            except DecodeError as e:
                # Nothing lost: keep the wire bytes and say why they are not decoded.
                data = wire
                note["decoded"] = False
                note["decode_error"] = str(e)
    else:
        data = wire
    size = len(data)
    if is_rpc(body.content_type) and note.get("decoded") is not False:
        # Connect/gRPC: stored as masked messages, never as bytes (recorder/protocols/connect/record.py)
        rpc = RpcStream(body.content_type, body.message_encoding, body.masker, body.max_body)
        rendered = _rpc_feed(rpc, data, True)
        rendered.update(note)
        return rendered
    notes: set[str] = set()
    if body.masker is not None and data:
        data = body.masker.mask_body(data, body.content_type, notes=notes)
    data, truncated = _cut(data, body.max_body, 0)
    rendered = format_v1.encode_body(data, size=size, truncated=truncated)
    rendered.update(note)
    _note_masked_as_text(rendered, notes)
    return rendered


def _note_masked_as_text(rendered: dict, notes) -> None:
    """A part that looked like JSON but was masked by the text rules says so (docs/format.md §5)."""
    if notes:
        rendered["masked_as"] = "text"
        rendered["note"] = "; ".join(sorted(notes))


def _split_utf8_tail(data: bytes) -> tuple[bytes, bytes]:
    """Hold back a trailing incomplete UTF-8 sequence so text chunks stay text."""
    for back in (1, 2, 3):
        if len(data) < back:
            break
        b = data[-back]
        if b & 0xC0 == 0x80:  # continuation byte: keep looking for the lead byte
            continue
        if b & 0x80 == 0:
            return data, b""
        need = 2 if b & 0xE0 == 0xC0 else 3 if b & 0xF0 == 0xE0 else 4 if b & 0xF8 == 0xF0 else 1
        if need > back:
            return data[:-back], data[-back:]
        return data, b""
    return data, b""


def _rpc_feed(rpc: RpcStream, data: bytes, final: bool, undecodable: str | None = None, times=None) -> dict:
    """An RPC body's messages. Should decoding fail (a bug meeting untrusted bytes), the bytes are
    left out, never stored raw: compressed or hex-encoded, they could hide a secret."""
    try:
        if rpc.failed is None:
            return rpc.feed_undecodable(data, final, undecodable) if undecodable else rpc.feed(data, final, times)
    except Exception as e:  # noqa: BLE001 - the record says what failed; nothing raw is kept
        rpc.failed = f"{type(e).__name__}: {str(e)[:200]}"
    return {"framing": rpc.framing, "messages": [], "size": len(data), "omitted":
            f"the recorder could not decode this stream ({rpc.failed}); its bytes are not recorded"}


def _rpc_tick(rpc: RpcStream) -> dict | None:
    """A tick on an RPC stream: messages whose masking hold is over, or None (nothing to write)."""
    if rpc.failed is not None:
        return None
    try:
        return rpc.tick()
    except Exception as e:  # noqa: BLE001 - as in _rpc_feed
        rpc.failed = f"{type(e).__name__}: {str(e)[:200]}"
        return None


def render_chunk(chunk: ChunkBytes, now: float | None = None) -> dict | None:
    st = chunk.stream
    if not chunk.data and not chunk.final:  # a tick: release what has been held long enough
        if st.rpc is not None:
            return _rpc_tick(st.rpc)
        if st.mask_state is None:
            return None
        data = st.mask_state.force(now)
        if not data:
            return None
        data, truncated = _cut(data, st.max_body, st.recorded)
        st.recorded += len(data)
        return format_v1.encode_body(data, size=0, truncated=truncated)
    if st.done:
        if not chunk.data:  # the stream already ended (capture's tee and its end both flush it)
            return _rpc_feed(st.rpc, b"", True) if st.rpc is not None else format_v1.encode_body(b"", size=0)
        # More after an end (raw TCP settles each client read): a new segment, a fresh decoder.
        st.decoder = decoder_for(st.encoding)
    st.done = chunk.final
    st.wire += len(chunk.data)
    data = chunk.data
    if st.decoder is not None and st.decode_error is None:
        try:
            data = st.decoder.decode(data)
            if chunk.final:
                data += st.decoder.flush()
        except DecodeError as e:
            # From here on the stream is recorded as it crossed the wire.
            st.decode_error = str(e)
    if st.rpc is not None or is_rpc(st.content_type):
        # Connect/gRPC: stored as masked messages, never as bytes (recorder/protocols/connect/record.py)
        if st.rpc is None:
            st.rpc = RpcStream(st.content_type, st.message_encoding, st.masker, st.max_body)
        st.decoded += len(data)
        if st.decode_error is not None:  # `data` is as it crossed the wire
            return _rpc_feed(st.rpc, data, chunk.final, st.decode_error)
        return _rpc_feed(st.rpc, data, chunk.final, times=chunk.times)
    data = st.held + data
    st.held = b""
    if not chunk.final:
        data, st.held = _split_utf8_tail(data)
    st.decoded += len(data)
    size = len(data)
    if st.masker is not None:
        if st.mask_state is None:
            st.mask_state = st.masker.stream(st.content_type)
        data = st.mask_state.feed(data, now)
        if chunk.final:
            data += st.mask_state.finish()
    data, truncated = _cut(data, st.max_body, st.recorded)
    st.recorded += len(data)
    rendered = format_v1.encode_body(data, size=size, truncated=truncated)
    if st.decode_error is not None:
        rendered["decoded"] = False
        rendered["decode_error"] = st.decode_error
    notes = getattr(st.mask_state, "notes", None)
    if notes:  # said once, on the batch that carried it
        _note_masked_as_text(rendered, notes)
        notes.clear()
    return rendered
