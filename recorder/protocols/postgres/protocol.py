"""The PostgreSQL v3 wire protocol: framing, and the messages the gateway reads and writes.

Only what the gateway needs: splitting a byte stream into messages without copying the
bodies it does not look at (a large result's DataRows are counted, not kept), parsing the
messages it records, and building the few it sends itself (authentication requests,
ErrorResponse, ParameterStatus, BackendKeyData, ReadyForQuery). The protocol is
specified in the PostgreSQL manual, chapter "Frontend/Backend Protocol".
"""
from __future__ import annotations

import struct

PROTOCOL_3_0 = 196608  # 3 << 16
SSL_REQUEST = 80877103
GSSENC_REQUEST = 80877104
CANCEL_REQUEST = 80877102
MAX_STARTUP = 10000  # the server's own limit on a startup packet
TLS_HANDSHAKE = 0x16  # first byte of a TLS record: a client that starts TLS directly (PG 17 sslnegotiation=direct)

# Authentication request codes (message 'R')
AUTH_OK = 0
AUTH_CLEARTEXT = 3
AUTH_MD5 = 5
AUTH_SASL = 10
AUTH_SASL_CONTINUE = 11
AUTH_SASL_FINAL = 12

_I32 = struct.Struct("!i")
_HDR = struct.Struct("!ci")
_I16 = struct.Struct("!h")


class ProtocolError(Exception):
    """Bytes that are not the protocol (a length out of range, a truncated field)."""


# -- framing ---------------------------------------------------------------------------


class Splitter:
    """Splits one direction of a connection into messages, incrementally.

    `feed(data)` returns (type, body, body size) for every message completed by `data`. For a
    type not in `keep`, body is None and its bytes are skipped as they arrive (never buffered):
    a result of a million rows costs a counter, not memory. `limit` caps a kept body.
    """

    __slots__ = ("keep", "limit", "buf", "skip", "pending_type", "pending_size", "wanted")

    def __init__(self, keep: frozenset[bytes] | None = None, limit: int = 1 << 30):
        self.keep = keep  # None: keep every body
        self.limit = limit
        self.buf = bytearray()
        self.skip = 0  # body bytes of a skipped message still to come
        self.pending_type: bytes | None = None  # type of the skipped message in progress
        self.pending_size = 0
        self.wanted = 0  # body length of the kept message at the front of buf, once its header is there

    def feed(self, data) -> list[tuple[bytes, bytes | None, int]]:
        out: list[tuple[bytes, bytes | None, int]] = []
        view = memoryview(data)
        if self.skip:
            n = min(self.skip, len(view))
            self.skip -= n
            view = view[n:]
            if self.skip:
                return out
            out.append((self.pending_type, None, self.pending_size))
            self.pending_type = None
        buf = self.buf
        keep = self.keep
        while view:
            if not buf and len(view) >= 5:
                # Fast path: headers straight from the incoming data.
                mtype = bytes(view[0:1])
                length = _I32.unpack_from(view, 1)[0]
                if length < 4:
                    raise ProtocolError(f"message {mtype!r} has length {length}")
                body_len = length - 4
                if keep is not None and mtype not in keep:
                    if len(view) - 5 >= body_len:
                        out.append((mtype, None, body_len))
                        view = view[5 + body_len:]
                        continue
                    self.skip = body_len - (len(view) - 5)
                    self.pending_type, self.pending_size = mtype, body_len
                    return out
                if body_len > self.limit:
                    raise ProtocolError(f"message {mtype!r} of {body_len} bytes is over the limit")
                if len(view) - 5 >= body_len:
                    out.append((mtype, bytes(view[5:5 + body_len]), body_len))
                    view = view[5 + body_len:]
                    continue
                buf += view
                self.wanted = body_len
                return out
            # Slow path: a header or a kept body split across reads.
            if len(buf) < 5:
                need = 5 - len(buf)
                buf += view[:need]
                view = view[need:]
                if len(buf) < 5:
                    return out
                mtype = bytes(buf[0:1])
                length = _I32.unpack_from(buf, 1)[0]
                if length < 4:
                    raise ProtocolError(f"message {mtype!r} has length {length}")
                body_len = length - 4
                if keep is not None and mtype not in keep:
                    buf.clear()
                    n = min(body_len, len(view))
                    view = view[n:]
                    if n < body_len:
                        self.skip = body_len - n
                        self.pending_type, self.pending_size = mtype, body_len
                        return out
                    out.append((mtype, None, body_len))
                    continue
                if body_len > self.limit:
                    raise ProtocolError(f"message {mtype!r} of {body_len} bytes is over the limit")
                self.wanted = body_len
            need = 5 + self.wanted - len(buf)
            buf += view[:need]
            view = view[need:]
            if len(buf) == 5 + self.wanted:
                out.append((bytes(buf[0:1]), bytes(buf[5:]), self.wanted))
                buf.clear()
                self.wanted = 0
        return out


