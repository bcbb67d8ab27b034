"""Database connections: starts a PostgreSQL front end (recorder/protocols/postgres/frontend.py) for each
`[[connections]]` entry of kind "postgres", and stops it with the gateway.

The front end answers database clients itself, because a relay cannot: mitmproxy cannot answer
PostgreSQL's SSLRequest, and with SCRAM a client would have to prove the database's real
password. It shares the gateway's parts: the config, the identity verifier (a token is checked
exactly as for HTTP), the masker, capture's sessions, writer and fail-closed write (so database
records go into the identity's session file, on the same chain and ledger), and the
credentials addon's copy of the database password, which the client never sees.

Clients get TLS with a certificate issued by the gateway's mitmproxy CA for the listen address
(and localhost and this host's name), unless the connection names its own tls_cert/tls_key.
"""
from __future__ import annotations

import ipaddress
import logging
import os
import socket
import ssl
import tempfile

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from mitmproxy import ctx

from addons.capture import Capture
from addons.config import WiretrailConfig
from addons.credentials import Credentials
from addons.identity import Identity
from addons.masking import Masking
from recorder.auth.identity import ANONYMOUS
from recorder.config import ConnectionConfig, split_host_port
from recorder.protocols.postgres.frontend import Frontend, FrontendSettings, Hooks
from recorder.protocols.postgres.upstream import UpstreamSettings

log = logging.getLogger("wiretrail")


class Postgres:
    def __init__(self, config: WiretrailConfig, identity: Identity, masking: Masking, credentials: Credentials,
                 capture: Capture):
        self.config_addon = config
        self.identity = identity
        self.masking = masking
        self.credentials = credentials
        self.capture = capture
        self.frontends: list[Frontend] = []

    def running(self):
        cfg = self.config_addon.current
        if cfg is None or self.frontends or self.capture.registry is None:
            return
        databases = [c for c in cfg.connections if c.kind == "postgres"]
        for conn in databases:
            fe = Frontend(settings(conn, cfg.capture.max_body), self._hooks(conn), *self._tls(conn))
            try:
                fe.listen()
            except OSError as e:
                for started in self.frontends:
                    started.stop()
                raise RuntimeError(f"connection {conn.name!r}: cannot listen on {conn.listen}: "
                                   f"{e.strerror or e}") from None
            self.frontends.append(fe)
        for fe in self.frontends:
            fe.start()
            host, port = fe.address
            log.info(f"wiretrail: database connection {fe.s.name!r} listening on {host}:{port} "
                     f"-> {fe.s.upstream.host}:{fe.s.upstream.port} as {fe.s.upstream.user}")
        if self.frontends:
            self.capture.before_stop.append(self.stop)

    def done(self):
        self.stop()

    def stop(self) -> None:
        for fe in self.frontends:
            if not fe.stopping:
                fe.stop("shutdown")

    def _hooks(self, conn: ConnectionConfig) -> Hooks:
        cfg = self.config_addon.current
        capture = self.capture
        return Hooks(
            authenticate=self.identity.authenticate if self.identity.verifier is not None else None,
            anonymous=ANONYMOUS,
            masker=lambda: self.masking.masker,
            session_for=capture.session_for,
            end_flow=lambda session: capture.registry.end_flow(session),
            write_and_wait=capture.write_and_wait,
            mark_failed=lambda session, err: capture.registry.mark_failed(session, err),
            password=lambda: self.credentials.values.get(conn.name),
            fail_closed=cfg.storage.fail_closed,
            identity_mode=cfg.identity.mode,
            leeway=cfg.identity.leeway,
        )

    def _tls(self, conn: ConnectionConfig) -> tuple[ssl.SSLContext, ssl.SSLContext]:
        contexts = []
        for alpn in (None, "postgresql"):  # SSLRequest; a direct TLS handshake names "postgresql"
            c = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            c.minimum_version = ssl.TLSVersion.TLSv1_2
            if alpn:
                c.set_alpn_protocols([alpn])
            if conn.tls_cert is not None:
                c.load_cert_chain(str(conn.tls_cert), str(conn.tls_key))
            else:
                _load_issued(c, split_host_port(conn.listen)[0])
            contexts.append(c)
        return contexts[0], contexts[1]


def settings(conn: ConnectionConfig, max_body: int = 0) -> FrontendSettings:
    host, port = split_host_port(conn.listen)
    up_host, up_port = split_host_port(conn.upstream, 5432)
    return FrontendSettings(
        name=conn.name, host=host, port=port,
        upstream=UpstreamSettings(host=up_host, port=up_port, user=conn.user, database=conn.database,
                                  tls=conn.upstream_tls, ca=conn.upstream_ca, client_cert=conn.client_cert,
                                  client_key=conn.client_key),
        allow_groups=conn.allow_groups, allow_plaintext=conn.allow_plaintext, database=conn.database,
        sample_rows=conn.sample_rows, max_value=max_body,
    )


def _load_issued(context: ssl.SSLContext, listen_host: str) -> None:
    """A certificate from the gateway's mitmproxy CA for the listen address, localhost and this
    host's name. ssl only loads from files: the key is written to a private temporary file,
    loaded, and removed at once."""
    names = {"localhost", socket.gethostname()}
    if listen_host not in ("0.0.0.0", "::", ""):
        names.add(listen_host)
    sans: list[x509.GeneralName] = [x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                    x509.IPAddress(ipaddress.ip_address("::1"))]
    for name in sorted(names):
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            if name.isascii() and name.replace("-", "").replace(".", "").isalnum():
                sans.append(x509.DNSName(name))  # a host name a certificate can carry
    cn = listen_host if listen_host not in ("0.0.0.0", "::", "") else socket.gethostname()
    entry = ctx.master.addons.get("tlsconfig").certstore.get_cert(cn, sans)
    pem = entry.cert.to_pem() + entry.privatekey.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    fd, path = tempfile.mkstemp(prefix="wiretrail-pg-", suffix=".pem")
    try:
        os.write(fd, pem)
        os.close(fd)
        context.load_cert_chain(path)
    finally:
        os.unlink(path)
