"""docs/configuration.md's reference tables, generated from the schema.

Where the docs hold a line `<!-- reference: SECTION -->` (or `<!-- reference: connections postgres -->`
for the keys only a kind of connection takes), the table under it is generated whole: one row
`| key | type | default | allowed | meaning |` per key, every cell from the key's declaration in
recorder/config/model.py (its kind gives the type and allowed values, its field the default, its doc
the meaning). Each section's heading (`### [storage]: ...`) takes the section's doc. A test keeps
the docs in step (tests/unit/test_config.py); `python -m recorder.config.docs` rewrites them.
"""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from recorder.config.model import SCHEMA, iter_keys
from recorder.config.schema import EMPTY_TABLE, REQUIRED, Key, _Table, _Tables
from recorder.config.validators import (
    _Bool, _Host, _HostPort, _Kind, _ListOf, _Number, _OneOf, _PathValue, _QueryName, _Regex, _Secret, _Size, _Text,
)

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
_MARKER = re.compile(r"^<!-- reference: (?P<section>[a-z_]+)(?: (?P<kind>[a-z]+))? -->\n\Z")
_HEADING = re.compile(r"^### `\[(?P<section>[a-z_]+)\]`(?::.*)?\n\Z")
HEADER = "| Key | Type | Default | Allowed | Meaning |\n|---|---|---|---|---|\n"


def _number_range(k: _Number) -> str:
    lo = f"({k.gt}" if k.gt is not None else (f"[{k.ge}" if k.ge is not None else None)
    if lo is not None and k.le is not None:
        return f"{lo}, {k.le}]"
    if k.gt is not None:
        return f"> {k.gt}"
    if k.ge is not None:
        return f">= {k.ge}"
    return ""


def type_and_allowed(kind: _Kind) -> tuple[str, str]:
    if isinstance(kind, _Bool):
        return "bool", ""
    if isinstance(kind, _OneOf):
        return "string", ", ".join(f"`{json.dumps(v)}`" for v in kind.values)
    if isinstance(kind, _Number):
        return ("integer" if kind.integer else "number"), _number_range(kind)
    if isinstance(kind, _Size):
        return "size", ">= 0"
    if isinstance(kind, _Secret):
        return "secret", "`env:`, `file:`" + (', `"none"`' if kind.allow_none else "")
    if isinstance(kind, _PathValue):
        return "path", ""
    if isinstance(kind, _Regex):
        return "string", "a Python `re` pattern that compiles and does not match the empty string"
    if isinstance(kind, (_Host, _HostPort, _QueryName)):
        return "string", kind.expected
    if isinstance(kind, _Text):
        return "string", (kind.expected if kind.pattern else "non-empty")
    if isinstance(kind, _ListOf):
        item_type, item_allowed = type_and_allowed(kind.item)
        allowed = item_allowed + (f", at least {kind.min_items}" if kind.min_items else "")
        return f"array of {item_type}s", allowed
    if isinstance(kind, _Tables):
        return "array of tables", (f"`{kind.unique}` unique" if kind.unique else "")
    if isinstance(kind, _Table):
        return "table", ""
    raise TypeError(f"no docs for {type(kind).__name__}")


def _default_text(key: Key) -> str:
    d = key.default
    if d is REQUIRED:
        return "required"
    if d is EMPTY_TABLE:
        return "(its keys' defaults)"
    if d is None:
        return "none"
    if isinstance(d, bool):
        return f"`{'true' if d else 'false'}`"
    if isinstance(key.kind, _Size) and d:
        for unit, size in (("g", 1 << 30), ("m", 1 << 20), ("k", 1 << 10)):
            if d % size == 0:
                return f'`{d}` (`"{d // size}{unit}"`)'
    if isinstance(d, (int, float)):
        return f"`{d:g}`" if isinstance(d, float) else f"`{d}`"  # 5.0 is written 5
    if isinstance(d, tuple):
        return "`[]`" if not d else "`" + json.dumps([str(x) for x in d]) + "`"
    return f"`{json.dumps(d)}`"


def row(path: str, key: Key) -> str:
    type_text, allowed = type_and_allowed(key.kind)
    if key.rule:  # what a check across keys adds (checks.py)
        allowed = f"{allowed}; {key.rule}" if allowed else key.rule
    cells = [f"`{path}`", type_text, _default_text(key), allowed, key.doc]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells).replace(" |  |", " | |") + " |\n"


def table_keys(section: str, kind: str | None = None) -> list[tuple[str, Key]]:
    """The keys of one reference table: a section's (sections themselves are headings, not rows);
    for connections, the keys every connection takes, or (kind) those only that kind takes."""
    out = []
    for path, key in iter_keys():
        if isinstance(key.kind, _Table):
            continue
        if path == section or path.startswith((section + ".", section + "[].")):
            if section != "connections" or key.only_kind == kind:
                out.append((path, key))
    return out


def table(section: str, kind: str | None = None) -> str:
    return HEADER + "".join(row(path, key) for path, key in table_keys(section, kind))


def render(text: str) -> str:
    """The docs with every marked reference table, and each section's heading, generated."""
    sections = {k.name: k for k in SCHEMA.keys}
    lines = text.splitlines(keepends=True)
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        heading, marker = _HEADING.match(line), _MARKER.match(line)
        if heading and heading["section"] in sections and sections[heading["section"]].doc:
            line = f"### `[{heading['section']}]`: {sections[heading['section']].doc}\n"
        out.append(line)
        i += 1
        if marker:
            while i < len(lines) and lines[i].startswith("|"):  # the table as it stands: replaced
                i += 1
            out.append(table(marker["section"], marker["kind"]))
    return "".join(out)


def markers(text: str) -> list[tuple[str, str | None]]:
    return [(m["section"], m["kind"]) for m in map(_MARKER.match, text.splitlines(keepends=True)) if m]


def problems(text: str) -> list[str]:
    """What is wrong with the docs: a key in no generated table (or in two), a table out of step."""
    shown: dict[str, int] = {}
    for section, kind in markers(text):
        keys = table_keys(section, kind)
        if not keys:
            return [f"<!-- reference: {section} {kind or ''} -->: no such section in the schema"]
        for path, _ in keys:
            shown[path] = shown.get(path, 0) + 1
    out = [f"{path}: in the schema, in no reference table of docs/configuration.md"
           for path, key in iter_keys() if not isinstance(key.kind, _Table) and path not in shown]
    out += [f"{path}: in {n} reference tables" for path, n in shown.items() if n > 1]
    if render(text) != text:
        out.append("reference tables out of step with the schema: python -m recorder.config.docs")
    return out


def main(argv: list[str]) -> int:
    DOC.write_text(render(DOC.read_text()))
    left = problems(DOC.read_text())
    for p in left:
        print(p, file=sys.stderr)
    return 1 if left else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
