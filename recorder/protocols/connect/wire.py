"""The protobuf wire format without a schema: bytes <-> a field-number tree.

A message is a list of fields; each field is its number and one value, as the wire
carries it. A length-delimited value has no type on the wire: it is read, in this order,
as a nested message when it parses as one and does not read better as text, as text when
it is UTF-8, as a hex-encoded nested message (Cursor's BidiAppend carries its messages so),
and otherwise as bytes. The tree is lossless: `encode(parse(b)) == b` for every message
`parse` accepts (it refuses non-canonical varints, which would not re-encode to the same
bytes). Malformed input raises WireError, never anything else.

As stored in a record (`to_json`), a field is an object with `f` (the field number) and
one of: `s` (text), `m` (a nested message), `x` (a nested message sent as lowercase hex
text), `b64` (bytes), `v` (varint), `i64` (fixed64), `i32` (fixed32), `g` (a group). Bytes
that read as packed varints also get `varints`, a reading aid that is not re-encoded.
"""
from __future__ import annotations

import base64
import binascii
import re

MAX_DEPTH = 64  # nested messages deeper than this are kept as text or bytes
MAX_FIELD = (1 << 29) - 1
_U64 = (1 << 64) - 1
# Text: UTF-8 without C0 controls other than tab, newline, carriage return and ESC (ANSI
# colours in a terminal's output), and without DEL.
_NOT_TEXT = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1a\x1c-\x1f\x7f]")
_HEX = re.compile(rb"(?:[0-9a-f]{2}){8,}")
_MAX_VARINTS_HINT = 256


class WireError(ValueError):
    """Bytes that are not a protobuf message; the text says where and why."""


class Field:
    """One field of a decoded message. `kind` is a key of the stored form (`s`, `m`, `x`,
    `b64`, `v`, `i64`, `i32`, `g`); `raw` is a length-delimited field's payload as received."""

    __slots__ = ("num", "kind", "value", "raw")

    def __init__(self, num: int, kind: str, value, raw: bytes | None = None):
        self.num, self.kind, self.value, self.raw = num, kind, value, raw

    def __repr__(self) -> str:  # for test failures
        return f"Field({self.num}, {self.kind!r}, {self.value!r})"


# -- varints -------------------------------------------------------------------------------


def read_varint(data: bytes, pos: int) -> tuple[int, int]:
    """(value, next position). Canonical encodings only: no padding bytes, at most 64 bits."""
    value = shift = 0
    start = pos
    n = len(data)
    while True:
        if pos >= n:
            raise WireError(f"truncated varint at byte {start}")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            break
        shift += 7
        if shift >= 70:
            raise WireError(f"varint longer than 10 bytes at byte {start}")
    if value > _U64:
        raise WireError(f"varint over 64 bits at byte {start}")
    if pos - start > 1 and data[pos - 1] == 0:
        raise WireError(f"non-canonical varint at byte {start}")
    return value, pos


