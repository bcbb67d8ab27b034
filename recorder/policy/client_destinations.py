"""The destinations each client connection was checked for: one answer per connection.

A client connection names a destination several times: the CONNECT target, the TLS server
name, the address the gateway then connects to, each request's host. It is classified once
(recorder/policy/destinations.py) and that answer is kept for the connection, under the name
mitmproxy uses and under the address the connection was pinned to, so a DNS answer that
changes in between changes nothing. The registered hosts are looked up again every
`resolve_interval` seconds, so their aliases follow their addresses. No mitmproxy here: the
policy addon (addons/policy.py) applies this to flows; a client is any object a weak
reference can hold (mitmproxy's connection.Client).
"""
from __future__ import annotations

import asyncio
import logging
import weakref

from recorder.policy.destinations import Destination, Destinations, Registry, Resolver
from recorder.policy.raw_policy import UNCHECKED

log = logging.getLogger("wiretrail")

PER_CLIENT = 256  # destinations remembered per client connection (a plain-HTTP proxy client may name many)


class ClientDestinations:
    def __init__(self, destinations: Destinations):
        self.destinations = destinations
        self.registry = destinations.registry
        # By the (host, port) mitmproxy uses: the CONNECT target, then the address it was pinned to.
        self.by_client: weakref.WeakKeyDictionary[object, dict] = weakref.WeakKeyDictionary()

    @classmethod
    def from_config(cls, cfg) -> ClientDestinations:
        """For a GatewayConfig: its registered connections, its policy's lookup interval and timeout."""
        p = cfg.policy
        registry = Registry(cfg.connections, keep=max(600.0, 10 * p.resolve_interval))
        return cls(Destinations(registry, Resolver(ttl=p.resolve_interval, timeout=p.resolve_timeout)))

    # -- per client connection ----------------------------------------------------------------

    def known(self, client, host: str, port: int) -> Destination | None:
        """The destination as already checked for this client connection, or None."""
        known = self.by_client.get(client)
        return known.get((host, port)) if known else None

    async def check(self, client, host: str, port: int) -> Destination:
        """The destination as checked for this client connection, classified (and kept) the first time."""
        dest = self.known(client, host, port)
        if dest is not None:
            return dest
        dest = await self.destinations.classify(host, port)
        known = self.by_client.get(client)
        if known is None:
            known = self.by_client[client] = {}
        if len(known) < PER_CLIENT:
            known[(host, port)] = dest
            if dest.pin is not None:
                known[(dest.pin, port)] = dest
        return dest

    def connection_now(self, client, host: str, port: int):
        """The registered connection of a destination, without waiting: as checked for this client
        connection, cached, or by name or IP literal. UNCHECKED when only a DNS lookup could tell."""
        dest = self.known(client, host, port)
        if dest is None:
            dest = self.destinations.cached(host, port) or self.destinations.classify_now(host, port)
        if dest is None or dest.error:
            return UNCHECKED
        return dest.connection

    def connects_to(self, client, host: str, port: int, dest: Destination) -> None:
        """The connection goes to (host, port) for `dest`: that is the same destination."""
        self.by_client.setdefault(client, {})[(host, port)] = dest

    # -- the registered hosts' addresses ------------------------------------------------------

    async def refresh(self, log_ok: bool = False) -> None:
        errors = await self.destinations.refresh_registered()
        for error in errors:
            log.warning(f"wiretrail: registered host: {error}; it is matched by name only until it resolves")
        if log_ok and self.registry.names():
            known = len(self.registry.names()) - len(self.registry.unresolved)
            log.info(f"wiretrail: the addresses of {known} registered host name(s) are known; "
                     "their aliases are matched too")

    async def refresh_every(self, seconds: float) -> None:
        while True:
            await asyncio.sleep(seconds)
            try:
                await self.refresh()
            except Exception:
                log.exception("wiretrail: looking up the registered hosts failed")
