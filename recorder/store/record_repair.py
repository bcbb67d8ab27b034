"""No record is dropped: what the writer writes when a record cannot be rendered or encoded.

The writer first renders a record as usual. If that raises (a masker bug, a value orjson
cannot encode), it tries again here, and says so in the record:

1. bodies are recorded from their raw bytes, masked by the text rules only (no JSON or SSE
   logic), with `"masked_as": "text"` and a `note` naming the error;
2. values orjson cannot encode are repaired (`repair`): a string that is not valid Unicode
   (a header with bytes that are not UTF-8) keeps its bytes as backslash escapes, a number
   too large becomes its decimal string, a key that is not a string becomes one, any other
   value only its type's name (its repr could hold unmasked content); the record then carries
   `"repaired"` saying what was changed.

If even that fails, the record truly cannot be written: an `http.error` takes its place
(`phase` "record", `lost` naming the missing record type), so the session shows the gap and
`wiretrail verify` reports it. No function here raises.
"""
from __future__ import annotations

from recorder.protocols.connect.envelopes import framing_of, is_rpc
from recorder.protocols.connect.record import RpcStream
from recorder.store import format_v1
from recorder.store.bodies import BodyBytes, ChunkBytes
from recorder.store.records import HTTP_ERROR

MAX_DEPTH = 64  # record fields are shallow; anything deeper is not recorded structurally
_INT_LIMIT = 1 << 63


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text[:200]}" if text else type(error).__name__


def _body_as_text(data: bytes, masker, note: str, **extra) -> dict:
    size = len(data)
    if masker is not None and data:
        try:
            data = masker.mask_bytes(data)
        except Exception as e:  # nothing unmasked is written: the body is left out
            return {"text": "", "size": size, "truncated": True, "masked_as": "text",
                    "note": f"{note}; the body could not be masked ({_describe(e)}) and is not recorded"}
    body = format_v1.encode_body(data, size=size)
    body.update(extra)
    body["masked_as"] = "text"
    body["note"] = note
    return body


def fallback_bodies(fields: dict, error: BaseException) -> dict:
    """fields with each body rendered from its raw bytes, masked by the text rules only."""
    note = f"recorded as raw text: rendering the body failed ({_describe(error)})"
    out = dict(fields)
    for key, value in fields.items():
        ctype = value.stream.content_type if isinstance(value, ChunkBytes) else getattr(value, "content_type", None)
        if isinstance(value, (BodyBytes, ChunkBytes)) and is_rpc(ctype):
            # Connect/gRPC: raw bytes could hold a compressed secret the text rules cannot see
            if isinstance(value, ChunkBytes):  # the rest of the stream is left out too
                st = value.stream
                st.rpc = st.rpc or RpcStream(ctype, st.message_encoding, st.masker, st.max_body)
                st.rpc.failed = note
            out[key] = {"framing": (framing_of(ctype) or ("unary",))[0], "messages": [], "size": len(value.data),
                        "omitted": f"{note}; its bytes are not recorded"}
        elif isinstance(value, BodyBytes):
            out[key] = _body_as_text(value.data, value.masker, note, decoded=False)
        elif isinstance(value, ChunkBytes):
            st = value.stream
            st.mask_state = None  # its state may be half-updated: the next batch starts afresh
            st.decoder = None  # from here on the stream is recorded as it crossed the wire
            st.decode_error = st.decode_error or note
            out[key] = _body_as_text(value.data, st.masker, note, decoded=False)
    return out


def repair(value) -> tuple[object, list[str]]:
    """(a copy of value that orjson can encode, what was changed). Iterative: any depth."""
    changes: list[str] = []
    root: list = [None]
    # (container to fill, key or index, value, depth)
    stack = [(root, 0, value, 0)]
    while stack:
        parent, slot, v, depth = stack.pop()
        if isinstance(v, (dict, list, tuple)) and depth >= MAX_DEPTH:
            parent[slot] = f"[nested deeper than {MAX_DEPTH} levels: not recorded]"
            _note(changes, "structure too deep")
        elif isinstance(v, dict):
            new: dict = {}
            parent[slot] = new
            for k, item in v.items():
                if not isinstance(k, str):
                    k = str(k)
                    _note(changes, "non-string key")
                k = _text(k, changes)
                new[k] = None
                stack.append((new, k, item, depth + 1))
        elif isinstance(v, (list, tuple)):
            new_list = [None] * len(v)
            parent[slot] = new_list
            for i, item in enumerate(v):
                stack.append((new_list, i, item, depth + 1))
        elif isinstance(v, str):
            parent[slot] = _text(v, changes)
        elif isinstance(v, bool) or v is None or isinstance(v, float):
            parent[slot] = v
        elif isinstance(v, int):
            if -_INT_LIMIT <= v < _INT_LIMIT:
                parent[slot] = v
            else:
                parent[slot] = str(v)
                _note(changes, "integer too large")
        else:  # its type only: a repr could carry content that was never masked
            parent[slot] = f"[{type(v).__name__} value: not recorded]"
            _note(changes, f"{type(v).__name__} value")
    return root[0], changes


def _note(changes: list, what: str) -> None:
    if what not in changes:
        changes.append(what)


def _text(s: str, changes: list) -> str:
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        _note(changes, "invalid Unicode kept as \\x escapes")
        return s.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def line_for(chain: format_v1.Chain, rtype: str, ts: float, fields: dict) -> tuple[bytes | None, str | None]:
    """The line for one record, and None; or, when it cannot be written as it is, the best
    line that can (module docstring) and why; (None, None) for a streamed body's tick that
    released nothing. Never raises."""
    from recorder.store.bodies import render_bodies

    try:
        rendered = render_bodies(fields, ts)
        if rendered is None:
            return None, None
    except Exception as e:  # bodies render once (a stream's state moves on): retried from raw bytes
        error, rendered = e, None
    else:
        try:
            return chain.next_line(rtype, ts, rendered), None
        except Exception as e:
            error = e
    try:
        if rendered is None:
            rendered = render_bodies(fallback_bodies(fields, error), ts) or {}
        rendered, changes = repair(rendered)
        rendered["repaired"] = f"{_describe(error)}" + (f"; {', '.join(changes)}" if changes else "")
        return chain.next_line(rtype, ts, rendered), f"repaired: {rendered['repaired']}"
    except Exception as again:
        return lost_line(chain, rtype, ts, fields, error, again)


def lost_line(chain: format_v1.Chain, rtype: str, ts: float, fields: dict, error: BaseException,
              again: BaseException | None = None) -> tuple[bytes, str]:
    """The http.error that stands in for a record that cannot be written at all."""
    flow = fields.get("flow") if isinstance(fields.get("flow"), str) else None
    message = (f"the {rtype} record could not be written ({_describe(error)}"
               + (f"; then {_describe(again)}" if again is not None else "") + "); it is missing from this session")
    return chain.next_line(HTTP_ERROR, ts, {"flow": flow, "phase": "record", "by": "gateway", "lost": rtype,
                                              "message": message}), f"lost: {message}"
