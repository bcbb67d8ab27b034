"""Checks that span keys: each runs on a built section (or the whole file) and raises ConfigError
naming the key to fix. A key's own type, range and allowed values are its kind's (model.py)."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING

from recorder.config.schema import keys_of
from recorder.config.validators import ConfigError, split_host_port
from recorder.policy.connections import is_loopback_host

if TYPE_CHECKING:
    from recorder.config.model import AnchorsConfig, ConnectionConfig, IdentityConfig

_JWT_KEY_SOURCES = ("jwks_url", "jwks_file", "hs256_secret")


def identity(identity: IdentityConfig, at: str) -> None:
    if identity.mode != "jwt":
        return
    missing = [name for name in ("issuer", "audience") if getattr(identity, name) is None]
    given = [name for name in _JWT_KEY_SOURCES if getattr(identity, name) is not None]
    if not given:
        missing.append("one of " + " / ".join(_JWT_KEY_SOURCES))
    if missing:
        raise ConfigError(f'mode "jwt" is missing: {", ".join(missing)} (mode "none" is for local demos only)',
                          key=at)
    if len(given) > 1:
        raise ConfigError(f'mode "jwt" takes exactly one of {" / ".join(_JWT_KEY_SOURCES)}; '
                          f'got both {" and ".join(given)}', key=at)


def connections(connections: tuple[ConnectionConfig, ...], at: str) -> None:
    """Each kind's own keys; then the hosts of http connections."""
    listens: dict[tuple[str, int], int] = {}
    for i, conn in enumerate(connections):
        item = f"{at}[{i}]"
        if conn.kind == "http":
            if not conn.hosts:
                raise ConfigError('missing; expected a non-empty array of host names, e.g. ["api.openai.com"]',
                                  key=f"{item}.hosts")
            for key in keys_of(type(conn)):  # a key set away from its default
                if key.only_kind not in (None, conn.kind) and getattr(conn, key.name) != key.default:
                    raise ConfigError(f'only for kind = "{key.only_kind}" (this connection is kind "http")',
                                      key=f"{item}.{key.name}")
            continue
        for name in ("listen", "upstream", "user"):
            if getattr(conn, name) is None:
                raise ConfigError('missing; a connection of kind "postgres" needs listen, upstream and user',
                                  key=f"{item}.{name}")
        if conn.hosts or conn.ports:
            raise ConfigError('a connection of kind "postgres" is reached on its listen address, not by host; '
                              "leave hosts and ports out", key=f"{item}.{'hosts' if conn.hosts else 'ports'}")
        if conn.credential is None and conn.client_cert is None:
            raise ConfigError('a connection of kind "postgres" needs the gateway\'s database credential: '
                              'credential = "env:NAME" or "file:PATH", or client_cert (and client_key)',
                              key=f"{item}.credential")
        if conn.client_key is not None and conn.client_cert is None:
            raise ConfigError("client_key needs client_cert", key=f"{item}.client_key")
        if (conn.tls_cert is None) != (conn.tls_key is None):
            raise ConfigError("give both tls_cert and tls_key, or neither (the gateway then issues a certificate "
                              "from its mitmproxy CA)", key=f"{item}.{'tls_key' if conn.tls_key is None else 'tls_cert'}")
        host, port = split_host_port(conn.listen)
        if conn.allow_plaintext and not is_loopback_host(host):
            raise ConfigError(f"allow_plaintext is only allowed on a loopback listen address (127.0.0.1, ::1, "
                              f"localhost), not {host}: a token sent without TLS could be read on the network",
                              key=f"{item}.allow_plaintext")
        if (host, port) in listens:
            raise ConfigError(f"{conn.listen} is already the listen address of {at}[{listens[(host, port)]}]",
                              key=f"{item}.listen")
        listens[(host, port)] = i
    _connection_hosts(connections, at)


def _connection_hosts(connections: tuple[ConnectionConfig, ...], at: str) -> None:
    """The first matching connection wins, so a later entry for the same host and port would never
    be used (its credential and groups silently ignored)."""
    seen: dict[str, list[int]] = {}
    for i, conn in enumerate(connections):
        for j, host in enumerate(conn.hosts):
            for k in seen.get(host, []):
                earlier = connections[k].ports
                if k != i and (not earlier or not conn.ports or set(earlier) & set(conn.ports)):
                    raise ConfigError(
                        f'{json.dumps(host)} is already matched by {at}[{k}] ({json.dumps(connections[k].name)}) '
                        "on the same port; the first match wins, so this entry would never be used",
                        key=f"{at}[{i}].hosts[{j}]")
            seen.setdefault(host, []).append(i)


def anchors(anchors: AnchorsConfig, at: str) -> None:
    if anchors.http_token is not None:
        if anchors.http is None:
            raise ConfigError("is set, but there is no http sink to send it to", key=f"{at}.http_token")
        if not anchors.http.startswith("https://"):
            raise ConfigError("an http:// sink would carry the token in clear text; use https://",
                              key=f"{at}.http_token")
    if anchors.fail_closed and not (anchors.file or anchors.syslog or anchors.http):
        raise ConfigError("is true, but no sink is set (file, syslog or http)", key=f"{at}.fail_closed")


def gateway(values: dict, at: str) -> None:
    """An anchor kept in the store proves nothing: whoever rewrites the store rewrites it too."""
    file, store = values["anchors"].file, values["storage"].dir
    if file is not None and (file.absolute() == store.absolute() or store.absolute() in file.absolute().parents):
        raise ConfigError(f"{file} is inside storage.dir ({store}): whoever can roll the ledger back can "
                          "edit it too; put it on another mount, or use syslog or http", key="anchors.file")
