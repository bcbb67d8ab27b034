"""JSON of any depth, read without reaching a recursion limit.

A body can nest JSON thousands of levels deep. The masker, the transcript and the replay
tool walk parsed JSON recursively (and orjson writes at most 255 levels), so they treat
JSON deeper than MAX_DEPTH as text. `loads` parses and checks the depth without recursing.
"""
from __future__ import annotations

import json
import re

import orjson

MAX_DEPTH = 200
DEPTH_ERROR = re.compile(r"depth limit|recursion", re.IGNORECASE)  # orjson's words for "too deep to parse"


def depth_exceeds(value, limit: int = MAX_DEPTH) -> bool:
    """True when containers nest more than `limit` levels. Iterative: any depth."""
    stack = [(value, 0)]
    while stack:
        v, d = stack.pop()
        if isinstance(v, dict):
            v = v.values()
        elif not isinstance(v, list):
            continue
        if d >= limit:
            return True
        stack.extend((item, d + 1) for item in v if isinstance(item, (dict, list)))
    return False


def loads(data: bytes | str, limit: int = MAX_DEPTH):
    """The parsed JSON (as json.loads gives it), or None when it is not JSON or nests deeper
    than `limit` levels. orjson, which parses without recursing (and stops at 1024 levels),
    measures the depth first; json then parses what is shallow enough, keeping big integers."""
    try:
        if depth_exceeds(orjson.loads(data), limit):
            return None
    except orjson.JSONDecodeError as e:
        if DEPTH_ERROR.search(str(e)):
            return None
        # orjson refuses some JSON that json reads (NaN, lone surrogates): json is tried below
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    return None if depth_exceeds(value, limit) else value
