"""Policy by destination, not by spelling (recorder/policy/destinations.py): address normalisation,
matching a destination to a registered connection by name and by address, the resolver's
deadline and cache, and the Host/SNI check. The end-to-end tests are in tests/e2e/test_policy_e2e.py."""
from __future__ import annotations

import asyncio

import pytest

from recorder.config import ConnectionConfig
from recorder.policy.destinations import (
    LOOPBACK,
    Destinations,
    Registry,
    Resolver,
    address_key,
    canonical_host,
    ip_literal,
    misdirected,
    split_host_port,
)

# -- spellings ------------------------------------------------------------------------------------

LITERALS = [
    # (as the client wrote it, the address it names; None = a name, not an IP literal)
    ("127.0.0.1", "127.0.0.1"),
    ("127.1", "127.0.0.1"),
    ("127.0.1", "127.0.0.1"),
    ("2130706433", "127.0.0.1"),
    ("0x7f.0.0.1", "127.0.0.1"),
    ("0X7F.0.0.1", "127.0.0.1"),
    ("0x7f000001", "127.0.0.1"),
    ("0177.0.0.1", "127.0.0.1"),
    ("0177.1", "127.0.0.1"),
    ("127.0.0.1.", "127.0.0.1"),
    ("017700000001", "127.0.0.1"),
    ("10.1.0x10", "10.1.0.16"),
    ("::1", "::1"),
    ("[::1]", "::1"),
    ("[0:0:0:0:0:0:0:1]", "::1"),
    ("::ffff:127.0.0.1", "127.0.0.1"),
    ("[::ffff:127.0.0.1]", "127.0.0.1"),
    ("[::FFFF:7f00:1]", "127.0.0.1"),
    ("fe80::1%eth0", "fe80::1"),
    ("[2001:DB8::1]", "2001:db8::1"),
    ("0.0.0.0", "0.0.0.0"),
    ("0", "0.0.0.0"),
    # names: not numbers-and-dots, or out of range
    ("localhost", None),
    ("256.0.0.1", None),
    ("1.2.3.4.5", None),
    ("4294967296", None),
    ("08.0.0.1", None),
    ("0x7f.example.com", None),
    ("api.openai.com", None),
    ("[::1", None),
    ("1e100", None),
]


@pytest.mark.parametrize("text, address", LITERALS, ids=[t for t, _ in LITERALS])
def test_ip_literals_in_every_form(text, address):
    ip = ip_literal(text)
    assert (ip.compressed if ip is not None else None) == address


CANONICAL = [
    ("LOCALHOST.", "localhost"),
    ("Api.OpenAI.com.", "api.openai.com"),
    ("api.openai.com", "api.openai.com"),
    ("127.1", "127.0.0.1"),
    ("[::ffff:127.0.0.1]", "127.0.0.1"),
    ("[::1]", "::1"),
    ("2130706433", "127.0.0.1"),
]


@pytest.mark.parametrize("text, canonical", CANONICAL, ids=[t for t, _ in CANONICAL])
def test_canonical_host(text, canonical):
    assert canonical_host(text) == canonical


@pytest.mark.parametrize("text, key", [
    ("127.0.0.1", LOOPBACK), ("127.0.0.2", LOOPBACK), ("127.255.255.254", LOOPBACK), ("::1", LOOPBACK),
    ("0.0.0.0", LOOPBACK), ("::", LOOPBACK), ("::ffff:127.0.0.1", LOOPBACK),
    ("::ffff:10.0.0.1", "10.0.0.1"), ("10.0.0.1", "10.0.0.1"), ("2001:db8::1", "2001:db8::1"),
])
def test_address_keys(text, key):
    assert address_key(ip_literal(text)) == key


@pytest.mark.parametrize("text, host, port", [
    ("api.openai.com", "api.openai.com", None), ("api.openai.com:443", "api.openai.com", 443),
    ("[::1]:8443", "::1", 8443), ("[::1]", "::1", None), ("::1", "::1", None),
    ("127.0.0.1:80", "127.0.0.1", 80), ("host:notaport", "host:notaport", None), ("[::1]x", "[::1]x", None),
])
def test_split_host_port(text, host, port):
    assert split_host_port(text) == (host, port)


# -- matching -----------------------------------------------------------------------------------------


def conn(name, hosts, ports=()):
    return ConnectionConfig(name=name, hosts=tuple(hosts), ports=tuple(ports), credential=None, inject="none")


