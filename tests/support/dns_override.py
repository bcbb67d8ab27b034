"""Test-only mitmproxy script, loaded after addons/gateway.py: stands in for DNS.

The tests have no DNS, and Cursor's backend names (the `cursor` preset) must reach the fake
upstream on 127.0.0.1. WIRETRAIL_TEST_RESOLVE="*.cursor.sh=127.0.0.1,name=addr" maps names
(exact, or `*.` suffixes) to addresses in `server_connect`, after the gateway has checked the
destination by its name; the TLS server name stays the name, so the upstream's certificate
is verified for it as for the real host.
"""
import os

_MAP = [item.split("=", 1) for item in os.environ.get("WIRETRAIL_TEST_RESOLVE", "").split(",") if "=" in item]


def _lookup(host: str) -> str | None:
    host = host.lower().rstrip(".")
    for pattern, address in _MAP:
        if host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return address
    return None


def server_connect(data):
    if data.server.address is None:
        return
    host, port = data.server.address
    address = _lookup(host)
    if address is not None:
        if data.server.sni is None:
            data.server.sni = host
        data.server.address = (address, port)
