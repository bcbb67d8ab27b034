"""Hosts that never leave the machine. Which registered connection a destination is:
recorder/policy/destinations.py."""
from __future__ import annotations

import functools

from recorder.policy.destinations import canonical_host, ip_literal


@functools.lru_cache(maxsize=1024)
def is_loopback_host(host: str | None) -> bool:
    """localhost or a loopback address, in any spelling: traffic that never leaves the machine."""
    if not host:
        return False
    host = canonical_host(host)
    if host == "localhost":
        return True
    ip = ip_literal(host)
    return ip is not None and ip.is_loopback
