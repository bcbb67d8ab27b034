"""How the config's sections are declared, checked and walked.

A section is a frozen dataclass whose fields are declared with `key(...)` (or `section(...)`): each
field carries its kind (type, allowed values, message; validators.py), its default and its doc.
`table(cls)` reads those fields into a _Table that checks a TOML table and builds `cls`. So each
key's default lives once, on its field, and the schema, the dataclass and the docs
(recorder/config/docs.py) all read it from there.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
from dataclasses import dataclass
from typing import Any, Callable, Iterator

from recorder.config.presets import PresetError, apply_preset
from recorder.config.validators import ConfigError, _join, _Kind

REQUIRED: Any = dataclasses.MISSING  # a key without a default
EMPTY_TABLE = object()  # a missing section is read as an empty table: its keys' defaults apply

_SPEC = "wiretrail.config.key"  # the field metadata entry that holds a key's _Spec


@dataclass(frozen=True)
class Key:
    """One key of a table: its name, kind (type, allowed values, message), default and doc."""

    name: str
    kind: _Kind
    default: Any = REQUIRED
    doc: str = ""  # what the key means, in Markdown: the reference table's "Meaning" column
    rule: str = ""  # a rule a check across keys enforces, for the docs' "Allowed" column
    only_kind: str | None = None  # a [[connections]] key that only a connection of this kind may set

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class _Spec:
    kind: Any  # a _Kind, or a _SectionOf (a section: a missing table is read as an empty one)
    doc: str
    rule: str
    only_kind: str | None


def key(kind: _Kind, default: Any = REQUIRED, doc: str = "", *, rule: str = "",
        only_kind: str | None = None) -> Any:
    """A dataclass field that is a config key. Without `default` the key is required."""
    spec = _Spec(kind, doc, rule, only_kind)
    return dataclasses.field(default=default, metadata={_SPEC: spec})


def section(cls: type, doc: str = "", *, check: Callable[[Any, str], None] | None = None) -> Any:
    """A dataclass field that is a section ([storage] ...), a table of `cls`'s keys. Left out of the
    file, it is read as an empty table; built from code, it defaults to `cls()` when it can be."""
    spec = _Spec(_SectionOf(cls, check), doc, "", None)
    if any(k.required for k in keys_of(cls)):
        return dataclasses.field(metadata={_SPEC: spec})
    return dataclasses.field(default_factory=cls, metadata={_SPEC: spec})


@dataclass(frozen=True)
class _SectionOf:
    """A section's table, before its name is known (its message says "a table ([name])")."""

    cls: type
    check: Callable[[Any, str], None] | None


def keys_of(cls: type) -> tuple[Key, ...]:
    """The keys a dataclass declares, in field order (fields without `key(...)` are not keys)."""
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get(_SPEC)
        if spec is None:
            continue
        kind, default = spec.kind, f.default
        if isinstance(kind, _SectionOf):
            kind, default = table(kind.cls, check=kind.check, expected=f"a table ([{f.name}])"), EMPTY_TABLE
        out.append(Key(f.name, kind, default, spec.doc, spec.rule, spec.only_kind))
    return tuple(out)


class _Table(_Kind):
    """A TOML table with a fixed set of keys, built into `make(**values)`."""

    def __init__(self, make: Callable[..., Any], keys: tuple[Key, ...], *,
                 check: Callable[[Any, str], None] | None = None, expected: str = "a table"):
        self.make, self.keys, self.check, self.expected = make, keys, check, expected
        self.by_name = {k.name: k for k in keys}

    def convert(self, value, at, ctx):
        if not isinstance(value, dict):
            raise self.bad(at, value)
        for name in value:
            if name not in self.by_name:
                raise _unknown_key(name, at, tuple(self.by_name), ctx.root)
        values = {}
        for key in self.keys:
            path = _join(at, key.name)
            if key.name in value:
                values[key.name] = key.kind.convert(value[key.name], path, ctx)
            elif key.default is REQUIRED:
                raise ConfigError(f"missing; expected {key.kind.expected}", key=path)
            elif key.default is EMPTY_TABLE:
                values[key.name] = key.kind.convert({}, path, ctx)
            else:
                values[key.name] = key.default
        built = self.make(**values)
        if self.check:
            self.check(built, at)
        return built


def table(cls: type, *, check: Callable[[Any, str], None] | None = None, expected: str = "a table") -> _Table:
    """The table of a dataclass declared with `key(...)` fields."""
    return _Table(cls, keys_of(cls), check=check, expected=expected)


class _PresetTable(_Table):
    """A [[connections]] table, with a `preset` filled in first (recorder/config/presets.py)."""

    def convert(self, value, at, ctx):
        if isinstance(value, dict) and "preset" in value:
            self.by_name["preset"].kind.convert(value["preset"], _join(at, "preset"), ctx)  # a known one?
            try:
                value = apply_preset(value, at)
            except PresetError as e:
                raise ConfigError(e.problem, key=e.key) from None
        return super().convert(value, at, ctx)


class _Tables(_Kind):
    """An array of tables ([[name]]); `unique` names a key whose values must differ."""

    def __init__(self, table: _Table, expected: str, *, unique: str | None = None,
                 check: Callable[[tuple, str], None] | None = None):
        self.table, self.expected, self.unique, self.check = table, expected, unique, check

    def convert(self, value, at, ctx):
        if not isinstance(value, list):
            raise self.bad(at, value)
        items = tuple(self.table.convert(v, f"{at}[{i}]", ctx) for i, v in enumerate(value))
        if self.unique:
            seen: dict[Any, int] = {}
            for i, item in enumerate(items):
                v = getattr(item, self.unique)
                if v in seen:
                    raise ConfigError(f'{json.dumps(v)} is already used by {at}[{seen[v]}]; '
                                      f"each {self.unique} must be unique", key=f"{at}[{i}].{self.unique}")
                seen[v] = i
        if self.check:
            self.check(items, at)
        return items


# -- walking the schema ------------------------------------------------------------------------

def walk(table: _Table, at: str = "") -> Iterator[tuple[str, Key]]:
    """Every key under `table` as (path, Key); array-of-table items appear as "connections[]"."""
    for key in table.keys:
        path = _join(at, key.name)
        yield path, key
        if isinstance(key.kind, _Table):
            yield from walk(key.kind, path)
        elif isinstance(key.kind, _Tables):
            yield from walk(key.kind.table, path + "[]")


def _section_label(path: str) -> str:
    """"connections[].name" -> "[[connections]]", "storage.dir" -> "[storage]", "storage" -> top level."""
    parent = path.rpartition(".")[0]
    if not parent:
        return "the top level"
    return f"[[{parent[:-2]}]]" if parent.endswith("[]") else f"[{parent}]"


def _unknown_key(name: str, at: str, known: tuple[str, ...], root: _Table | None) -> ConfigError:
    path = _join(at, name)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean {json.dumps(close[0])}?"
    else:
        # A right name in the wrong section ("fsync" at the top level) or a typo of one.
        elsewhere = {p.rpartition(".")[2]: p for p, _ in walk(root)} if root else {}
        close = difflib.get_close_matches(name, list(elsewhere), n=1, cutoff=0.75)
        if close and close[0] == name:
            hint = f"it belongs in {_section_label(elsewhere[name])}"
        elif close:
            hint = f"did you mean {json.dumps(close[0])} in {_section_label(elsewhere[close[0]])}?"
        else:
            hint = "known keys here: " + ", ".join(known)
    return ConfigError(f"unknown key; {hint}", key=path)