CONNECTIONS = (
    conn("local", ["127.0.0.1"], [8443]),
    conn("openai", ["api.openai.com"]),
    conn("wild", ["*.example.com"]),
    conn("v6", ["2001:db8::10"], [443]),
)
DNS = {
    "api.openai.com": ["162.159.140.245", "2606:4700::6812:1"],
    "alias-of-openai.example.net": ["162.159.140.245"],
    "localhost": ["::1", "127.0.0.1"],
    "elsewhere.example.net": ["192.0.2.7"],
    "v6-alias.example.net": ["2001:db8::10"],
}


class FakeDNS:
    def __init__(self, table):
        self.table, self.calls = dict(table), []

    async def __call__(self, name):
        self.calls.append(name)
        if name not in self.table:
            raise OSError(-2, "Name or service not known")
        return list(self.table[name])


def destinations(table=DNS, clock=None):
    kw = {"clock": clock} if clock else {}
    registry = Registry(CONNECTIONS, **kw)
    dests = Destinations(registry, Resolver(lookup=FakeDNS(table), **kw))
    asyncio.run(dests.refresh_registered())
    return dests


CLASSIFY = [
    # (destination host, port, connection it is, how it matched, address it is pinned to)
    ("127.0.0.1", 8443, "local", "name", "127.0.0.1"),
    ("127.1", 8443, "local", "name", "127.0.0.1"),  # the same IP literal: matched by its value
    ("2130706433", 8443, "local", "name", "127.0.0.1"),
    ("0x7f.0.0.1", 8443, "local", "name", "127.0.0.1"),
    ("[::ffff:127.0.0.1]", 8443, "local", "name", "127.0.0.1"),
    ("::1", 8443, "local", "address", "::1"),  # another loopback address: an alias
    ("127.0.0.2", 8443, "local", "address", "127.0.0.2"),
    ("0.0.0.0", 8443, "local", "address", "0.0.0.0"),
    ("localhost", 8443, "local", "address", "::1"),  # a DNS name of a registered address
    ("LOCALHOST.", 8443, "local", "address", "::1"),
    ("127.0.0.1", 9999, None, None, "127.0.0.1"),  # a port the connection does not list
    ("api.openai.com", 443, "openai", "name", None),  # a registered name: not looked up, not pinned
    ("API.OpenAI.COM.", 443, "openai", "name", None),
    ("162.159.140.245", 443, "openai", "address", "162.159.140.245"),
    ("[2606:4700::6812:1]", 443, "openai", "address", "2606:4700::6812:1"),
    ("alias-of-openai.example.net", 443, "openai", "address", "162.159.140.245"),
    ("a.b.example.com", 443, "wild", "name", None),
    ("example.com", 443, None, None, None),  # not in DNS: unresolved
    ("elsewhere.example.net", 443, None, None, "192.0.2.7"),
    ("v6-alias.example.net", 443, "v6", "address", "2001:db8::10"),
]


@pytest.mark.parametrize("host, port, name, via, pin", CLASSIFY, ids=[f"{h}:{p}" for h, p, *_ in CLASSIFY])
def test_a_destination_is_its_connection_whatever_its_spelling(host, port, name, via, pin):
    d = asyncio.run(destinations().classify(host, port))
    assert (d.connection.name if d.connection else None, d.via, d.pin) == (name, via, pin)
    assert d.record == {"host": canonical_host(host), "port": port, "address": pin}


def test_a_name_that_does_not_resolve_is_unchecked_not_unregistered():
    d = asyncio.run(destinations().classify("example.com", 443))
    assert d.connection is None and d.error and "does not resolve" in d.error


def test_the_first_connection_in_config_order_wins_by_address():
    registry = Registry((conn("first", ["localhost"]), conn("second", ["127.0.0.1"])))
    registry.learn("localhost", ["127.0.0.1"])
    assert registry.by_address([LOOPBACK], 80).name == "first"


def test_registered_addresses_are_kept_for_a_while_after_dns_rotates_them():
    now = [1000.0]
    registry = Registry((conn("api", ["api.example.net"]),), keep=600, clock=lambda: now[0])
    assert registry.unresolved == {"api.example.net"}
    registry.learn("api.example.net", ["192.0.2.1"])
    now[0] += 300
    registry.learn("api.example.net", ["192.0.2.2"])  # the pool rotated
    assert registry.by_address(["192.0.2.1"], 443).name == "api"
    assert registry.by_address(["192.0.2.2"], 443).name == "api"
    now[0] += 301
    registry.learn("api.example.net", ["192.0.2.2"])
    assert registry.by_address(["192.0.2.1"], 443) is None  # not seen for longer than `keep`
    assert registry.unresolved == set()


