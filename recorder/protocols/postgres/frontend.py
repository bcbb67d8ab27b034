"""The PostgreSQL front end: the gateway answers database clients itself.

One `Frontend` per `[[connections]]` entry of kind "postgres". For each client it:

1. takes TLS: it answers SSLRequest with "S", or accepts a TLS handshake straight away
   (`sslnegotiation=direct`); plain text only where the connection allows it on loopback;
2. reads the startup packet and asks for a password, only once TLS is up: the password is the
   caller's identity token, checked exactly as for HTTP; a refusal is a FATAL ErrorResponse
   (SQLSTATE 28000 or 28P01, with what to do) and a `pg.refused` record, and nothing reaches
   the database;
3. logs into the database with the gateway's own credential (recorder/protocols/postgres/upstream.py),
   records `pg.connect`, and hands the client the server's parameters and a backend key of
   its own, mapped to the real one so that a CancelRequest reaches the right backend;
4. relays: each client message that runs something is recorded (and the record written)
   before its bytes go on; the answers stream back to the client as they arrive and are
   followed to record one `pg.result` per statement (recorder/protocols/postgres/records.py).

It never imports mitmproxy: addons/postgres.py gives it the gateway's parts through `Hooks`.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import ssl
import time
import uuid
from dataclasses import dataclass
from typing import Awaitable, Callable

from recorder.auth.identity import IdentityError, VerifiedIdentity
from recorder.policy.connections import is_loopback_host
from recorder.protocols.postgres import protocol as pg
from recorder.protocols.postgres.records import CLIENT_KEEP, SERVER_KEEP, Tracker
from recorder.protocols.postgres.upstream import (
    Upstream,
    UpstreamError,
    UpstreamSettings,
    connect,
    send_cancel,
    tls_info,
)
from recorder.store.records import PG_CANCEL, PG_CONNECT, PG_END, PG_ERROR, PG_REFUSED

log = logging.getLogger("wiretrail")

STARTUP_TIMEOUT = 30.0  # seconds a client has to get through TLS, startup and the password
READ_SIZE = 1 << 16
HIGH_WATER = 1 << 20  # bytes queued to a slow client before the database side waits for it

# SQLSTATEs the gateway answers with
INVALID_AUTHORIZATION = "28000"
INVALID_PASSWORD = "28P01"
CANNOT_CONNECT_NOW = "57P03"
REJECTED_CONNECTION = "08004"
PROTOCOL_VIOLATION = "08P01"
NOT_RECORDED = "58030"  # io_error: the statement could not be recorded, so it was not sent
ADMIN_SHUTDOWN = "57P01"

TOKEN_HINT = ("Connect with your wiretrail identity token as the password, over TLS: "
              "PGPASSWORD=$WIRETRAIL_TOKEN psql \"host=... port=... dbname=... user=... sslmode=require\" "
              "(mint a development token with `wiretrail token`).")


@dataclass(frozen=True)
class FrontendSettings:
    name: str  # the connection's name
    host: str  # where to listen
    port: int
    upstream: UpstreamSettings
    allow_groups: tuple[str, ...] = ()
    allow_plaintext: bool = False  # clients without TLS, on a loopback listen address only
    database: str | None = None  # when set, the one database clients may ask for
    sample_rows: int = 0
    max_value: int = 0  # characters kept of SQL text and of each parameter; 0 = no limit


@dataclass
class Hooks:
    """What the front end needs from the gateway."""

    authenticate: Callable[[str | None], Awaitable[VerifiedIdentity]] | None  # None: identity.mode "none"
    anonymous: VerifiedIdentity
    masker: Callable[[], object]  # the current Masker (or None)
    session_for: Callable[[VerifiedIdentity | None, tuple[str, int]], object]  # opens or reuses; counts a flow
    end_flow: Callable[[object], None]
    write_and_wait: Callable[[object, str, dict], Awaitable[BaseException | None]]
    mark_failed: Callable[[object, BaseException], None]
    password: Callable[[], str | None]  # the gateway's database credential, read now
    fail_closed: bool = True
    identity_mode: str = "jwt"
    leeway: float = 30.0  # identity.leeway: a connection ends once its token expired this long ago


class LoginRefused(Exception):
    def __init__(self, reason: str, sqlstate: str, message: str, identity: VerifiedIdentity | None = None):
        super().__init__(message)
        self.reason, self.sqlstate, self.message, self.identity = reason, sqlstate, message, identity


class Frontend:
    def __init__(self, settings: FrontendSettings, hooks: Hooks, tls: ssl.SSLContext, direct_tls: ssl.SSLContext):
        self.s = settings
        self.hooks = hooks
        self.tls = tls  # for SSLRequest
        self.direct_tls = direct_tls  # for a TLS handshake straight away (ALPN "postgresql")
        self.sock: socket.socket | None = None
        self._accept_task: asyncio.Task | None = None
        self.connections: dict[str, "ClientConnection"] = {}
        self.by_key: dict[tuple[int, int], "ClientConnection"] = {}
        self._tasks: set[asyncio.Task] = set()
        self.stopping = False

    # -- lifecycle ----------------------------------------------------------------------

    def listen(self) -> None:
        """Bind now (so a taken port stops start-up with a clear error); accept from `start`."""
        family = socket.AF_INET6 if ":" in self.s.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.s.host, self.s.port))
        except OSError:
            sock.close()
            raise
        sock.listen(512)
        sock.setblocking(False)
        self.sock = sock

    def start(self) -> None:
        if self.sock is None:
            self.listen()
        self._accept_task = asyncio.ensure_future(self._accept_loop())

    @property
    def address(self) -> tuple[str, int]:
        return self.sock.getsockname()[:2]

    def stop(self, reason: str = "shutdown") -> None:
        """Stop listening and end every connection now, recording why (synchronous: the records
        are queued before the gateway closes its sessions)."""
        self.stopping = True
        if self._accept_task is not None:
            self._accept_task.cancel()
        if self.sock is not None:
            self.sock.close()
        for c in list(self.connections.values()):
            c.finish(reason, "the gateway shut down", notify=(ADMIN_SHUTDOWN, "wiretrail: the gateway is shutting down"))
        for t in list(self._tasks):
            t.cancel()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.stopping:
            try:
                client, addr = await loop.sock_accept(self.sock)
            except asyncio.CancelledError:
                return
            except OSError as e:
                log.warning(f"wiretrail: {self.s.name}: accept failed: {e}")
                await asyncio.sleep(0.1)
                continue
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.ensure_future(self._serve(client, addr))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    # -- one client ---------------------------------------------------------------------

    async def _serve(self, sock: socket.socket, addr) -> None:
        peer = (addr[0], addr[1])
        conn = ClientConnection(self, peer)
        try:
            await conn.run(sock)
        except asyncio.CancelledError:
            conn.finish("shutdown", "the gateway shut down")
        except Exception as e:  # never let one connection take the front end down
            log.exception(f"wiretrail: {self.s.name}: connection from {peer[0]}:{peer[1]} failed")
            conn.finish("gateway_error", f"{type(e).__name__}", notify=(PROTOCOL_VIOLATION, "wiretrail: internal error"))
        finally:
            conn.close()

    async def cancel(self, pid: int, secret: int, peer) -> None:
        target = self.by_key.get((pid, secret))
        if target is None or target.upstream is None or target.upstream.key is None:
            return  # like the server: an unknown key gets no answer
        forwarded, error = True, None
        try:
            await send_cancel(self.s.upstream, *target.upstream.key)
        except (OSError, asyncio.TimeoutError, UpstreamError, ssl.SSLError, asyncio.IncompleteReadError) as e:
            forwarded, error = False, str(e) or type(e).__name__
        fields = {"conn": target.id, "forwarded": forwarded, "from": {"ip": peer[0], "port": peer[1]}}
        if error:
            fields["error"] = error
        target.record(PG_CANCEL, fields)


async def _peek(sock: socket.socket, timeout: float) -> bytes:
    """The first byte the client sent, left in the socket."""
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.add_reader(sock.fileno(), lambda: fut.done() or fut.set_result(None))
    try:
        await asyncio.wait_for(fut, timeout)
    finally:
        loop.remove_reader(sock.fileno())
    return sock.recv(1, socket.MSG_PEEK)


async def _read(reader: asyncio.StreamReader) -> bytes:
    """The next bytes, or b"" once the peer is gone (closed, reset, or a TLS error)."""
    try:
        return await reader.read(READ_SIZE)
    except (ConnectionError, OSError, ssl.SSLError):
        return b""


async def _streams(sock: socket.socket, ctx: ssl.SSLContext | None):
    """Reader and writer for an accepted socket, server side (so start_tls upgrades as a server)."""
    loop = asyncio.get_running_loop()
    got = loop.create_future()
    reader = asyncio.StreamReader(limit=1 << 20)
    protocol = asyncio.StreamReaderProtocol(reader, lambda r, w: got.done() or got.set_result(w))
    kw = {"ssl": ctx, "ssl_handshake_timeout": STARTUP_TIMEOUT} if ctx is not None else {}
    await loop.connect_accepted_socket(lambda: protocol, sock, **kw)
    writer = await got
    return reader, writer


class ClientConnection:
    def __init__(self, fe: Frontend, peer: tuple[str, int]):
        self.fe = fe
        self.s = fe.s
        self.hooks = fe.hooks
        self.peer = peer
        self.id = str(uuid.uuid4())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.upstream: Upstream | None = None
        self.session = None
        self.tracker: Tracker | None = None
        self.key: tuple[int, int] | None = None
        self.tls: dict | None = None
        self.params: dict[str, str] = {}
        self.opened = time.time()
        self.ended = False
        self.bytes = {"client": 0, "server": 0}
        self.sock: socket.socket | None = None
        self.expires: float | None = None  # when the token the connection was opened with stops being good

    # -- records ----------------------------------------------------------------------

    def record(self, rtype: str, fields: dict) -> None:
        if self.session is not None and not self.session.closed:
            self.session.record(rtype, fields)

    def finish(self, reason: str, message: str | None = None, *, notify: tuple[str, str] | None = None) -> None:
        """End the connection once: tell the client why (when it is still there), record pg.end,
        close both sides."""
        if self.ended:
            return
        self.ended = True
        if notify is not None and self.writer is not None and not self.writer.is_closing():
            try:
                self.writer.write(pg.error_response(notify[0], notify[1]))
            except Exception:
                pass
        if self.session is not None:
            fields = {"conn": self.id, "reason": reason,
                      "duration_s": round(time.time() - self.opened, 3),
                      "bytes": dict(self.bytes)}
            if self.tracker is not None:
                fields["statements"] = self.tracker.statements_run
            if message:
                masker = self.hooks.masker()
                fields["message"] = masker.mask_text(message) if masker is not None else message
            self.record(PG_END, fields)
            self.hooks.end_flow(self.session)
        self.close()

    def close(self) -> None:
        self.fe.connections.pop(self.id, None)
        if self.key is not None:
            self.fe.by_key.pop(self.key, None)
        for w in (self.writer, self.upstream.writer if self.upstream else None):
            if w is not None and not w.is_closing():
                try:
                    w.close()  # after what is queued (a Terminate, a FATAL) is sent
                except Exception:
                    pass
        if self.writer is None and self.sock is not None:
            self.sock.close()

    async def _send_fatal(self, sqlstate: str, message: str, hint: str | None = None) -> None:
        try:
            self.writer.write(pg.error_response(sqlstate, message, hint=hint))
            await asyncio.wait_for(self.writer.drain(), 5)
        except (OSError, asyncio.TimeoutError, ConnectionError):
            pass

    def _refusal(self, r: LoginRefused) -> None:
        """Every refused attempt is recorded, in the caller's session when it was verified."""
        session = self.hooks.session_for(r.identity, self.peer)
        fields = {"conn": self.id, "connection": self.s.name, "reason": r.reason, "sqlstate": r.sqlstate,
                  "message": r.message, "tls": self.tls,
                  "client": {k: self.params[k] for k in ("user", "database", "application_name") if k in self.params}}
        session.record(PG_REFUSED, fields)
        self.hooks.end_flow(session)

    # -- the connection ---------------------------------------------------------------

    async def run(self, sock: socket.socket) -> None:
        self.sock = sock
        try:
            startup = await asyncio.wait_for(self._startup(sock), STARTUP_TIMEOUT)
        except LoginRefused as r:
            self._refusal(r)
            if self.writer is not None:
                await self._send_fatal(r.sqlstate, "wiretrail: " + r.message,
                                       TOKEN_HINT if r.sqlstate in (INVALID_PASSWORD, INVALID_AUTHORIZATION)
                                       and r.reason not in ("forbidden", "database") else None)
            self.ended = True
            return
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError, OSError, ssl.SSLError,
                pg.ProtocolError):
            self.ended = True
            return  # gone, silent or not speaking the protocol before anything was asked of the database
        if startup is None:
            self.ended = True
            return  # a CancelRequest, handled
        identity = startup
        if identity.expires is not None:
            self.expires = identity.expires + self.hooks.leeway
        self.session = self.hooks.session_for(identity, self.peer)
        self.fe.connections[self.id] = self
        if self.fe.stopping:
            self.finish("shutdown", notify=(ADMIN_SHUTDOWN, "wiretrail: the gateway is shutting down"))
            return
        try:
            self.upstream = await connect(self.s.upstream, self.hooks.password(), self.params)
        except UpstreamError as e:
            masker = self.hooks.masker()
            text = masker.mask_text(e.message) if masker is not None else e.message
            self.record(PG_ERROR, {"conn": self.id, "phase": "connect", "sqlstate": e.sqlstate, "message": text})
            client_text = (f"wiretrail: the database refused the gateway's own login ({e.sqlstate}: {text}); "
                           "the gateway operator must fix the connection's user or credential"
                           if e.sqlstate.startswith("28") else f"wiretrail: {text}")
            await self._send_fatal(REJECTED_CONNECTION if e.sqlstate.startswith("28") else e.sqlstate, client_text)
            self.finish("connect_failed", text)
            return
        if self.ended:  # shut down while logging in
            return
        self.tracker = Tracker(self.id, self.record, self.hooks.masker, sample_rows=self.s.sample_rows,
                               max_value=self.s.max_value)
        up = self.upstream
        masker = self.hooks.masker()
        params = {k: masker.mask_text(v) if masker is not None and v else v for k, v in self.params.items()}
        fields = {
            "conn": self.id, "connection": self.s.name,
            "client": {"ip": self.peer[0], "port": self.peer[1], "tls": self.tls, "params": params},
            "upstream": {"host": self.s.upstream.host, "port": self.s.upstream.port, "user": self.s.upstream.user,
                         "database": self.s.upstream.database or self.params.get("database") or self.s.upstream.user,
                         "tls": up.tls, "auth": up.auth, "backend_pid": up.key[0] if up.key else None},
            "server_version": up.params.get("server_version"),
        }
        if not await self._write((PG_CONNECT, fields)):
            return
        self.key = self._new_key()
        out = [pg.auth_request(pg.AUTH_OK)]
        out += [pg.parameter_status(k, v) for k, v in up.params.items()]
        out.append(pg.backend_key(*self.key))
        out.append(pg.ready_for_query(up.status))
        self.writer.write(b"".join(out))
        await self._relay()

    def _new_key(self) -> tuple[int, int]:
        while True:
            key = (secrets.randbelow(2**31 - 1) + 1, secrets.randbits(31))
            if key not in self.fe.by_key:
                self.fe.by_key[key] = self
                return key

    async def _startup(self, sock: socket.socket) -> VerifiedIdentity | None:
        first = await _peek(sock, STARTUP_TIMEOUT)
        if not first:
            raise ConnectionError("closed")
        if first[0] == pg.TLS_HANDSHAKE:
            self.reader, self.writer = await _streams(sock, self.fe.direct_tls)
            self.tls = dict(tls_info(self.writer) or {}, direct=True)
        else:
            self.reader, self.writer = await _streams(sock, None)
        self.sock = None  # owned by the transport now
        while True:
            head = await self.reader.readexactly(4)
            length = int.from_bytes(head, "big", signed=True)
            if length < 8 or length > pg.MAX_STARTUP:
                raise pg.ProtocolError(f"startup packet of length {length}")
            body = await self.reader.readexactly(length - 4)
            code = int.from_bytes(body[:4], "big", signed=True)
            if code == pg.SSL_REQUEST and self.tls is None:
                if self.reader._buffer:  # noqa: SLF001 - bytes sent before TLS would be read as if inside it
                    raise pg.ProtocolError("data after SSLRequest before the TLS handshake")
                self.writer.write(b"S")
                await self.writer.drain()
                await self.writer.start_tls(self.fe.tls, ssl_handshake_timeout=STARTUP_TIMEOUT)
                self.tls = dict(tls_info(self.writer) or {}, direct=False)
                continue
            if code == pg.GSSENC_REQUEST:
                self.writer.write(b"N")
                continue
            if code == pg.CANCEL_REQUEST:
                pid, secret = pg.parse_cancel(body)
                await self.fe.cancel(pid, secret, self.peer)
                return None
            if code >> 16 != 3:
                raise pg.ProtocolError(f"unsupported protocol {code >> 16}.{code & 0xFFFF}")
            code, self.params = pg.parse_startup(body)
            break
        # Protocol 3.x with x > 0, or _pq_ options: say we speak 3.0 (as the server does).
        extensions = [k for k in self.params if k.startswith("_pq_.")]
        for k in extensions:
            del self.params[k]
        if code & 0xFFFF or extensions:
            self.writer.write(pg.negotiate_protocol_version(0, extensions))
        if self.tls is None and not (self.s.allow_plaintext and is_loopback_host(self.peer[0])):
            raise LoginRefused("tls_required", INVALID_AUTHORIZATION,
                          "this gateway accepts database connections only over TLS; connect with sslmode=require "
                          "(or sslmode=verify-full with the gateway's CA as sslrootcert)")
        if "replication" in self.params and self.params["replication"].lower() not in ("false", "off", "no", "0"):
            raise LoginRefused("replication", INVALID_AUTHORIZATION,
                          "replication connections are not supported through the gateway")
        if self.s.database is not None and self.params.get("database", self.params.get("user")) != self.s.database:
            raise LoginRefused("database", INVALID_AUTHORIZATION,
                          f"the connection {self.s.name!r} serves the database {self.s.database!r}; "
                          f"connect with dbname={self.s.database}")
        identity = await self._authenticate()
        if self.s.allow_groups and not set(identity.groups) & set(self.s.allow_groups):
            raise LoginRefused("forbidden", INVALID_AUTHORIZATION,
                          f"{identity.sub} is not in a group allowed to use the database connection {self.s.name!r} "
                          f"(it needs one of: {', '.join(self.s.allow_groups)})", identity)
        return identity

    async def _authenticate(self) -> VerifiedIdentity:
        if self.hooks.authenticate is None:
            return self.hooks.anonymous
        self.writer.write(pg.auth_request(pg.AUTH_CLEARTEXT))
        await self.writer.drain()
        try:
            head = await self.reader.readexactly(5)
        except (asyncio.IncompleteReadError, ConnectionError):
            # libpq hangs up here when it has no password to send.
            raise LoginRefused("missing", INVALID_AUTHORIZATION,
                          "no identity token: the client closed the connection when asked for a password") from None
        length = int.from_bytes(head[1:], "big", signed=True)
        if head[:1] != b"p" or length < 4 or length > 65536:
            raise pg.ProtocolError("expected a password message")
        body = await self.reader.readexactly(length - 4)
        token = body.rstrip(b"\0").decode("utf-8", "replace").strip()
        try:
            return await self.hooks.authenticate(token or None)
        except IdentityError as e:
            if e.reason == "idp_unreachable":
                raise LoginRefused(e.reason, CANNOT_CONNECT_NOW, e.message) from None
            if e.reason == "missing":
                raise LoginRefused(e.reason, INVALID_AUTHORIZATION, "no identity token was sent as the password") from None
            raise LoginRefused(e.reason, INVALID_PASSWORD, e.message) from None

    async def _write(self, *records: tuple[str, dict]) -> bool:
        """Write records, the last one waited for. False: not recorded, and the connection is
        ended fail-closed (the client got an ErrorResponse, the database nothing more)."""
        for rtype, fields in records[:-1]:
            self.session.record(rtype, fields)
        err = await self.hooks.write_and_wait(self.session, *records[-1])
        if err is None:
            return True
        if not self.hooks.fail_closed:
            log.warning(f"wiretrail: UNRECORDED database traffic on {self.s.name} from {self.peer[0]}: {err}")
            return True
        late = getattr(err, "cause", None) == "storage not responding"
        if not late:
            self.hooks.mark_failed(self.session, err)
        if not self.ended:
            self.ended = True
            try:
                self.writer.write(pg.error_response(
                    NOT_RECORDED, "wiretrail: could not record this statement, so it was not sent to the database; "
                    "the connection is closed. The gateway operator has been told; retry later."))
            except Exception:
                pass
            if late:
                self.record(PG_END, {"conn": self.id, "reason": "storage",
                                       "message": "not forwarded: the record was not written in time"})
            self.hooks.end_flow(self.session)
            self.close()
        return False

    async def _relay(self) -> None:
        client_task = asyncio.ensure_future(self._client_to_server())
        server_task = asyncio.ensure_future(self._server_to_client())
        done, pending = await asyncio.wait({client_task, server_task}, return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for t in done:
            if t.exception() is not None and not isinstance(t.exception(), (ConnectionError, OSError)):
                raise t.exception()
        outcome = next(iter(done)).result() if all(t.exception() is None for t in done) else ("error", None, None)
        reason, message, notify = outcome
        self.finish(reason, message, notify=notify)

    async def _client_to_server(self):
        reader, up = self.reader, self.upstream.writer
        split = pg.Splitter(CLIENT_KEEP)
        tracker = self.tracker
        while True:
            data = await _read(reader)
            if not data:
                return ("client" if tracker.terminated else "client_gone", None, None)
            if self.expires is not None and time.time() > self.expires:
                # As for an HTTP tunnel that outlived its token: the client reconnects with a fresh one.
                return ("token_expired", "the identity token expired; nothing more was forwarded",
                        (INVALID_PASSWORD, "wiretrail: the identity token this connection was opened with has "
                         "expired, so this was not sent to the database; reconnect with a new token"))
            self.bytes["client"] += len(data)
            try:
                records = tracker.client(split.feed(data))
            except pg.ProtocolError as e:
                return ("protocol_error", f"client: {e}", (PROTOCOL_VIOLATION, "wiretrail: invalid message"))
            if records and not await self._write(*records):
                return ("storage", "not recorded", None)
            if self.ended:
                return ("storage", None, None)
            up.write(data)
            tracker.started()
            if tracker.terminated:
                return ("client", None, None)
            if up.transport.get_write_buffer_size() > HIGH_WATER:
                await up.drain()

    async def _server_to_client(self):
        reader, client = self.upstream.reader, self.writer
        split = pg.Splitter(SERVER_KEEP | ({b"D"} if self.s.sample_rows else frozenset()))
        tracker = self.tracker
        while True:
            data = await _read(reader)
            if not data:
                if tracker.terminated:
                    return ("client", None, None)
                return ("server_closed", "the database closed the connection",
                        (ADMIN_SHUTDOWN, "wiretrail: the database closed the connection"))
            self.bytes["server"] += len(data)
            client.write(data)  # forwarded at once: rows stream, they are never held for the record
            try:
                tracker.server(split.feed(data))
            except pg.ProtocolError as e:
                return ("protocol_error", f"server: {e}", (PROTOCOL_VIOLATION, "wiretrail: invalid message from the database"))
            if client.transport.get_write_buffer_size() > HIGH_WATER:
                await client.drain()  # a slow client slows the database's side, never the gateway's memory
