"""What happens to a connection that does not speak HTTP: refused, recorded, or tunnelled.

mitmproxy falls back to relaying raw bytes (TCP, UDP, DNS, QUIC) whenever it does not find
HTTP: a client that speaks another protocol inside its tunnel, an unknown ALPN, an HTTP 101
upgrade to anything but WebSocket, a reverse tcp:// or tls:// listener, `tcp_hosts`,
`ignore_hosts`. None of that passes a request hook, so none of it is checked or recorded
unless it is decided here (docs/configuration.md, `policy.raw_tcp`).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RawDecision:
    action: str  # "refuse", "record" or "tunnel"
    connection: object = None  # the matched ConnectionConfig, if any
    reason: str = ""  # for a refusal: a reason code
    message: str = ""  # for a refusal: what the operator and the record read


UNCHECKED = object()  # `conn` of a destination policy has not classified: refused


def decide_raw(cfg, host: str | None, port: int | None, conn=None, *, protocol: str = "tcp", identity=None,
               authenticated: bool = True, ignored: bool = False) -> RawDecision:
    """`cfg` the GatewayConfig (None: not started); `conn` the registered connection policy matched
    the destination to, by name or address (recorder/policy/destinations.py), None for an unregistered
    one, UNCHECKED when it could not be classified; `identity` the caller's verified identity (its
    `groups`); `authenticated` False when the caller has no verified identity although the gateway
    requires one; `ignored` for a connection mitmproxy was told to pass untouched (ignore_hosts)."""
    where = f"{host}:{port}" if host else "an unknown destination"
    if cfg is None:
        return RawDecision("refuse", None, "not_ready", "wiretrail is not running yet and cannot record")
    if protocol != "tcp":
        return RawDecision("refuse", None, "protocol",
                           f"{protocol.upper()} to {where} cannot be recorded by wiretrail; only HTTP, WebSocket "
                           "and (with policy.raw_tcp = \"record\") TCP pass")
    if not host or not port:
        return RawDecision("refuse", None, "no_destination", "a raw connection without a known destination")
    if conn is UNCHECKED:
        return RawDecision("refuse", None, "unchecked",
                           f"{where} could not be matched against the registered connections (its name is not "
                           "resolved yet); a destination that is not checked is not passed")
    if conn is None:
        if ignored or cfg.policy.unregistered == "tunnel":
            return RawDecision("tunnel")
        if cfg.policy.unregistered == "deny":
            return RawDecision("refuse", None, "unregistered",
                               f"{host} is not a registered connection of this gateway (policy.unregistered = \"deny\")")
    elif ignored:
        return RawDecision("refuse", conn, "ignored",
                           f"{where} is the registered connection {conn.name!r}, which the gateway must record; "
                           "it cannot pass untouched (mitmproxy's ignore_hosts / allow_hosts)")
    if not authenticated:
        return RawDecision("refuse", conn, "unauthenticated",
                           f"raw TCP to {where} carries no identity the gateway could check")
    if conn is not None:
        if conn.allow_groups and not set(getattr(identity, "groups", ()) or ()) & set(conn.allow_groups):
            who = getattr(identity, "sub", None) or "the caller"
            return RawDecision("refuse", conn, "forbidden",
                               f"{who} is not in a group allowed to use the connection {conn.name!r}")
        if conn.credential is not None and conn.inject != "none":
            return RawDecision("refuse", conn, "credential",
                               f"{where} is the connection {conn.name!r}, which injects the gateway's credential; "
                               "raw TCP would pass the client's own credentials unstripped")
    if cfg.policy.raw_tcp != "record":
        return RawDecision("refuse", conn, "raw_tcp",
                           f"the client sent bytes that are not HTTP or WebSocket to {where} "
                           "(raw TCP or an unknown protocol); the gateway refuses them (policy.raw_tcp = \"refuse\")")
    return RawDecision("record", conn)
