"""Parameter and column values as they are recorded: text as text, binary decoded for the common
types, anything else as base64, and every one masked before it is written."""
from __future__ import annotations

import base64
import datetime
import struct
import uuid
from decimal import Decimal

TYPE_NAMES = {
    0: "unknown", 16: "bool", 17: "bytea", 18: "char", 19: "name", 20: "int8", 21: "int2", 23: "int4",
    25: "text", 26: "oid", 114: "json", 142: "xml", 700: "float4", 701: "float8", 705: "unknown",
    1042: "bpchar", 1043: "varchar", 1082: "date", 1083: "time", 1114: "timestamp", 1184: "timestamptz",
    1186: "interval", 1700: "numeric", 2950: "uuid", 3802: "jsonb", 869: "inet", 650: "cidr",
    1000: "bool[]", 1005: "int2[]", 1007: "int4[]", 1016: "int8[]", 1009: "text[]", 1015: "varchar[]",
    2951: "uuid[]", 3807: "jsonb[]", 1021: "float4[]", 1022: "float8[]", 2278: "void", 1560: "bit",
    1562: "varbit", 790: "money", 2249: "record",
}

_EPOCH_2000 = datetime.datetime(2000, 1, 1)
_DATE_2000 = datetime.date(2000, 1, 1)
_TEXTUAL = {18, 19, 25, 114, 142, 1042, 1043}  # binary format = the text's bytes


def type_name(oid: int) -> str:
    return TYPE_NAMES.get(oid, str(oid))


def _numeric(data: bytes) -> str:
    ndigits, weight, sign, dscale = struct.unpack_from("!hhHh", data)
    if sign == 0xC000:
        return "NaN"
    if sign == 0xD000:
        return "Infinity"
    if sign == 0xF000:
        return "-Infinity"
    digits = struct.unpack_from(f"!{ndigits}h", data, 8)
    value = Decimal(0)
    for i, d in enumerate(digits):
        value += Decimal(d).scaleb(4 * (weight - i))
    if sign == 0x4000:
        value = -value
    return f"{value:.{max(dscale, 0)}f}"


def decode_binary(oid: int, data: bytes) -> str | None:
    """The value of a binary-format field as text, or None when the type is not one we decode."""
    try:
        if oid == 16:
            return "true" if data == b"\x01" else "false"
        if oid in (21,):
            return str(struct.unpack("!h", data)[0])
        if oid in (23,):
            return str(struct.unpack("!i", data)[0])
        if oid == 26:
            return str(struct.unpack("!I", data)[0])
        if oid == 20:
            return str(struct.unpack("!q", data)[0])
        if oid == 700:
            return repr(struct.unpack("!f", data)[0])
        if oid == 701:
            return repr(struct.unpack("!d", data)[0])
        if oid in _TEXTUAL:
            return data.decode("utf-8")
        if oid == 3802:
            return data[1:].decode("utf-8") if data[:1] == b"\x01" else None
        if oid == 2950:
            return str(uuid.UUID(bytes=data))
        if oid == 1082:
            return (_DATE_2000 + datetime.timedelta(days=struct.unpack("!i", data)[0])).isoformat()
        if oid in (1114, 1184):
            t = _EPOCH_2000 + datetime.timedelta(microseconds=struct.unpack("!q", data)[0])
            return t.isoformat(sep=" ") + ("+00" if oid == 1184 else "")
        if oid == 1700:
            return _numeric(data)
    except (struct.error, ValueError, UnicodeDecodeError, OverflowError, ArithmeticError):
        return None
    return None


def recorded_value(data: bytes | None, oid: int, binary: bool, masker, max_size: int = 0) -> dict | None:
    """One parameter (or sampled cell) as recorded: {"text"} or {"b64"}, masked, with its type;
    None for SQL NULL."""
    if data is None:
        return None
    out: dict = {"type": type_name(oid)}
    text: str | None
    if binary:
        out["binary"] = True
        text = decode_binary(oid, data)
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    if text is not None:
        if masker is not None:
            text = masker.mask_text(text)
        if max_size and len(text) > max_size:
            out["size"], out["truncated"] = len(data), True
            text = text[:max_size]
        out["text"] = text
    else:
        if masker is not None:
            data = masker.mask_bytes(data)
        if max_size and len(data) > max_size:
            out["size"], out["truncated"] = len(data), True
            data = data[:max_size]
        out["b64"] = base64.b64encode(data).decode("ascii")
    return out


def display(value: dict | None) -> str:
    """A recorded value as a reader sees it in a transcript."""
    if value is None:
        return "NULL"
    if "text" in value:
        text = value["text"]
        return text if value.get("type") in ("int2", "int4", "int8", "float4", "float8", "numeric", "bool", "oid") \
            else "'" + text.replace("'", "''") + "'"
    return f"<{value.get('type', 'binary')} {len(base64.b64decode(value.get('b64', '')))} bytes>"
