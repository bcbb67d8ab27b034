"""Logging into the database as the gateway: TLS as configured, then SCRAM-SHA-256, md5 or
(over TLS or loopback only) a clear-text password, with the gateway's own credential.

`connect()` returns once the database sent ReadyForQuery: the ParameterStatus messages and the
backend key are kept, so the front end can hand them to its client (the key mapped to one of
its own) and a CancelRequest can reach this backend later.
"""
from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from recorder.policy.connections import is_loopback_host
from recorder.protocols.postgres import protocol as pg
from recorder.protocols.postgres.auth import AuthFailed, ScramClient, md5_password

TLS_MODES = ("disable", "prefer", "require", "verify-full")


@dataclass(frozen=True)
class UpstreamSettings:
    host: str
    port: int
    user: str
    database: str | None = None  # None: the database the client asked for
    tls: str = "require"
    ca: Path | None = None  # verify-full: the CA bundle (default: the system's)
    client_cert: Path | None = None
    client_key: Path | None = None
    connect_timeout: float = 10.0


class UpstreamError(Exception):
    """The gateway could not log into the database. `sqlstate` and `message` go to the client
    (never a credential); `fields` are the database's own ErrorResponse, when it sent one."""

    def __init__(self, sqlstate: str, message: str, fields: dict | None = None):
        super().__init__(message)
        self.sqlstate, self.message, self.fields = sqlstate, message, fields or {}


@dataclass
class Upstream:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    params: dict[str, str] = field(default_factory=dict)  # ParameterStatus, in arrival order
    key: tuple[int, int] | None = None  # BackendKeyData (pid, secret)
    status: bytes = b"I"  # transaction status of the first ReadyForQuery
    tls: dict | None = None  # {"version", "cipher"} when TLS is up
    auth: str = "trust"  # how the gateway proved itself: scram-sha-256, scram-sha-256-plus, md5, password, certificate, trust


async def read_message(reader: asyncio.StreamReader, limit: int = 1 << 20) -> tuple[bytes, bytes]:
    head = await reader.readexactly(5)
    mtype, length = head[:1], int.from_bytes(head[1:5], "big", signed=True)
    if length < 4 or length - 4 > limit:
        raise pg.ProtocolError(f"message {mtype!r} with length {length}")
    return mtype, await reader.readexactly(length - 4)


def _tls_context(s: UpstreamSettings) -> ssl.SSLContext:
    if s.tls == "verify-full":
        ctx = ssl.create_default_context(cafile=str(s.ca) if s.ca else None)
    else:
        # prefer / require: encrypted, not verified (libpq's meaning); verify-full checks the server.
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if s.client_cert is not None:
        ctx.load_cert_chain(str(s.client_cert), str(s.client_key) if s.client_key else None)
    return ctx


def tls_info(writer: asyncio.StreamWriter) -> dict | None:
    sslobj = writer.get_extra_info("ssl_object")
    if sslobj is None:
        return None
    cipher = sslobj.cipher()
    return {"version": sslobj.version(), "cipher": cipher[0] if cipher else None}


async def connect(s: UpstreamSettings, password: str | None, startup: dict[str, str]) -> Upstream:
    """Open and log in. `startup` are the client's parameters to pass on (user and database are
    the gateway's). Raises UpstreamError with a message for the client."""
    where = f"{s.host}:{s.port}"
    try:
        if s.host.startswith("/"):  # a Unix socket directory, as in libpq
            opening = asyncio.open_unix_connection(f"{s.host}/.s.PGSQL.{s.port}")
        else:
            opening = asyncio.open_connection(s.host, s.port)
        reader, writer = await asyncio.wait_for(opening, s.connect_timeout)
    except (OSError, asyncio.TimeoutError) as e:
        raise UpstreamError("08001", f"the gateway cannot reach the database at {where}: "
                            f"{getattr(e, 'strerror', None) or type(e).__name__}") from None
    try:
        return await asyncio.wait_for(_login(s, reader, writer, password, startup), s.connect_timeout)
    except asyncio.TimeoutError:
        writer.close()
        raise UpstreamError("08001", f"the database at {where} did not complete the login within "
                            f"{s.connect_timeout:g} s") from None
    except (UpstreamError, AuthFailed, pg.ProtocolError, OSError, asyncio.IncompleteReadError, ssl.SSLError) as e:
        writer.close()
        if isinstance(e, UpstreamError):
            raise
        what = e.reason if isinstance(e, ssl.SSLError) and e.reason else str(e) or type(e).__name__
        raise UpstreamError("08001", f"the gateway could not log into the database at {where}: {what}") from None


