"""Real field names for recorded messages, from FileDescriptorSets the operator supplies.

The record stores field numbers (recorder/protocols/connect/wire.py): it needs no schema and ships
none. A reader who has the schema (a FileDescriptorSet, as `protoc --descriptor_set_out
--include_imports` writes it) can name the fields: `wiretrail show --descriptors FILE`, or
`protobuf.descriptor_sets` in the gateway config. The RPC's path (`/pkg.Service/Method`)
says which message types the two directions carry.
"""
from __future__ import annotations

import struct
from pathlib import Path

# The FieldDescriptorProto types whose varint or fixed value reads differently.
_ZIGZAG = {17, 18}  # sint32, sint64
_SIGNED_VARINT = {3, 5}  # int64, int32
_SIGNED_FIXED = {15, 16}  # sfixed32, sfixed64
_DOUBLE, _FLOAT, _BOOL, _ENUM = 1, 2, 8, 14
_MESSAGE, _GROUP = 11, 10


class DescriptorError(ValueError):
    pass


class Descriptors:
    """Message types by name and RPC methods by path, from one or more descriptor sets."""

    def __init__(self, paths=()):
        try:
            from google.protobuf import descriptor_pb2, descriptor_pool
        except ImportError as e:  # pragma: no cover - protobuf is a dependency
            raise DescriptorError(f"naming fields needs the protobuf package ({e})") from None
        self.pool = descriptor_pool.DescriptorPool()
        files = []
        for path in paths:
            fds = descriptor_pb2.FileDescriptorSet()
            try:
                fds.ParseFromString(Path(path).read_bytes())
            except OSError as e:
                raise DescriptorError(f"cannot read {path}: {e.strerror or e}") from None
            except Exception as e:  # google.protobuf.message.DecodeError
                raise DescriptorError(f"{path} is not a FileDescriptorSet ({e}); write one with "
                                      "protoc --include_imports --descriptor_set_out=FILE") from None
            files.extend(fds.file)
        pending = list(files)
        while pending:  # dependencies first, whatever order the sets list them in
            left = []
            for f in pending:
                try:
                    self.pool.Add(f)
                except Exception:
                    left.append(f)
            if len(left) == len(pending):
                names = ", ".join(f.name for f in left)
                raise DescriptorError(f"cannot load {names}: a file it imports is missing "
                                      "(write the set with --include_imports)")
            pending = left

    def method(self, rpc_path: str | None):
        """(input, output) message descriptors of `/pkg.Service/Method`, or None."""
        if not rpc_path or rpc_path.count("/") < 2:
            return None
        service, _, method = rpc_path.rstrip("/").rpartition("/")
        service = service.rsplit("/", 1)[-1]
        try:
            svc = self.pool.FindServiceByName(service)
        except KeyError:
            return None
        m = svc.methods_by_name.get(method)
        return (m.input_type, m.output_type) if m is not None else None


def field_of(desc, number: int):
    """The field descriptor of `number` in message descriptor `desc`, or None."""
    if desc is None:
        return None
    return desc.fields_by_number.get(number)


def child(desc, number: int):
    """The message type of field `number`, for descending into a nested message."""
    f = field_of(desc, number)
    return f.message_type if f is not None and f.type in (_MESSAGE, _GROUP) else None


def value_text(field, node: dict) -> str | None:
    """A scalar as its declared type reads it (a negative int, a double, an enum's name), or
    None when the type says nothing more than the stored number."""
    if field is None:
        return None
    t = field.type
    if "v" in node:
        v = node["v"]
        if t in _ZIGZAG:
            return str((v >> 1) ^ -(v & 1))
        if t in _SIGNED_VARINT:
            return str(v - (1 << 64) if v >= 1 << 63 else v)
        if t == _BOOL:
            return "true" if v else "false"
        if t == _ENUM:
            ev = field.enum_type.values_by_number.get(v)
            return ev.name if ev is not None else None
    if "i64" in node:
        v = node["i64"]
        if t == _DOUBLE:
            return repr(struct.unpack("<d", v.to_bytes(8, "little"))[0])
        if t in _SIGNED_FIXED:
            return str(v - (1 << 64) if v >= 1 << 63 else v)
    if "i32" in node:
        v = node["i32"]
        if t == _FLOAT:
            return repr(struct.unpack("<f", v.to_bytes(4, "little"))[0])
        if t in _SIGNED_FIXED:
            return str(v - (1 << 32) if v >= 1 << 31 else v)
    return None
