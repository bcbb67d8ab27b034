"""Destinations: where a flow really goes, and which registered connection that is.

A client can name one host in many spellings: `127.0.0.1`, `127.1`, `2130706433`,
`0x7f.0.0.1`, `[::ffff:127.0.0.1]`, `LOCALHOST.`, or any DNS name that resolves to it. Policy
must not depend on the spelling, so a destination is matched against the registered
connections by its name (lowercase, without a trailing dot, an IP literal by its value) and,
failing that, by the addresses it resolves to against the addresses the registered hosts
resolve to. A match by address is an *alias*: it is treated as that connection.

Addresses are compared as keys: an IPv4-mapped IPv6 address is its IPv4 address, and every
loopback and unspecified address (127.0.0.0/8, ::1, 0.0.0.0, ::) is one key, "loopback",
since each of them can reach a service on this machine.

Lookups run off the event loop (getaddrinfo, on threads of their own), each bounded by a
deadline, and are reused for `ttl` seconds; concurrent lookups of one name share one. No
mitmproxy here: the policy addon applies this to flows.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import ipaddress
import re
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Awaitable, Callable, Iterable

LOOPBACK = "loopback"

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# -- spellings ---------------------------------------------------------------------------------

# inet_aton's numbers-and-dots: 1 to 4 parts, each decimal, 0-octal or 0x-hex; the last part
# fills the remaining bytes (127.1 = 127.0.0.1, 2130706433 = 127.0.0.1). getaddrinfo accepts
# these, so the gateway would connect to them.
_Aton = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)(?:\.(?:0[xX][0-9a-fA-F]*|[0-9]+)){0,3}")


def _aton(text: str) -> ipaddress.IPv4Address | None:
    if not _Aton.fullmatch(text):
        return None
    parts = []
    for part in text.split("."):
        if part[:2].lower() == "0x":
            parts.append(int(part[2:] or "0", 16))
        elif len(part) > 1 and part[0] == "0":
            if not set(part) <= set("01234567"):
                return None
            parts.append(int(part, 8))
        else:
            parts.append(int(part))
    last_bytes = 5 - len(parts)  # the last part fills what the others leave
    if any(p > 255 for p in parts[:-1]) or parts[-1] >= 256 ** last_bytes:
        return None
    value = 0
    for p in parts[:-1]:
        value = value << 8 | p
    value = value << (8 * last_bytes) | parts[-1]
    return ipaddress.IPv4Address(value)


def ip_literal(host: str) -> IPAddress | None:
    """The address an IP literal names, in any form getaddrinfo accepts, or None for a name.
    `[...]` brackets and an IPv6 zone (`%eth0`) are allowed; an IPv4-mapped IPv6 address is
    returned as its IPv4 address."""
    text = host.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if text.endswith("."):
        text = text[:-1]
    if ":" in text:
        try:
            ip = ipaddress.IPv6Address(text.partition("%")[0])
        except ValueError:
            return None
        return ip.ipv4_mapped or ip
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        return _aton(text)


@functools.lru_cache(maxsize=4096)
def canonical_host(host: str) -> str:
    """A host as policy compares it: lowercase, no trailing dot, no brackets, an IP literal as
    its canonical address (`127.1` -> `127.0.0.1`, `[::ffff:127.0.0.1]` -> `127.0.0.1`)."""
    ip = ip_literal(host)
    if ip is not None:
        return ip.compressed
    return host.strip().lower().rstrip(".")


def address_key(ip: IPAddress) -> str:
    """The key addresses are compared by (see the module doc)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    if ip.is_loopback or ip.is_unspecified:
        return LOOPBACK
    return ip.compressed


def split_host_port(authority: str) -> tuple[str, int | None]:
    """`host`, `host:port`, `[v6]` or `[v6]:port` -> (host, port or None). A bare IPv6 address
    without brackets is a host. A port that is not a number is kept in the host, so that the
    whole value is compared (and does not match)."""
    text = authority.strip()
    if text.startswith("["):
        end = text.find("]")
        if end > 0:
            rest = text[end + 1:]
            if rest.startswith(":") and rest[1:].isdigit():
                return text[1:end], int(rest[1:])
            if not rest:
                return text[1:end], None
        return text, None
    host, sep, port = text.rpartition(":")
    if sep and ":" not in host and port.isdigit():
        return host, int(port)
    return text, None


