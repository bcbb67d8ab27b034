"""Policy: which registered connection a flow is for, and whether its caller may use it.

Policy goes by destination, not by spelling (docs/identity.md, "Policy by destination"). The
destination is the host the gateway connects to: the CONNECT target, the reverse-mode target
or the URL of a plain proxied request. It is matched by name (case, a trailing dot and the form
of an IP literal do not matter) and by the addresses it resolves to (recorder/policy/destinations.py);
an alias of a registered host is that connection under every policy. Each client connection's
destinations are checked once (recorder/policy/client_destinations.py) and the gateway connects
to the address it checked (`server_connect`), so a DNS answer that changes in between changes
nothing.

A registered connection may limit its callers to groups (403 otherwise). An unregistered host
follows `policy.unregistered`:
  deny    403, at the CONNECT already when there is one;
  record  intercepted and recorded, nothing injected;
  tunnel  TLS passes through uninspected and unrecorded; a `tunnel` record notes host and
          identity. Not when the TLS SNI names a registered host: that is intercepted.
A request whose Host, h2 :authority or TLS SNI names another host than its destination is
refused with 421 (`misdirected`), so an injected credential only goes to its registered host
with a Host that names it. A destination whose name does not resolve in time is refused (502,
`unresolved`; 403 under "deny").
"""
from __future__ import annotations

import asyncio
from typing import Callable

from mitmproxy import connection, http, tls
from mitmproxy.proxy import mode_specs, server_hooks

from addons.config import WiretrailConfig
from addons.identity import Identity, identity_of, is_reverse
from addons.flow_state import (  # noqa: F401 (connection_of: parts import it from here)
    connection_of,
    is_refused,
    mark_tunneled,
    noted_destination,
    set_connection,
    set_destination,
)
from addons.refusal import refuse
from recorder.policy.client_destinations import ClientDestinations
from recorder.policy.destinations import Destination, canonical_host, misdirected, split_host_port
from recorder.policy.raw_policy import UNCHECKED

TunnelNote = Callable[..., None]  # (client, host, port, identity, details: dict)


class Policy:
    def __init__(self, config: WiretrailConfig, identity: Identity, on_tunnel: TunnelNote | None = None):
        self.config_addon = config
        self.identity = identity  # identities per client connection, for tunnels
        self.on_tunnel = on_tunnel  # capture's tunnel record
        self.checked: ClientDestinations | None = None  # built with the first config
        self._refresh_task: asyncio.Task | None = None

    def _checked(self) -> ClientDestinations | None:
        cfg = self.config_addon.current
        if cfg is None:
            return None
        if self.checked is None:
            self.checked = ClientDestinations.from_config(cfg)
        return self.checked

    async def running(self):
        checked = self._checked()
        if checked is None or self._refresh_task is not None:
            return
        # Before the first flow (the start-up gate waits for this): aliases of the registered
        # hosts are known from the start.
        await checked.refresh(log_ok=True)
        self._refresh_task = asyncio.ensure_future(
            checked.refresh_every(self.config_addon.current.policy.resolve_interval))

    def done(self):
        if self._refresh_task is not None:
            self._refresh_task.cancel()

    # -- hooks ----------------------------------------------------------------------------------

    async def http_connect(self, flow: http.HTTPFlow):
        if flow.response is not None or self.config_addon.current is None:
            return
        req = flow.request
        dest = await self._checked().check(flow.client_conn, req.host, req.port)
        set_destination(flow, dest)
        if dest.connection is None:
            _refuse_unregistered(flow, dest, self.config_addon.current.policy.unregistered)

    def tls_clienthello(self, data: tls.ClientHelloData):
        cfg = self.config_addon.current
        if cfg is None:
            return
        client, server = data.context.client, data.context.server
        if isinstance(client.proxy_mode, mode_specs.ReverseMode) or server.address is None:
            return
        checked = self._checked()
        dest = checked.known(client, server.address[0], server.address[1])
        sni = data.client_hello.sni
        if sni and server.sni is None and canonical_host(sni) != sni:
            # What goes upstream is the name policy checked: lowercase, no trailing dot (RFC 6066),
            # an IP literal as its address (the upstream's certificate is then checked for it).
            server.sni = canonical_host(sni)
        elif dest is not None and not sni and server.sni is None:
            # Without an SNI, mitmproxy would send (and check the certificate for) the target as
            # spelled ("127.1"); the upstream's TLS is checked for the destination policy matched.
            server.sni = dest.host
        if cfg.policy.unregistered != "tunnel":
            return
        if dest is None or dest.connection is not None or dest.error is not None:
            return  # intercepted: its requests are checked
        if sni and checked.registry.named(sni, dest.port) is not None:
            return  # an unregistered destination with a registered host's SNI: intercepted, refused (421)
        data.ignore_connection = True
        if self.on_tunnel is not None:
            self.on_tunnel(client, dest.host, dest.port, self.identity.identity_of_client(client),
                           {"address": dest.pin, "sni": sni})

    async def server_connect(self, data: server_hooks.ServerConnectionHookData):
        """Connect to the address that was checked (the pin), never to a fresh DNS answer."""
        if self.config_addon.current is None:
            return
        client, server = data.client, data.server
        if isinstance(client.proxy_mode, mode_specs.ReverseMode) or server.address is None or server.via:
            return  # a reverse-mode target is the operator's; it is classified per request
        host, port = server.address[0], server.address[1]
        checked = self._checked()
        dest = await checked.check(client, host, port)
        if dest.error is not None and dest.connection is None:
            server.error = f"wiretrail: {dest.error}"
            return
        connect_to = dest.pin or dest.host  # a registered name, canonical ("localhost." -> "localhost")
        if connect_to != host:
            if server.sni is None and not dest.is_ip:
                server.sni = dest.host
            server.address = (connect_to, port)
            checked.connects_to(client, connect_to, port, dest)

    async def requestheaders(self, flow: http.HTTPFlow):
        if flow.response is not None or is_refused(flow):
            return
        cfg = self.config_addon.current
        if cfg is None:
            return
        req = flow.request
        reverse = is_reverse(flow)
        checked = self._checked()
        dest = await checked.check(flow.client_conn, req.host, req.port)
        set_destination(flow, dest)
        conn = dest.connection
        set_connection(flow, conn)
        if conn is None and (dest.error is not None or cfg.policy.unregistered == "deny"):
            _refuse_unregistered(flow, dest, cfg.policy.unregistered)
            return
        why = misdirected(dest, checked.registry, _names_used(flow, reverse))
        if why is not None:
            refuse(flow, 421, "misdirected", f"{why}; send the request to the host it names "
                   "(a CONNECT, a TLS server name and a Host header that agree)", close=True)
            return
        if conn is None:
            if cfg.policy.unregistered == "tunnel" and not reverse:
                mark_tunneled(flow)
            return
        ident = identity_of(flow)
        if conn.allow_groups and not set(ident.groups) & set(conn.allow_groups):
            refuse(flow, 403, "forbidden",
                   f"{ident.sub} is not in a group allowed to use the connection {conn.name!r} "
                   f"(it needs one of: {', '.join(conn.allow_groups)})")

    def connection_now(self, client: connection.Client, host: str, port: int):
        """The registered connection of a destination, without waiting (raw TCP's layer decision);
        UNCHECKED when only a DNS lookup could tell."""
        checked = self._checked()
        return UNCHECKED if checked is None else checked.connection_now(client, host, port)


