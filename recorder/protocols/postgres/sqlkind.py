"""Which SQL only reads: the replay's read-only default runs nothing else.

A small tokenizer (comments, quoted strings, dollar quotes and identifiers are skipped) finds
each statement's keywords. A statement reads when it starts with SELECT, WITH, VALUES, TABLE,
SHOW or EXPLAIN (without ANALYZE) and no keyword that writes appears in it (INSERT, UPDATE,
DELETE, MERGE, INTO, COPY ... FROM, locking clauses). Transaction control (BEGIN, COMMIT,
ROLLBACK ...) is "control". Everything else writes (SET too: it could make a session read-write).
A function called by a SELECT could still write: the replay runs each read in a READ ONLY
transaction that it rolls back, so the database refuses that too.
"""
from __future__ import annotations

import re

READ_FIRST = {"select", "with", "values", "table", "show", "explain"}
WRITES = {"insert", "update", "delete", "merge", "into", "truncate", "copy", "create", "drop", "alter", "grant",
          "revoke", "vacuum", "analyze", "lock", "call", "do", "refresh", "cluster", "reindex", "comment",
          "security", "import", "load", "notify", "nextval", "setval"}

_TOKEN = re.compile(
    r"""--[^\n]*|/\*.*?\*/|'(?:[^']|'')*'|"(?:[^"]|"")*"|(\$[A-Za-z_0-9]*\$).*?\1|([A-Za-z_][A-Za-z_0-9$]*)|(;)""",
    re.DOTALL,
)


def _statements(sql: str) -> list[list[str]]:
    out: list[list[str]] = [[]]
    for m in _TOKEN.finditer(sql):
        if m.group(3):
            out.append([])
        elif m.group(2):
            out[-1].append(m.group(2).lower())
    return [s for s in out if s]


def kind(sql: str) -> str:
    """"read", "control" or "write" for one SQL text (all its statements)."""
    kinds = set()
    for words in _statements(sql):
        first = words[0]
        if first in ("begin", "start", "commit", "end", "rollback", "savepoint", "release", "abort"):
            kinds.add("control")
        elif first in READ_FIRST and not (set(words) & WRITES) and not ("for" in words and "share" in words):
            kinds.add("read")
        else:
            kinds.add("write")
    if not kinds:
        return "read"  # an empty query
    if "write" in kinds:
        return "write"
    return "read" if "read" in kinds else "control"
