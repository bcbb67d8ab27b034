"""docs/configuration.md's reference tables, from the schema.

Each row is `| key | type | default | allowed | meaning |`. The first four columns are derived
from SCHEMA (recorder/config/__init__.py): the kind of each key gives its type and the values it
allows, the key its default. Only the meaning is written by hand, in the docs. A test keeps the
two in step (tests/unit/test_config.py); `python -m recorder.config.docs` rewrites the derived
columns of every row.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from recorder import config as c

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
_ROW = re.compile(r"^\| `(?P<key>[a-z0-9_\[\].]+)` \|(?P<cells>.*)\|\s*$")


def _number_range(k: c._Number) -> str:
    lo = f"({k.gt}" if k.gt is not None else (f"[{k.ge}" if k.ge is not None else None)
    if lo is not None and k.le is not None:
        return f"{lo}, {k.le}]"
    if k.gt is not None:
        return f"> {k.gt}"
    if k.ge is not None:
        return f">= {k.ge}"
    return ""


def type_and_allowed(kind: c._Kind) -> tuple[str, str]:
    if isinstance(kind, c._Bool):
        return "bool", ""
    if isinstance(kind, c._OneOf):
        return "string", ", ".join(f"`{json.dumps(v)}`" for v in kind.values)
    if isinstance(kind, c._Number):
        return ("integer" if kind.integer else "number"), _number_range(kind)
    if isinstance(kind, c._Size):
        return "size", ">= 0"
    if isinstance(kind, c._Secret):
        return "secret", "`env:`, `file:`" + (', `"none"`' if kind.allow_none else "")
    if isinstance(kind, c._PathValue):
        return "path", ""
    if isinstance(kind, c._Regex):
        return "string", "a Python `re` pattern that compiles and does not match the empty string"
    if isinstance(kind, (c._Host, c._HostPort, c._QueryName)):
        return "string", kind.expected
    if isinstance(kind, c._Text):
        return "string", (kind.expected if kind.pattern else "non-empty")
    if isinstance(kind, c._ListOf):
        item_type, item_allowed = type_and_allowed(kind.item)
        allowed = item_allowed + (f", at least {kind.min_items}" if kind.min_items else "")
        return f"array of {item_type}s", allowed
    if isinstance(kind, c._Tables):
        return "array of tables", (f"`{kind.unique}` unique" if kind.unique else "")
    if isinstance(kind, c._Table):
        return "table", ""
    raise TypeError(f"no docs for {type(kind).__name__}")


def _default_text(key: c.Key) -> str:
    d = key.default
    if d is c._REQUIRED:
        return "required"
    if d is c._EMPTY_TABLE:
        return "(its keys' defaults)"
    if d is None:
        return "none"
    if isinstance(d, bool):
        return f"`{'true' if d else 'false'}`"
    if isinstance(key.kind, c._Size) and d:
        for unit, size in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
            if d % size == 0:
                return f'`{d}` (`"{d // size}{unit}"`)'
    if isinstance(d, (int, float)):
        return f"`{d:g}`" if isinstance(d, float) else f"`{d}`"  # 5.0 is written 5
    if isinstance(d, tuple):
        return "`[]`" if not d else "`" + json.dumps([str(x) for x in d]) + "`"
    return f"`{json.dumps(d)}`"


def derived_cells(path: str, key: c.Key) -> list[str]:
    type_text, allowed = type_and_allowed(key.kind)
    if key.rule:  # what a check across keys adds (_check_connections, _check_anchors ...)
        allowed = f"{allowed}; {key.rule}" if allowed else key.rule
    return [type_text, _default_text(key), allowed.replace("|", "\\|")]


def schema_rows() -> dict[str, list[str]]:
    """Every documented key (sections themselves are headings, not rows) -> its derived cells."""
    out = {}
    for path, key in c.iter_keys():
        if isinstance(key.kind, c._Table):
            continue  # a section: its heading in the docs
        out[path] = derived_cells(path, key)
    return out


def render(text: str) -> str:
    """The docs with the derived columns of every reference row rewritten; meanings kept."""
    rows = schema_rows()
    out = []
    for line in text.splitlines(keepends=True):
        m = _ROW.match(line)
        if m and m["key"] in rows:
            cells = re.split(r"(?<!\\)\|", m["cells"])
            meaning = "|".join(cells[3:]).strip()
            line = f"| `{m['key']}` | " + " | ".join([*rows[m["key"]], meaning]) + " |\n"
            line = line.replace(" |  |", " | |")
        out.append(line)
    return "".join(out)


def documented_keys(text: str) -> list[str]:
    """The keys of the reference rows: a dotted path, or a top-level key of the schema (other
    tables, such as the presets', start with a name in backticks too)."""
    top = {k.name for k in c.SCHEMA.keys}
    return [m["key"] for m in map(_ROW.match, text.splitlines()) if m and ("." in m["key"] or m["key"] in top)]


def problems(text: str) -> list[str]:
    rows = schema_rows()
    found = documented_keys(text)
    out = [f"{k}: in the schema, no row in docs/configuration.md" for k in rows if k not in found]
    out += [f"{k}: a row in docs/configuration.md, not in the schema" for k in found if k not in rows]
    if render(text) != text:
        out.append("derived columns out of step: python -m recorder.config.docs")
    return out


def main(argv: list[str]) -> int:
    DOC.write_text(render(DOC.read_text()))
    left = problems(DOC.read_text())
    for p in left:
        print(p, file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