def test_a_classification_is_redone_when_the_registered_addresses_change():
    table = dict(DNS, **{"api.openai.com": ["192.0.2.50"]})
    fake = FakeDNS(table)
    registry = Registry(CONNECTIONS)
    dests = Destinations(registry, Resolver(lookup=fake))

    async def run():
        await dests.refresh_registered()
        before = await dests.classify("192.0.2.99", 443)
        registry.learn("api.openai.com", ["192.0.2.99"])  # DNS now answers the new address
        after = await dests.classify("192.0.2.99", 443)
        return before, after

    before, after = asyncio.run(run())
    assert before.connection is None and after.connection.name == "openai"


# -- the resolver -------------------------------------------------------------------------------------


def test_a_lookup_past_its_deadline_fails_and_does_not_block_the_loop():
    async def slow(name):
        await asyncio.sleep(5)
        return ["192.0.2.1"]

    async def run():
        resolver = Resolver(lookup=slow, timeout=0.05)
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.005)
                ticks += 1

        t = asyncio.ensure_future(ticker())
        res = await resolver.resolve("slow.example")
        t.cancel()
        return res, ticks

    res, ticks = asyncio.run(run())
    assert res.addresses == () and "longer than 0.05 s" in res.error
    assert ticks >= 3  # the loop kept running while the lookup waited


def test_concurrent_lookups_of_one_name_share_one_and_answers_are_reused_until_they_expire():
    now = [0.0]
    fake = FakeDNS(DNS)
    resolver = Resolver(lookup=fake, ttl=60, failure_ttl=5, clock=lambda: now[0])

    async def run():
        return await asyncio.gather(*(resolver.resolve("localhost") for _ in range(5)))

    results = asyncio.run(run())
    assert {r.addresses for r in results} == {("::1", "127.0.0.1")} and fake.calls == ["localhost"]
    asyncio.run(resolver.resolve("localhost"))
    assert fake.calls == ["localhost"]
    now[0] = 61
    asyncio.run(resolver.resolve("localhost"))
    assert fake.calls == ["localhost", "localhost"]
    # A failure is kept briefly, so a name that does not resolve is not looked up per request.
    asyncio.run(resolver.resolve("nx.example"))
    asyncio.run(resolver.resolve("nx.example"))
    assert fake.calls.count("nx.example") == 1
    now[0] = 67
    asyncio.run(resolver.resolve("nx.example"))
    assert fake.calls.count("nx.example") == 2


# -- Host, :authority and SNI ------------------------------------------------------------------------

MISDIRECTED = [
    # (destination, port, [(what, name, port)], refused?)
    ("127.0.0.1", 8443, [("Host", "127.0.0.1", 8443)], False),
    ("127.0.0.1", 8443, [("Host", "127.1", 8443)], False),  # the same connection by another spelling
    ("127.0.0.1", 8443, [("Host", "127.0.0.1", None)], False),  # no port: the destination's
    ("127.0.0.1", 8443, [("Host", "evil.example", None)], True),
    ("127.0.0.1", 8443, [("SNI", "evil.example", None)], True),
    ("127.0.0.1", 8443, [("Host", "127.0.0.1", 9999)], True),  # another port is another service
    ("localhost", 8443, [("Host", "localhost", 8443), ("SNI", "LOCALHOST.", None)], False),  # the alias itself
    ("api.openai.com", 443, [("Host", "API.openai.com.", None)], False),
    ("api.openai.com", 443, [("Host", "162.159.140.245", None)], False),  # its address, as an IP literal
    ("api.openai.com", 443, [("Host", "alias-of-openai.example.net", None)], True),  # names are not looked up
    ("a.example.com", 443, [("SNI", "b.example.com", None)], False),  # the same wildcard connection
    # unregistered destinations: any name, but never a registered one
    ("elsewhere.example.net", 443, [("Host", "other.example.net", None)], False),
    ("elsewhere.example.net", 443, [("Host", "api.openai.com", None)], True),
    ("elsewhere.example.net", 443, [("SNI", "api.openai.com", None)], True),
    ("elsewhere.example.net", 443, [("Host", "[::ffff:127.0.0.1]", 8443)], True),
    ("127.0.0.1", 9999, [("Host", "127.0.0.1", 8443)], True),
    ("127.0.0.1", 9999, [("Host", "localhost", 9999)], False),
]


@pytest.mark.parametrize("host, port, names, refused", MISDIRECTED,
                         ids=[f"{h}:{p}-{n[0][1]}" for h, p, n, _ in MISDIRECTED])
def test_a_host_header_or_sni_must_name_the_destination(host, port, names, refused):
    dests = destinations()
    d = asyncio.run(dests.classify(host, port))
    why = misdirected(d, dests.registry, names)
    assert (why is not None) == refused, why