async def _login(s, reader, writer, password, startup) -> Upstream:
    up = Upstream(reader, writer)
    if s.tls != "disable" and not s.host.startswith("/"):
        writer.write(pg.request_packet(pg.SSL_REQUEST))
        answer = await reader.readexactly(1)
        if answer == b"S":
            await writer.start_tls(_tls_context(s), server_hostname=s.host)
            up.tls = tls_info(writer)
        elif answer == b"N":
            if s.tls in ("require", "verify-full"):
                raise UpstreamError("08001", f"the database at {s.host}:{s.port} does not offer TLS and the "
                                    f"connection's upstream_tls is {s.tls!r}")
        else:
            raise UpstreamError("08P01", f"the database answered SSLRequest with {answer!r}")
    params = {k: v for k, v in startup.items() if k not in ("user", "database")}
    params = {"user": s.user, **({"database": s.database or startup.get("database") or s.user}), **params}
    writer.write(pg.startup_packet(params))
    scram: ScramClient | None = None
    cleartext_ok = up.tls is not None or is_loopback_host(s.host) or s.host.startswith("/")
    while True:
        mtype, body = await read_message(reader)
        if mtype == b"R":
            r = pg.Reader(body)
            code = r.int32()
            if code == pg.AUTH_OK:
                if up.auth == "trust" and s.client_cert is not None and up.tls is not None:
                    up.auth = "certificate"
                continue
            if password is None:
                raise UpstreamError("28000", "the database asks for a password and the connection has no "
                                    "credential (connections[].credential)")
            if code == pg.AUTH_CLEARTEXT:
                if not cleartext_ok:
                    raise UpstreamError("28000", "the database asks for a clear-text password over an unencrypted "
                                        "connection; the gateway will not send it (set upstream_tls = \"require\")")
                writer.write(pg.password_message(pg.cstr(password)))
                up.auth = "password"
            elif code == pg.AUTH_MD5:
                writer.write(pg.password_message(md5_password(s.user, password, r.bytes(4))))
                up.auth = "md5"
            elif code == pg.AUTH_SASL:
                mechanisms = []
                while True:
                    m = r.cstr()
                    if not m:
                        break
                    mechanisms.append(m)
                sslobj = writer.get_extra_info("ssl_object")
                cert = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
                scram = ScramClient(password, mechanisms, cert)
                first = scram.first()
                writer.write(pg.password_message(pg.cstr(scram.mechanism) + len(first).to_bytes(4, "big") + first))
                up.auth = scram.mechanism.lower()
            elif code == pg.AUTH_SASL_CONTINUE and scram is not None:
                writer.write(pg.password_message(scram.final(r.rest())))
            elif code == pg.AUTH_SASL_FINAL and scram is not None:
                scram.verify(r.rest())
            else:
                raise UpstreamError("28000", f"the database asks for an authentication method the gateway does "
                                    f"not speak (code {code}); use scram-sha-256, md5 or a client certificate")
        elif mtype == b"E":
            fields = pg.parse_fields(body)
            raise UpstreamError(fields.get("C", "08004"), fields.get("M", "the database refused the login"), fields)
        elif mtype == b"S":
            name, value = pg.parse_parameter_status(body)
            up.params[name] = value
        elif mtype == b"K":
            up.key = pg.parse_backend_key(body)
        elif mtype == b"Z":
            up.status = body[:1] or b"I"
            return up
        elif mtype in (b"N", b"v"):
            continue  # a notice, or NegotiateProtocolVersion (we ask for 3.0: not expected)
        else:
            raise UpstreamError("08P01", f"unexpected message {mtype!r} from the database during login")


async def send_cancel(s: UpstreamSettings, pid: int, secret: int) -> None:
    """Forward a CancelRequest to the database (over TLS when the connection uses it)."""
    reader, writer = await asyncio.wait_for(asyncio.open_connection(s.host, s.port), s.connect_timeout)
    try:
        if s.tls != "disable":
            writer.write(pg.request_packet(pg.SSL_REQUEST))
            answer = await reader.readexactly(1)
            if answer == b"S":
                await writer.start_tls(_tls_context(s), server_hostname=s.host)
            elif s.tls in ("require", "verify-full"):
                raise UpstreamError("08001", "the database does not offer TLS for the cancel request")
        writer.write(pg.request_packet(pg.CANCEL_REQUEST, pid, secret))
        await writer.drain()
        await asyncio.wait_for(reader.read(1), s.connect_timeout)  # the server closes when done
    finally:
        writer.close()