def host_matches(pattern: str, host: str) -> bool:
    """A canonical host against a configured one: exact, or a `*.` wildcard that matches one
    or more labels below its domain."""
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


# -- the registered connections ------------------------------------------------------------------


class Registry:
    """The registered connections, by name and by address.

    Hosts that are IP literals are known at once. Host names are looked up (`names()`), and
    their addresses added with `learn()`; an address stays known for `keep` seconds after it
    was last seen, so a DNS answer that rotates among a pool of addresses keeps them all.
    Wildcard hosts are matched by name only. `generation` changes when the addresses do."""

    def __init__(self, connections: Iterable, *, keep: float = 600.0, clock: Callable[[], float] = time.monotonic):
        self.connections = tuple(connections)
        self._order = {id(c): i for i, c in enumerate(self.connections)}
        self.keep = keep
        self.clock = clock
        self.generation = 0
        self._by_name: dict[tuple[str, int], object] = {}
        self._static: dict[str, list] = {}  # address key -> connections, from IP literal hosts
        self._seen: dict[str, dict[str, float]] = {}  # host name -> {address key: last seen}
        self._by_address: dict[str, tuple] = {}
        self._unresolved: set[str] = set()
        for conn in self.connections:
            for host in conn.hosts:
                ip = None if host.startswith("*.") else ip_literal(host)
                if ip is not None:
                    self._static.setdefault(address_key(ip), []).append(conn)
                elif not host.startswith("*."):
                    self._seen.setdefault(host, {})
                    self._unresolved.add(host)
        self._rebuild()

    def names(self) -> list[str]:
        """The registered host names to look up."""
        return list(self._seen)

    @property
    def unresolved(self) -> frozenset[str]:
        """Host names whose addresses are not known (never resolved, or all forgotten)."""
        return frozenset(self._unresolved)

    def learn(self, name: str, addresses: Iterable[str]) -> None:
        now = self.clock()
        seen = self._seen.get(name)
        if seen is None:
            return
        before = set(seen)
        for a in addresses:
            ip = ip_literal(a)
            if ip is not None:
                seen[address_key(ip)] = now
        for key in [k for k, t in seen.items() if now - t > self.keep]:
            del seen[key]
        if seen:
            self._unresolved.discard(name)
        else:
            self._unresolved.add(name)
        if set(seen) != before:
            self._rebuild()

    def _rebuild(self) -> None:
        by_address: dict[str, list] = {k: list(v) for k, v in self._static.items()}
        for conn in self.connections:  # config order: the first connection listed wins
            for host in conn.hosts:
                for key in self._seen.get(host, ()):
                    conns = by_address.setdefault(key, [])
                    if conn not in conns:
                        conns.append(conn)
        for key, conns in by_address.items():  # keep config order across static and learned
            conns.sort(key=lambda c: self._order[id(c)])
        self._by_address = {k: tuple(v) for k, v in by_address.items()}
        self.generation += 1

    def by_name(self, host: str, port: int):
        """The first connection whose hosts name this canonical host (an IP literal matches its
        own canonical spelling) and whose ports allow `port`, or None."""
        key = (host, port)
        try:
            return self._by_name[key]
        except KeyError:
            pass
        found = None
        for conn in self.connections:
            if conn.ports and port not in conn.ports:
                continue
            if any(host_matches(canonical_host(p) if not p.startswith("*.") else p, host) for p in conn.hosts):
                found = conn
                break
        if len(self._by_name) > 4096:
            self._by_name.clear()
        self._by_name[key] = found
        return found

    def by_address(self, keys: Iterable[str], port: int):
        """The first connection (in config order) one of these address keys belongs to, on `port`."""
        best = None
        for key in keys:
            for conn in self._by_address.get(key, ()):
                if conn.ports and port not in conn.ports:
                    continue
                if best is None or self._order[id(conn)] < self._order[id(best)]:
                    best = conn
                break
        return best

    def named(self, name: str, port: int):
        """The connection a name the client used (a TLS SNI, a Host header) points at without a
        lookup: by name, or an IP literal by its address. None if it names none."""
        host = canonical_host(name)
        conn = self.by_name(host, port)
        if conn is not None:
            return conn
        ip = ip_literal(host)
        return self.by_address((address_key(ip),), port) if ip is not None else None


