"""recorder/policy/client_destinations.py: one answer per client connection, whatever DNS says later.
The end-to-end tests (DNS rebinding through a real gateway) are in tests/e2e/test_policy_e2e.py."""
from __future__ import annotations

import asyncio
import gc

from recorder.policy.client_destinations import PER_CLIENT, ClientDestinations
from recorder.policy.destinations import Destinations, Registry, Resolver
from recorder.policy.raw_policy import UNCHECKED
from tests.unit.test_destinations import CONNECTIONS, DNS, FakeDNS


class Client:  # stands in for mitmproxy's connection.Client: any object a weak reference can hold
    pass


def checked(table=DNS):
    now = [1000.0]
    dns = FakeDNS(table)
    registry = Registry(CONNECTIONS, clock=lambda: now[0])
    resolver = Resolver(lookup=dns, ttl=60, clock=lambda: now[0])
    c = ClientDestinations(Destinations(registry, resolver))
    asyncio.run(c.refresh())
    return c, dns, now


def test_a_client_connection_keeps_its_first_answer_when_dns_changes():
    c, dns, now = checked()
    a, b = Client(), Client()

    async def run():
        first = await c.check(a, "rebind.example.net", 8443)
        dns.table["rebind.example.net"] = ["127.0.0.1"]  # DNS now points at the registered service
        now[0] += 120  # past the resolver's ttl
        again = await c.check(a, "rebind.example.net", 8443)
        pinned = await c.check(a, "192.0.2.7", 8443)  # what the gateway connects to: the same answer
        other = await c.check(b, "rebind.example.net", 8443)
        return first, again, pinned, other

    dns.table["rebind.example.net"] = ["192.0.2.7"]
    first, again, pinned, other = asyncio.run(run())
    assert first.connection is None and first.pin == "192.0.2.7"
    assert again is first and pinned is first
    assert other.connection is not None and other.connection.name == "local"  # a new connection asks again
    assert dns.calls.count("rebind.example.net") == 2


def test_connection_now_never_waits_for_dns():
    c, dns, _ = checked()
    client = Client()
    assert c.connection_now(client, "127.1", 8443).name == "local"  # an IP literal: no lookup
    assert c.connection_now(client, "api.openai.com", 443).name == "openai"  # a registered name
    assert c.connection_now(client, "localhost", 8443) is UNCHECKED  # only DNS could tell
    assert "localhost" not in dns.calls
    asyncio.run(c.check(client, "localhost", 8443))
    assert c.connection_now(client, "localhost", 8443).name == "local"  # as checked for this client
    assert c.connection_now(client, "example.com", 443) is UNCHECKED  # does not resolve: not passed


def test_the_address_connected_to_is_the_same_destination():
    c, _, _ = checked()
    client = Client()
    dest = asyncio.run(c.check(client, "LOCALHOST.", 8443))
    c.connects_to(client, "localhost", 8443, dest)
    assert c.known(client, "localhost", 8443) is dest


def test_what_a_client_connection_remembers_is_bounded_and_goes_with_it():
    c, _, _ = checked()
    client = Client()

    async def run():
        for port in range(1, PER_CLIENT + 20):
            await c.check(client, "127.0.0.1", port)

    asyncio.run(run())
    assert len(c.by_client[client]) == PER_CLIENT
    assert c.known(client, "127.0.0.1", PER_CLIENT + 10) is None
    del client
    gc.collect()
    assert len(c.by_client) == 0
