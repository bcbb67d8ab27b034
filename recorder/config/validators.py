"""Config values: the error every config problem raises, secret references, and the kinds of
value a key may hold (how a TOML value is checked and converted, and the message when it is not).

Generic: nothing here knows a section or a key; recorder/config/model.py declares the keys with them.
"""
from __future__ import annotations

import ipaddress
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from recorder.auth.credentials import query_key


class ConfigError(ValueError):
    """A config problem. str(e) is "<source>: <key>: <problem>", with the parts that apply."""

    def __init__(self, problem: str, *, key: str | None = None, source: str | None = None):
        self.problem, self.key, self.source = problem, key, source
        super().__init__(": ".join(part for part in (source, key, problem) if part))


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


@dataclass(frozen=True)
class SecretRef:
    """A config value "env:NAME" or "file:PATH". It holds the reference, never the secret."""

    key: str  # config key path, for messages: "connections[0].credential"
    ref: str  # the text as written, e.g. "env:OPENAI_API_KEY"
    base_dir: Path | None = field(default=None, repr=False)  # where a relative file: path starts

    @property
    def path(self) -> Path | None:
        """The file a file: reference names (absolute), or None for env:."""
        if not self.ref.startswith("file:"):
            return None
        path = Path(self.ref[len("file:"):]).expanduser()
        return path if path.is_absolute() else (self.base_dir or Path.cwd()) / path

    def read(self) -> str:
        """The secret, read now, without surrounding whitespace. Raises ConfigError if unreadable
        or empty. Error texts name the key and the reference, never the content."""
        if self.ref.startswith("env:"):
            name = self.ref[len("env:"):]
            value = os.environ.get(name)
            if value is None:
                raise self._unreadable(f"the environment variable {name} is not set")
            where = f"the environment variable {name}"
        elif self.ref.startswith("file:"):
            path = self.path
            # `from None`: a decode error's text quotes bytes of the file
            try:
                value = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise self._unreadable(f"no such file: {path}") from None
            except UnicodeDecodeError:
                raise self._unreadable(f"{path} is not UTF-8 text") from None
            except OSError as e:
                raise self._unreadable(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
            where = str(path)
        else:
            raise self._unreadable('not an "env:NAME" or "file:PATH" reference')
        value = value.strip()
        if not value:
            raise self._unreadable(f"{where} is empty")
        return value

    def _unreadable(self, why: str) -> ConfigError:
        return ConfigError(f'cannot read secret "{self.ref}": {why}', key=self.key)


# -- value kinds: how a TOML value is checked and converted, and the message when it is not ---


@dataclass
class _Context:
    base_dir: Path  # relative paths start here
    secrets: list[SecretRef] = field(default_factory=list)  # read after the whole file checks out
    root: Any = None  # the whole schema (a _Table), for "it belongs in [storage]" hints


_SHOW_MAX = 40  # longer strings are described by length only: a pasted secret must not echo


def _describe(value: Any, show: bool = True) -> str:
    """A TOML value for a message. show=False gives its type only (secret keys)."""
    if isinstance(value, bool):
        return ("true" if value else "false") if show else "a boolean"
    if isinstance(value, int):
        return str(value) if show else "an integer"
    if isinstance(value, float):
        return repr(value) if show else "a float"
    if isinstance(value, str):
        if not show:
            return "a string"
        if len(value) > _SHOW_MAX:
            return f"a string of {len(value)} characters"
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "an array" if value else "an empty array"
    if isinstance(value, dict):
        return "a table"
    return "a date/time"


def _join(at: str, name: str) -> str:
    return f"{at}.{name}" if at else name


class _Kind:
    expected: str = ""  # the message: "<key>: expected <expected>, got <value>"
    secret = False  # never show the value

    def convert(self, value: Any, at: str, ctx: _Context) -> Any:
        raise NotImplementedError

    def bad(self, at: str, value: Any) -> ConfigError:
        return ConfigError(f"expected {self.expected}, got {_describe(value, not self.secret)}", key=at)


class _Bool(_Kind):
    expected = "true or false"

    def convert(self, value, at, ctx):
        if type(value) is not bool:
            raise self.bad(at, value)
        return value


class _OneOf(_Kind):
    """One of some strings: `_OneOf("a", "b")`, or `_OneOf(NAMES)` with a tuple (or dict) the code
    that acts on the value owns, kept as it is so that the two cannot drift apart."""

    def __init__(self, *values: Any):
        if len(values) == 1 and isinstance(values[0], (tuple, dict)):
            values = values[0]
        self.values = values
        self.expected = "one of " + ", ".join(json.dumps(v) for v in values)

    def convert(self, value, at, ctx):
        if not isinstance(value, str) or value not in self.values:
            raise self.bad(at, value)
        return value


class _Number(_Kind):
    """A finite number (int accepted, bool not) in a range; integer=True wants an int."""

    def __init__(self, *, gt=None, ge=None, le=None, integer=False, unit="seconds", note="", expected=""):
        self.gt, self.ge, self.le, self.integer = gt, ge, le, integer
        if not expected:
            expected = ("an integer number" if integer else "a number") + (f" of {unit}" if unit else "")
            if gt is not None and le is not None:
                expected += f" in ({gt}, {le}]"
            elif gt is not None:
                expected += f" > {gt}"
            elif ge is not None and le is not None:
                expected += f" in {ge}..{le}"
            elif ge is not None:
                expected += f" >= {ge}"
            expected += note
        self.expected = expected

    def convert(self, value, at, ctx):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.bad(at, value)
        if self.integer and not isinstance(value, int):
            raise self.bad(at, value)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.bad(at, value)
        if ((self.gt is not None and not value > self.gt) or (self.ge is not None and not value >= self.ge)
                or (self.le is not None and not value <= self.le)):
            raise self.bad(at, value)
        return int(value) if self.integer else float(value)


_SIZE = re.compile(r"(\d+)\s*([kmg]?)", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


class _Size(_Kind):
    """Bytes: an integer >= 0, or a string "256k" / "1m" / "1g" (binary units)."""

    def __init__(self, note: str = ""):
        self.expected = f'a byte count >= 0: an integer, or a string like "256k", "1m", "1g"{note}'

    def convert(self, value, at, ctx):
        if type(value) is int and value >= 0:
            return value
        if isinstance(value, str):
            m = _SIZE.fullmatch(value.strip())
            if m:
                return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
        raise self.bad(at, value)


class _Text(_Kind):
    def __init__(self, expected: str = "a non-empty string", pattern: str | None = None):
        self.expected = expected
        self.pattern = re.compile(pattern) if pattern else None

    def convert(self, value, at, ctx):
        if not isinstance(value, str) or not value.strip():
            raise self.bad(at, value)
        if self.pattern and not self.pattern.fullmatch(value):
            raise self.bad(at, value)
        return value


_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


class _Host(_Kind):
    expected = ('a lowercase host name ("api.openai.com"), a "*." wildcard ("*.example.com") '
                'or an IP address, without scheme or port')

    def convert(self, value, at, ctx):
        if not isinstance(value, str):
            raise self.bad(at, value)
        if value == value.lower():
            if not value.startswith("*."):
                try:
                    ipaddress.ip_address(value)
                    return value
                except ValueError:
                    pass
            name = value[2:] if value.startswith("*.") else value
            if len(name) <= 253 and _HOSTNAME.fullmatch(name):
                return value
        raise self.bad(at, value)


def split_host_port(text: str, default_port: int | None = None) -> tuple[str, int]:
    """("host", port) of "host:port", "[v6]:port" (or "host" with a default port). ValueError if not."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and not rest.startswith(":"):
            raise ValueError(text)
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            host, port_text = text, None
        elif ":" in host:
            raise ValueError(text)  # a bare IPv6 address needs brackets
    if port_text is None:
        if default_port is None:
            raise ValueError(text)
        port = default_port
    elif port_text.isdigit() and 1 <= int(port_text) <= 65535:
        port = int(port_text)
    else:
        raise ValueError(text)
    if not host or any(c.isspace() or c in "/@" for c in host):
        raise ValueError(text)
    return host, port


class _HostPort(_Kind):
    def __init__(self, default_port: int | None, example: str):
        self.default_port = default_port
        self.expected = (f'"host:port" (e.g. "{example}"; an IPv6 address in brackets)'
                         + (f", the port defaults to {default_port}" if default_port else ""))

    def convert(self, value, at, ctx):
        if not isinstance(value, str):
            raise self.bad(at, value)
        try:
            split_host_port(value, self.default_port)
        except ValueError:
            raise self.bad(at, value) from None
        return value


class _QueryName(_Kind):
    """A query parameter name, kept as the credential swap compares it (recorder.auth.credentials)."""

    expected = 'a query parameter name, e.g. "token"'

    def convert(self, value, at, ctx):
        if not isinstance(value, str) or not query_key(value):
            raise self.bad(at, value)
        return query_key(value)


class _PathValue(_Kind):
    expected = "a path (a relative path starts at the config file's directory)"

    def convert(self, value, at, ctx):
        if not isinstance(value, str) or not value.strip():
            raise self.bad(at, value)
        path = Path(value).expanduser()
        return path if path.is_absolute() else ctx.base_dir / path


class _Secret(_Kind):
    """"env:NAME" or "file:PATH" (and "none" where allow_none). Never shows the value."""

    secret = True

    def __init__(self, *, allow_none: bool):
        self.allow_none = allow_none
        self.expected = '"env:NAME" or "file:PATH"' + (' or "none" (record only, nothing injected)'
                                                        if allow_none else "")

    def convert(self, value, at, ctx):
        if not isinstance(value, str):
            raise self.bad(at, value)
        if value == "none":
            if self.allow_none:
                return None
            raise ConfigError('"none" is not allowed here; leave the key out instead', key=at)
        if value.startswith("env:"):
            if not _ENV_NAME.fullmatch(value[len("env:"):]):
                raise ConfigError('expected "env:NAME" with NAME an environment variable name '
                                  "(letters, digits and _, not starting with a digit)", key=at)
        elif value.startswith("file:"):
            if not value[len("file:"):].strip():
                raise ConfigError('expected "file:PATH" with a path after "file:"', key=at)
        else:
            raise ConfigError('secrets never go into the config file; write "env:NAME" (read from an '
                              'environment variable) or "file:PATH" (read from a file, relative to the '
                              "config file's directory)"
                              + (', or "none" to inject nothing (record only)' if self.allow_none else ""),
                              key=at)
        ref = SecretRef(key=at, ref=value, base_dir=ctx.base_dir)
        ctx.secrets.append(ref)
        return ref


class _Regex(_Kind):
    expected = "a regular expression (Python re syntax)"

    def convert(self, value, at, ctx):
        if not isinstance(value, str) or not value:
            raise self.bad(at, value)
        try:
            compiled = re.compile(value)
        except re.error as e:
            raise ConfigError(f"the regular expression does not compile: {e}", key=at) from None
        if compiled.match(""):
            raise ConfigError("the regular expression matches the empty string, so it would match "
                              "everywhere; make it need at least one character", key=at)
        return value


class _ListOf(_Kind):
    def __init__(self, item: _Kind, expected: str, *, min_items: int = 0):
        self.item, self.expected, self.min_items = item, expected, min_items

    def convert(self, value, at, ctx):
        if not isinstance(value, list) or len(value) < self.min_items:
            raise self.bad(at, value)
        return tuple(self.item.convert(v, f"{at}[{i}]", ctx) for i, v in enumerate(value))