# -- looking names up ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Resolution:
    addresses: tuple[str, ...]  # canonical addresses, in the order getaddrinfo gave them
    error: str | None  # why there are none
    expires: float  # clock time after which it is looked up again


Lookup = Callable[[str], Awaitable[list[str]]]


# Lookups get threads of their own: a flood of names that hang in DNS then delays only other
# lookups (each bounded by its deadline), not the loop's default executor that the rest of the
# gateway shares (JWKS fetches, mitmproxy's own connections).
_DNS_THREADS = concurrent.futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="wiretrail-dns")


async def getaddrinfo_lookup(name: str) -> list[str]:
    """The addresses of `name`, as the gateway's own connection would find them (getaddrinfo)."""
    infos = await asyncio.get_running_loop().run_in_executor(
        _DNS_THREADS, functools.partial(socket.getaddrinfo, name, None, type=socket.SOCK_STREAM))
    return [info[4][0] for info in infos]


class Resolver:
    """DNS lookups off the event loop, with a deadline and a cache. A failure is cached
    briefly (`failure_ttl`), so a name that does not resolve is not looked up per request."""

    def __init__(self, *, ttl: float = 60.0, timeout: float = 5.0, failure_ttl: float = 5.0,
                 lookup: Lookup = getaddrinfo_lookup, clock: Callable[[], float] = time.monotonic,
                 max_entries: int = 4096):
        self.ttl, self.timeout, self.failure_ttl = ttl, timeout, failure_ttl
        self.lookup, self.clock, self.max_entries = lookup, clock, max_entries
        self._cache: OrderedDict[str, Resolution] = OrderedDict()
        self._pending: dict[str, asyncio.Future] = {}

    def cached(self, name: str) -> Resolution | None:
        res = self._cache.get(name)
        if res is not None and res.expires > self.clock():
            return res
        return None

    async def resolve(self, name: str, *, fresh: bool = False) -> Resolution:
        """The cached answer, or a new lookup (always, with `fresh`)."""
        res = None if fresh else self.cached(name)
        if res is not None:
            return res
        pending = self._pending.get(name)
        if pending is None:
            pending = self._pending[name] = asyncio.ensure_future(self._lookup(name))
            pending.add_done_callback(lambda _f: self._pending.pop(name, None))
        return await asyncio.shield(pending)

    async def _lookup(self, name: str) -> Resolution:
        try:
            found = await asyncio.wait_for(self.lookup(name), self.timeout)
        except asyncio.TimeoutError:
            res = self._failed(f"the DNS lookup of {name} took longer than {self.timeout:g} s")
        except (OSError, UnicodeError, ValueError) as e:
            res = self._failed(f"{name} does not resolve ({getattr(e, 'strerror', None) or e})")
        else:
            addresses = []
            for a in found:
                ip = ip_literal(a)
                if ip is not None and ip.compressed not in addresses:
                    addresses.append(ip.compressed)
            if addresses:
                res = Resolution(tuple(addresses), None, self.clock() + self.ttl)
            else:
                res = self._failed(f"{name} resolves to no address")
        self._cache[name] = res
        self._cache.move_to_end(name)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
        return res

    def _failed(self, why: str) -> Resolution:
        return Resolution((), why, self.clock() + self.failure_ttl)


# -- a destination, classified --------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    """Where a flow goes and what policy makes of it."""

    host: str  # the destination as the client named it, canonical (lowercase, no dot, IP canonical)
    port: int
    connection: object | None  # the registered ConnectionConfig, or None
    via: str | None  # "name", "address" (an alias) or None (unregistered)
    addresses: tuple[str, ...] = ()  # what it resolves to; () for a registered name (not looked up)
    error: str | None = None  # it could not be checked: why (the lookup failed)
    pin: str | None = None  # the address the gateway connects to, or None: mitmproxy resolves the name
    expires: float = float("inf")  # clock time after which it is classified again
    generation: int = 0  # the Registry generation it was classified with
    record: dict = field(default_factory=dict, compare=False)  # {"host", "port", "address"} for the record

    @property
    def is_ip(self) -> bool:
        return ip_literal(self.host) is not None