# -- for the record and the other parts ---------------------------------------------------------


def destination_of(flow: http.HTTPFlow) -> dict | None:
    """The destination for the record: {"host", "port", "address"}. The address is the one the
    gateway pins the connection to, or that of the open upstream connection, or None when
    mitmproxy has yet to connect by name (a registered name, a reverse-mode target; http.end
    then carries it)."""
    dest: Destination | None = noted_destination(flow)
    if dest is None:
        return None
    if dest.record["address"] is not None and not is_reverse(flow):  # pinned (reverse mode is not)
        return dest.record
    return {"host": dest.host, "port": dest.port, "address": peer_address(flow)}


def peer_address(flow: http.HTTPFlow) -> str | None:
    """The address of the upstream connection the flow used, or None if none was made."""
    server = flow.server_conn
    if server is None or server.timestamp_tcp_setup is None or not server.peername:
        return None
    return canonical_host(str(server.peername[0]))


def _names_used(flow: http.HTTPFlow, reverse: bool) -> list[tuple[str, str, int | None]]:
    """The names the client used besides the destination: every Host header, the h2 :authority,
    and (regular mode) the TLS SNI, which goes upstream as the server name."""
    req = flow.request
    names = []
    for name, value in req.data.headers.fields:
        if name.lower() == b"host":
            host, port = split_host_port(value.decode("latin-1"))
            names.append(("Host header", host, port))
    if req.data.authority:
        host, port = split_host_port(req.data.authority.decode("latin-1"))
        names.append((":authority", host, port))
    sni = flow.client_conn.sni
    if sni and not reverse:
        names.append(("TLS server name (SNI)", sni, None))
    return names


def _refuse_unregistered(flow: http.HTTPFlow, dest: Destination, unregistered: str) -> None:
    if unregistered == "deny":
        refuse(flow, 403, "unregistered", _unregistered_message(dest))
    elif dest.error is not None:
        refuse(flow, 502, "unresolved",
               f"{dest.error}, so the gateway cannot check it against its registered connections; "
               "check the name, or retry if DNS is failing")


def _unregistered_message(dest: Destination) -> str:
    return (f"{dest.host} is not a registered connection of this gateway (policy.unregistered = \"deny\"); "
            "ask the gateway operator to add it under [[connections]]")
