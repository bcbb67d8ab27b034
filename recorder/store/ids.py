"""Session ids: sortable by time, unguessable.

26 characters of Crockford base32: a 48-bit millisecond timestamp, then 80 random bits
(the ULID layout), so a directory listing sorts sessions by start time.
"""
from __future__ import annotations

import os
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_PAIRS = [a + b for a in _ALPHABET for b in _ALPHABET]  # 10 bits at a time: 13 steps, not 26
# Random bytes drawn 4 KiB at a time: os.urandom lets go of the GIL, and on the event loop each
# new session then waited for the writer thread to give it back.
_POOL = 4096
_random = b""
_used = 0
_lock = threading.Lock()


def _random_bytes(n: int) -> bytes:
    global _random, _used
    with _lock:
        if _used + n > len(_random):
            _random, _used = os.urandom(_POOL), 0
        _used += n
        return _random[_used - n:_used]


def _forget() -> None:
    global _random, _used
    _random, _used = b"", 0


os.register_at_fork(after_in_child=_forget)  # a forked child never reuses the parent's bytes


def new_session_id(now: float | None = None) -> str:
    ms = int((time.time() if now is None else now) * 1000) & ((1 << 48) - 1)
    value = (ms << 80) | int.from_bytes(_random_bytes(10), "big")
    return "".join([_PAIRS[(value >> shift) & 1023] for shift in range(120, -1, -10)])