def _destination(host: str, port: int, conn, via, addresses=(), error=None, pin=None, expires=float("inf"),
                 generation=0) -> Destination:
    return Destination(host, port, conn, via, tuple(addresses), error, pin, expires, generation,
                       {"host": host, "port": port, "address": pin})


class Destinations:
    """Classifies destinations against a Registry, with a Resolver, and caches the result."""

    def __init__(self, registry: Registry, resolver: Resolver):
        self.registry = registry
        self.resolver = resolver
        self._cache: dict[tuple[str, int], Destination] = {}

    def cached(self, host: str, port: int) -> Destination | None:
        """The classification of (host, port) if it is still good, without waiting."""
        d = self._cache.get((host, port))
        if d is not None and d.generation == self.registry.generation and (
                d.expires == float("inf") or d.expires > self.resolver.clock()):
            return d
        return None

    async def classify(self, host: str, port: int) -> Destination:
        d = self.cached(host, port)
        if d is None:
            d = await self._classify(host, port)
            if len(self._cache) > 4096:
                self._cache.clear()
            self._cache[(host, port)] = d
        return d

    def classify_now(self, raw: str, port: int) -> Destination | None:
        """A registered name or an IP literal, classified without a lookup; None when only DNS can tell."""
        reg = self.registry
        gen = reg.generation
        host = canonical_host(raw)
        ip = ip_literal(host)
        conn = reg.by_name(host, port)
        if conn is not None:
            # A registered name is the registered host: mitmproxy resolves it as it would.
            return _destination(host, port, conn, "name", (host,) if ip else (), pin=host if ip else None,
                                generation=gen)
        if ip is not None:
            conn = reg.by_address((address_key(ip),), port)
            return _destination(host, port, conn, "address" if conn else None, (host,), pin=host, generation=gen)
        return None

    async def _classify(self, raw: str, port: int) -> Destination:
        now = self.classify_now(raw, port)
        if now is not None:
            return now
        reg = self.registry
        host = canonical_host(raw)
        res = await self.resolver.resolve(host)
        gen = reg.generation  # the addresses may have been refreshed while it waited
        if res.error:
            return _destination(host, port, None, None, error=res.error, expires=res.expires, generation=gen)
        keys = {address_key(ipaddress.ip_address(a)) for a in res.addresses}
        conn = reg.by_address(keys, port)
        return _destination(host, port, conn, "address" if conn else None, res.addresses, pin=res.addresses[0],
                            expires=res.expires, generation=gen)

    async def refresh_registered(self) -> list[str]:
        """Look every registered host name up again; returns the errors of those that failed."""
        names = self.registry.names()
        results = await asyncio.gather(*(self.resolver.resolve(n, fresh=True) for n in names))
        errors = []
        for name, res in zip(names, results):
            if res.error:
                errors.append(res.error)
            else:
                self.registry.learn(name, res.addresses)
        return errors


def misdirected(dest: Destination, registry: Registry, names: Iterable[tuple[str, str, int | None]]) -> str | None:
    """Why a request that goes to `dest` but names another host is refused, or None.

    `names` are (what, name, port or None) the client used: the TLS SNI, the Host header or
    h2 :authority. Each must point where the request goes: the destination itself (same
    spelling and port), or, for a registered destination, a name or IP literal of that same
    connection; for an unregistered destination, no registered connection at all. So an
    injected credential only travels with a Host that names its connection, and a request
    for a registered host never goes elsewhere under its name."""
    for what, name, port in names:
        if not name:
            continue
        host = canonical_host(name)
        port = dest.port if port is None else port
        if host == dest.host and port == dest.port:
            continue
        named = registry.named(host, port)
        if named is dest.connection:
            continue
        shown = f"{host}:{port}"
        if dest.connection is not None:
            return (f"the {what} names {shown}, but this request goes to {dest.host}:{dest.port} "
                    f"(the connection {dest.connection.name!r})")
        return (f"the {what} names {shown} (the connection {named.name!r}), but this request goes to "
                f"{dest.host}:{dest.port}, which is not that connection")
    return None
