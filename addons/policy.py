"""Policy: which registered connection a flow is for, and whether its caller may use it.

A registered connection (matched by host and port) may limit its callers to groups
(403 otherwise). An unregistered host follows `policy.unregistered`:
  deny    403, at the CONNECT already when there is one;
  record  intercepted and recorded, nothing injected;
  tunnel  TLS passes through uninspected and unrecorded; a `tunnel` record notes host
          and identity.
Hosts are matched on the address the gateway connects to, never on a Host header the
client could set, so an injected credential only ever goes to its registered host.
"""
from __future__ import annotations

from typing import Callable

from mitmproxy import connection, http, tls
from mitmproxy.proxy import mode_specs

from addons.config import WiretrailConfig
from addons.identity import Identity, identity_of, is_reverse
from addons.refusal import REFUSAL, refuse
from recorder.config import ConnectionConfig
from recorder.connections import match_connection
from recorder.identity import Identity as VerifiedIdentity

CONNECTION = "wiretrail.connection"  # flow.metadata: the matched ConnectionConfig, or None
TUNNELED = "wiretrail.tunneled"  # flow.metadata: an unregistered host under policy "tunnel"

TunnelNote = Callable[[connection.Client, str, int, VerifiedIdentity], None]


def connection_of(flow: http.HTTPFlow) -> ConnectionConfig | None:
    return flow.metadata.get(CONNECTION)


class Policy:
    def __init__(self, config: WiretrailConfig, identity: Identity, on_tunnel: TunnelNote | None = None):
        self.config_addon = config
        self.identity = identity  # identities per client connection, for tunnels
        self.on_tunnel = on_tunnel  # capture's tunnel record

    def _unregistered(self) -> str:
        return self.config_addon.current.policy.unregistered

    def http_connect(self, flow: http.HTTPFlow):
        if flow.response is not None or self.config_addon.current is None:
            return
        req = flow.request
        if self._unregistered() == "deny" and match_connection(self.config_addon.current.connections,
                                                               req.host, req.port) is None:
            refuse(flow, 403, "unregistered", _unregistered_message(req.host))

    def tls_clienthello(self, data: tls.ClientHelloData):
        cfg = self.config_addon.current
        if cfg is None or cfg.policy.unregistered != "tunnel":
            return
        client, server = data.context.client, data.context.server
        if isinstance(client.proxy_mode, mode_specs.ReverseMode) or server.address is None:
            return
        host, port = server.address
        if match_connection(cfg.connections, host, port) is None:
            data.ignore_connection = True
            if self.on_tunnel is not None:
                self.on_tunnel(client, host, port, self.identity.identity_of_client(client))

    def requestheaders(self, flow: http.HTTPFlow):
        if flow.response is not None or REFUSAL in flow.metadata:
            return
        cfg = self.config_addon.current
        if cfg is None:
            return
        req = flow.request
        conn = match_connection(cfg.connections, req.host, req.port)
        flow.metadata[CONNECTION] = conn
        if conn is None:
            if cfg.policy.unregistered == "deny":
                refuse(flow, 403, "unregistered", _unregistered_message(req.host))
            elif cfg.policy.unregistered == "tunnel" and not is_reverse(flow):
                flow.metadata[TUNNELED] = True
            return
        ident = identity_of(flow)
        if conn.allow_groups and not set(ident.groups) & set(conn.allow_groups):
            refuse(flow, 403, "forbidden",
                   f"{ident.sub} is not in a group allowed to use the connection {conn.name!r} "
                   f"(it needs one of: {', '.join(conn.allow_groups)})")


def _unregistered_message(host: str) -> str:
    return (f"{host} is not a registered connection of this gateway (policy.unregistered = \"deny\"); "
            "ask the gateway operator to add it under [[connections]]")