# -- reading fields --------------------------------------------------------------------


class Reader:
    """Reads the fields of one message body."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def int32(self) -> int:
        if self.pos + 4 > len(self.data):
            raise ProtocolError("truncated int32")
        v = _I32.unpack_from(self.data, self.pos)[0]
        self.pos += 4
        return v

    def uint32(self) -> int:
        return self.int32() & 0xFFFFFFFF

    def int16(self) -> int:
        if self.pos + 2 > len(self.data):
            raise ProtocolError("truncated int16")
        v = _I16.unpack_from(self.data, self.pos)[0]
        self.pos += 2
        return v

    def cstr(self) -> str:
        end = self.data.find(b"\0", self.pos)
        if end < 0:
            raise ProtocolError("string without its terminating zero")
        s = self.data[self.pos:end].decode("utf-8", "replace")
        self.pos = end + 1
        return s

    def bytes(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ProtocolError("truncated field")
        v = self.data[self.pos:self.pos + n]
        self.pos += n
        return v

    def byte(self) -> bytes:
        return self.bytes(1)

    def rest(self) -> bytes:
        v = self.data[self.pos:]
        self.pos = len(self.data)
        return v


def parse_startup(packet: bytes) -> tuple[int, dict[str, str]]:
    """(protocol code, parameters) of a startup packet body (after its length)."""
    r = Reader(packet)
    code = r.int32()
    params: dict[str, str] = {}
    if code >> 16 == 3:
        while r.pos < len(packet):
            name = r.cstr()
            if not name:
                break
            params[name] = r.cstr()
    return code, params


def parse_cancel(packet: bytes) -> tuple[int, int]:
    """(pid, secret) of a CancelRequest body (after its length and code)."""
    r = Reader(packet)
    r.int32()
    return r.int32(), r.int32()


def parse_query(body: bytes) -> str:
    return Reader(body).cstr()


def parse_parse(body: bytes) -> tuple[str, str, list[int]]:
    """(statement name, SQL, parameter type oids)."""
    r = Reader(body)
    name, sql = r.cstr(), r.cstr()
    n = r.int16()
    return name, sql, [r.uint32() for _ in range(n)]


def parse_bind(body: bytes) -> tuple[str, str, list[int], list[bytes | None], list[int]]:
    """(portal, statement, parameter format codes, parameter values, result format codes)."""
    r = Reader(body)
    portal, stmt = r.cstr(), r.cstr()
    formats = [r.int16() for _ in range(r.int16())]
    values: list[bytes | None] = []
    for _ in range(r.int16()):
        n = r.int32()
        values.append(None if n == -1 else r.bytes(n))
    results = [r.int16() for _ in range(r.int16())]
    return portal, stmt, formats, values, results


def parse_execute(body: bytes) -> tuple[str, int]:
    r = Reader(body)
    return r.cstr(), r.int32()


def parse_describe_close(body: bytes) -> tuple[str, str]:
    """('S' or 'P', name) of a Describe or Close."""
    r = Reader(body)
    return r.byte().decode("ascii", "replace"), r.cstr()


def parse_function_call(body: bytes) -> tuple[int, list[int], list[bytes | None]]:
    r = Reader(body)
    oid = r.uint32()
    formats = [r.int16() for _ in range(r.int16())]
    args: list[bytes | None] = []
    for _ in range(r.int16()):
        n = r.int32()
        args.append(None if n == -1 else r.bytes(n))
    return oid, formats, args


def parse_parameter_description(body: bytes) -> list[int]:
    r = Reader(body)
    return [r.uint32() for _ in range(r.int16())]


def parse_row_description(body: bytes) -> list[tuple[str, int, int]]:
    """[(column name, type oid, format code)]."""
    r = Reader(body)
    cols = []
    for _ in range(r.int16()):
        name = r.cstr()
        r.int32()  # table oid
        r.int16()  # column number
        oid = r.uint32()
        r.int16()  # type size
        r.int32()  # type modifier
        fmt = r.int16()
        cols.append((name, oid, fmt))
    return cols


def parse_data_row(body: bytes) -> list[bytes | None]:
    r = Reader(body)
    out: list[bytes | None] = []
    for _ in range(r.int16()):
        n = r.int32()
        out.append(None if n == -1 else r.bytes(n))
    return out


def parse_fields(body: bytes) -> dict[str, str]:
    """ErrorResponse / NoticeResponse fields, by their one-letter codes."""
    out: dict[str, str] = {}
    r = Reader(body)
    while r.pos < len(body):
        code = r.byte()
        if code == b"\0":
            break
        out[code.decode("ascii", "replace")] = r.cstr()
    return out


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    r = Reader(body)
    return r.cstr(), r.cstr()


def parse_backend_key(body: bytes) -> tuple[int, int]:
    r = Reader(body)
    return r.int32(), r.int32()


def rows_from_tag(tag: str) -> int | None:
    """The row count of a CommandComplete tag ("INSERT 0 5", "SELECT 3", "COPY 10"), or None."""
    parts = tag.split()
    if parts and parts[-1].isdigit() and parts[0] in (
            "INSERT", "DELETE", "UPDATE", "SELECT", "MOVE", "FETCH", "COPY", "MERGE"):
        return int(parts[-1])
    return None


# -- building messages -----------------------------------------------------------------


def message(mtype: bytes, body: bytes = b"") -> bytes:
    return _HDR.pack(mtype, len(body) + 4) + body


def cstr(s: str) -> bytes:
    return s.encode("utf-8") + b"\0"


def startup_packet(params: dict[str, str], code: int = PROTOCOL_3_0) -> bytes:
    body = _I32.pack(code) + b"".join(cstr(k) + cstr(v) for k, v in params.items()) + b"\0"
    return _I32.pack(len(body) + 4) + body


def request_packet(code: int, *ints: int) -> bytes:
    """SSLRequest / GSSENCRequest / CancelRequest."""
    body = _I32.pack(code) + b"".join(_I32.pack(i) for i in ints)
    return _I32.pack(len(body) + 4) + body


def auth_request(code: int, data: bytes = b"") -> bytes:
    return message(b"R", _I32.pack(code) + data)


def error_response(sqlstate: str, text: str, *, severity: str = "FATAL", hint: str | None = None,
                   detail: str | None = None) -> bytes:
    fields = [b"S" + cstr(severity), b"V" + cstr(severity), b"C" + cstr(sqlstate), b"M" + cstr(text)]
    if detail:
        fields.append(b"D" + cstr(detail))
    if hint:
        fields.append(b"H" + cstr(hint))
    return message(b"E", b"".join(fields) + b"\0")


def parameter_status(name: str, value: str) -> bytes:
    return message(b"S", cstr(name) + cstr(value))


def backend_key(pid: int, secret: int) -> bytes:
    return message(b"K", _I32.pack(pid) + _I32.pack(secret))


def ready_for_query(status: bytes = b"I") -> bytes:
    return message(b"Z", status)


def negotiate_protocol_version(minor: int, unknown: list[str]) -> bytes:
    return message(b"v", _I32.pack(minor) + _I32.pack(len(unknown)) + b"".join(cstr(u) for u in unknown))


def password_message(data: bytes) -> bytes:
    return message(b"p", data)


def query_message(sql: str) -> bytes:
    return message(b"Q", cstr(sql))


def parse_message(name: str, sql: str, types: list[int] = ()) -> bytes:
    return message(b"P", cstr(name) + cstr(sql) + _I16.pack(len(types))
                   + b"".join(struct.pack("!I", t) for t in types))


def bind_message(portal: str, stmt: str, values: list[bytes | None], formats: list[int] = ()) -> bytes:
    body = cstr(portal) + cstr(stmt) + _I16.pack(len(formats)) + b"".join(_I16.pack(f) for f in formats)
    body += _I16.pack(len(values))
    for v in values:
        body += _I32.pack(-1) if v is None else _I32.pack(len(v)) + v
    return message(b"B", body + _I16.pack(0))


def execute_message(portal: str = "", max_rows: int = 0) -> bytes:
    return message(b"E", cstr(portal) + _I32.pack(max_rows))


def describe_message(kind: str, name: str) -> bytes:
    return message(b"D", kind.encode() + cstr(name))


SYNC = message(b"S")
TERMINATE = message(b"X")
