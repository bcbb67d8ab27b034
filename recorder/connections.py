"""The connections registry: which registered upstream a request is for."""
from __future__ import annotations

import functools
import ipaddress


def host_matches(pattern: str, host: str) -> bool:
    """Exact host, or a `*.` wildcard that matches one or more labels below its domain."""
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:]) and len(host) > len(pattern) - 1
    return host == pattern


def match_connection(connections, host: str, port: int):
    """The first connection whose hosts (and ports, when it lists any) match, or None."""
    for conn in connections:
        if conn.ports and port not in conn.ports:
            continue
        if any(host_matches(p, host) for p in conn.hosts):
            return conn
    return None


@functools.lru_cache(maxsize=1024)
def is_loopback_host(host: str | None) -> bool:
    """localhost or a loopback address: traffic that never leaves the machine."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