def varint(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


# -- decoding ------------------------------------------------------------------------------


def parse(data: bytes, depth: int = 0) -> list[Field]:
    """The fields of one message. Raises WireError when `data` is not one."""
    fields, pos = _parse(data, 0, depth, None)
    return fields


def _parse(data: bytes, pos: int, depth: int, group: int | None) -> tuple[list[Field], int]:
    fields: list[Field] = []
    n = len(data)
    while pos < n:
        at = pos
        tag, pos = read_varint(data, pos)
        num, wt = tag >> 3, tag & 7
        if num == 0 or num > MAX_FIELD:
            raise WireError(f"field number {num} at byte {at}")
        if wt == 0:
            value, pos = read_varint(data, pos)
            fields.append(Field(num, "v", value))
        elif wt == 1:
            if pos + 8 > n:
                raise WireError(f"fixed64 past the end at byte {at}")
            fields.append(Field(num, "i64", int.from_bytes(data[pos:pos + 8], "little")))
            pos += 8
        elif wt == 5:
            if pos + 4 > n:
                raise WireError(f"fixed32 past the end at byte {at}")
            fields.append(Field(num, "i32", int.from_bytes(data[pos:pos + 4], "little")))
            pos += 4
        elif wt == 2:
            length, pos = read_varint(data, pos)
            if pos + length > n:
                raise WireError(f"length {length} past the end at byte {at}")
            payload = data[pos:pos + length]
            pos += length
            kind, value = interpret(payload, depth + 1)
            fields.append(Field(num, kind, value, payload))
        elif wt == 3:
            if depth + 1 > MAX_DEPTH:
                raise WireError(f"groups nested deeper than {MAX_DEPTH} at byte {at}")
            inner, pos = _parse(data, pos, depth + 1, num)
            fields.append(Field(num, "g", inner))
        elif wt == 4:
            if group != num:
                raise WireError(f"end of group {num} without its start at byte {at}")
            return fields, pos
        else:
            raise WireError(f"wire type {wt} at byte {at}")
    if group is not None:
        raise WireError(f"group {group} not ended")
    return fields, pos


def is_text(payload: bytes) -> bool:
    if _NOT_TEXT.search(payload):
        return False
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _structured(fields: list[Field], size: int) -> bool:
    """A payload that is text and also parses as a message: the message reading wins only
    when its length-delimited fields carry most of the bytes (text misread as a message is
    a run of one-byte varints)."""
    carried = sum(len(f.raw) for f in fields if f.raw is not None)
    return carried * 2 >= size and any(f.raw is not None for f in fields)


def interpret(payload: bytes, depth: int = 1) -> tuple[str, object]:
    """(kind, value) of a length-delimited payload, by the heuristics in the module doc."""
    if not payload:
        return "s", ""
    text = is_text(payload)
    if depth <= MAX_DEPTH:
        try:
            fields = parse(payload, depth)
        except (WireError, RecursionError):
            fields = None
        if fields is not None and (not text or _structured(fields, len(payload))):
            return "m", fields
    if text:
        if depth <= MAX_DEPTH and _HEX.fullmatch(payload):
            try:
                inner = parse(binascii.unhexlify(payload), depth)
            except (WireError, RecursionError):
                inner = None
            if inner and any(f.raw is not None for f in inner):
                return "x", inner
        return "s", payload.decode("utf-8")
    # Not clean text: UTF-8 with a few control characters (a terminal's output) is still
    # text; anything else (a packed field, an image, compressed data) is bytes.
    try:
        decoded = payload.decode("utf-8")
    except UnicodeDecodeError:
        return "b64", payload
    if len(_NOT_TEXT.findall(payload)) * 10 <= len(decoded):
        return "s", decoded
    return "b64", payload


# -- encoding ------------------------------------------------------------------------------


def payload_of(field: Field) -> bytes:
    """A length-delimited field's payload as it is encoded now (its value may be masked)."""
    k = field.kind
    if k == "s":
        return field.value.encode("utf-8", "surrogatepass")
    if k == "m":
        return encode(field.value)
    if k == "x":
        return binascii.hexlify(encode(field.value))
    if k == "b64":
        return field.value
    raise ValueError(f"not a length-delimited field: {k}")


def encode(fields: list[Field]) -> bytes:
    out = bytearray()
    for f in fields:
        k = f.kind
        if k == "v":
            out += varint(f.num << 3) + varint(f.value)
        elif k == "i64":
            out += varint(f.num << 3 | 1) + f.value.to_bytes(8, "little")
        elif k == "i32":
            out += varint(f.num << 3 | 5) + f.value.to_bytes(4, "little")
        elif k == "g":
            out += varint(f.num << 3 | 3) + encode(f.value) + varint(f.num << 3 | 4)
        else:
            payload = payload_of(f)
            out += varint(f.num << 3 | 2) + varint(len(payload)) + payload
    return bytes(out)


# -- the stored form -----------------------------------------------------------------------


def packed_varints(data: bytes) -> list[int] | None:
    """The values when `data` is exactly a run of varints (a packed repeated field), else None."""
    out, pos = [], 0
    try:
        while pos < len(data):
            value, pos = read_varint(data, pos)
            out.append(value)
            if len(out) > _MAX_VARINTS_HINT:
                return None
    except WireError:
        return None
    return out or None


def to_json(fields: list[Field]) -> list[dict]:
    out = []
    for f in fields:
        k = f.kind
        if k in ("m", "x", "g"):
            out.append({"f": f.num, k: to_json(f.value)})
        elif k == "b64":
            node = {"f": f.num, "b64": base64.b64encode(f.value).decode("ascii")}
            hint = packed_varints(f.value)
            if hint is not None:
                node["varints"] = hint
            out.append(node)
        else:
            out.append({"f": f.num, k: f.value})
    return out


_KINDS = ("s", "m", "x", "b64", "v", "i64", "i32", "g")


def from_json(nodes) -> list[Field]:
    """The fields of a stored message. Raises ValueError on anything that is not one."""
    if not isinstance(nodes, list):
        raise ValueError("a message is a list of fields")
    out = []
    for node in nodes:
        if not isinstance(node, dict) or not isinstance(node.get("f"), int) or not 0 < node["f"] <= MAX_FIELD:
            raise ValueError(f"not a field: {node!r:.80}")
        kind = next((k for k in _KINDS if k in node), None)
        value = node.get(kind)
        if kind in ("m", "x", "g"):
            out.append(Field(node["f"], kind, from_json(value)))
        elif kind == "s" and isinstance(value, str):
            out.append(Field(node["f"], "s", value))
        elif kind == "b64" and isinstance(value, str):
            out.append(Field(node["f"], "b64", base64.b64decode(value, validate=True)))
        elif kind in ("v", "i64") and isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= _U64:
            out.append(Field(node["f"], kind, value))
        elif kind == "i32" and isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 32:
            out.append(Field(node["f"], kind, value))
        else:
            raise ValueError(f"field {node.get('f')}: no value of a known kind")
    return out


def walk(fields: list[Field], prefix: str = ""):
    """(path, field) of every field, depth first in wire order; a path is the field numbers
    from the top, joined by dots ("1.2.1")."""
    stack = [(prefix, fields, 0)]
    while stack:
        base, items, i = stack.pop()
        if i >= len(items):
            continue
        f = items[i]
        stack.append((base, items, i + 1))
        path = f"{base}.{f.num}" if base else str(f.num)
        yield path, f
        if f.kind in ("m", "x", "g"):
            stack.append((path, f.value, 0))


def json_walk(nodes, prefix: str = ""):
    """(path, node) of every field of a stored message, as `walk` does for Fields. Skips
    what is not a field (recorded data is untrusted)."""
    stack = [(prefix, nodes if isinstance(nodes, list) else [], 0)]
    while stack:
        base, items, i = stack.pop()
        if i >= len(items):
            continue
        stack.append((base, items, i + 1))
        node = items[i]
        if not isinstance(node, dict) or not isinstance(node.get("f"), int):
            continue
        path = f"{base}.{node['f']}" if base else str(node["f"])
        yield path, node
        for k in ("m", "x", "g"):
            if isinstance(node.get(k), list):
                stack.append((path, node[k], 0))
                break
