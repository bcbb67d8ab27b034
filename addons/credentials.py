"""Credential swap: the agent never holds the upstream secret.

Everywhere, the identity token never goes upstream: Proxy-Authorization, and every header and
query parameter that carries the token (in whichever credential header, or several), are
removed. For a connection that injects a credential, every credential the client sent is
stripped too: each header of recorder.auth.credentials.CREDENTIAL_HEADERS, credential-like
query parameters in any case or percent-encoding (`?%6bey=`), and cookies (unless the
connection sets `strip_cookies = false`); then the connection's own is injected. Where nothing
is injected (credential "none", or an unregistered host under policy "record"), the client's
own API key passes, recorded masked. Credentials are read at start and again on SIGHUP;
capture records an injected header as `[credential:<name>]`, never its value.
"""
from __future__ import annotations

import asyncio
import logging
import signal

from mitmproxy import http

from addons.config import WiretrailConfig
from addons.identity import Identity
from addons.policy import connection_of
from addons.flow_state import is_refused, set_injected, token_header
from addons.refusal import refuse
from recorder.auth.credentials import (
    CREDENTIAL_HEADERS,
    INJECT_HEADER,
    field_carries_token,
    strip_query,
    GATEWAY_HEADERS,
    IDENTITY_HEADER,
)
from recorder.config import ConfigError
from recorder.policy.connections import is_loopback_host

log = logging.getLogger("wiretrail")


_CREDENTIAL_FIELDS = frozenset(name.encode() for name in CREDENTIAL_HEADERS + GATEWAY_HEADERS)
_CREDENTIAL_AND_COOKIE_FIELDS = _CREDENTIAL_FIELDS | {b"cookie"}


class Credentials:
    def __init__(self, config: WiretrailConfig, identity: Identity | None = None):
        self.config_addon = config
        self.identity = identity  # knows each flow's identity token, to remove every copy of it
        self.values: dict[str, str] = {}  # connection name -> credential
        self.on_reload = None  # called after a SIGHUP re-read (the masker learns new secrets)
        self._warned_no_key: set[str] = set()  # connections already warned about (below)

    def running(self):
        if self.config_addon.current is None:
            return
        self.reload()
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self._sighup)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread, or no SIGHUP
            log.info("wiretrail: SIGHUP is not available here; restart the gateway to re-read credentials")

    def _sighup(self):
        log.info("wiretrail: SIGHUP: re-reading upstream credentials")
        self.config_addon.reread()
        self.reload()
        if self.on_reload is not None:
            self.on_reload()

    def reload(self) -> None:
        """Read every connection's credential. One that cannot be read keeps its last good value."""
        values = dict(self.values)
        for conn in self.config_addon.current.connections:
            if conn.credential is None:
                continue
            try:
                value = conn.credential.read()
            except ConfigError as e:
                kept = "; keeping the previous value" if conn.name in values else "; its requests get 503"
                log.error(f"wiretrail: cannot read the credential of connection {conn.name!r}: {e}{kept}")
                continue
            if values.get(conn.name) not in (None, value):
                log.info(f"wiretrail: the credential of connection {conn.name!r} changed")
            values[conn.name] = value
        self.values = values

    def known_secrets(self) -> list[str]:
        """The gateway's own upstream credentials, for masking."""
        return [v for v in self.values.values() if v]

    def requestheaders(self, flow: http.HTTPFlow):
        req = flow.request
        token = self.identity.token_of(flow) if self.identity is not None else None
        conn = None if flow.response is not None or is_refused(flow) else connection_of(flow)
        injects = conn is not None and conn.credential is not None and conn.inject != "none"
        # Whatever happens, the identity token never goes upstream; where the gateway injects, no
        # credential of the client's either. One pass over the header fields for both.
        names = (_CREDENTIAL_AND_COOKIE_FIELDS if conn.strip_cookies else _CREDENTIAL_FIELDS) if injects \
            else _PROXY_AUTHORIZATION
        _drop_fields(req.headers, names, token.encode("utf-8", "surrogateescape") if token else None)
        if (token or injects) and "?" in req.path:
            stripped = strip_query(req.path, credentials=injects, keep=conn.keep_query if injects else frozenset(),
                                   token=token)
            if stripped is not None:
                req.path = stripped
        if not injects:
            where = token_header(flow)
            if conn is not None and where not in (None, IDENTITY_HEADER) and conn.name not in self._warned_no_key:
                self._warned_no_key.add(conn.name)
                log.warning(f"wiretrail: a client sent its identity token as its API key ({where}) to connection "
                            f"{conn.name!r}, which injects no credential: the upstream gets no API key and will "
                            f"refuse. Send the token in {IDENTITY_HEADER} and keep the API key (README), or give "
                            "the connection a credential")
            return
        secret = self.values.get(conn.name)
        if not secret:
            refuse(flow, 503, "no_credential",
                   f"the gateway has no readable credential for the connection {conn.name!r}; "
                   "the gateway operator must fix it (see the gateway's log)")
            return
        if req.scheme != "https" and not is_loopback_host(req.host):
            refuse(flow, 403, "cleartext",
                   f"the connection {conn.name!r} would send its credential over plain http to {req.host}; "
                   "use https")
            return
        header = INJECT_HEADER[conn.inject]
        value = f"Bearer {secret}" if conn.inject == "bearer" else secret
        # Appended to the raw fields: the header was stripped just above (Headers.__setitem__ scans again).
        req.headers.fields += ((header.encode(), value.encode("utf-8", "surrogateescape")),)
        set_injected(flow, header, conn.name)


# Never forwarded, whatever the connection: proxy credentials and the gateway's own headers.
_PROXY_AUTHORIZATION = frozenset({b"proxy-authorization", *(name.encode() for name in GATEWAY_HEADERS)})


def _drop_fields(headers: http.Headers, names: frozenset[bytes], token: bytes | None = None) -> None:
    """Remove every field with one of these lowercase names, and with `token` every field whose
    value carries it, in one pass over the raw fields (a Headers.pop per name scans them all
    each time, on every request)."""
    fields = headers.fields
    if token:
        kept = tuple(f for f in fields if f[0].lower() not in names and token not in f[1]
                     and (f[1][:6].lower() != b"basic " or not field_carries_token(f[1], token)))
    else:
        kept = tuple(f for f in fields if f[0].lower() not in names)
    if len(kept) != len(fields):
        headers.fields = kept

