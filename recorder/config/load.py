"""Loading the config: a TOML file (or the embedded demo default) checked against SCHEMA into a
frozen GatewayConfig, or a ConfigError naming the file, the key path and what was expected."""
from __future__ import annotations

import os
import re
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from recorder.auth.dev_secret import ensure_dev_secret
from recorder.config.model import SCHEMA, GatewayConfig
from recorder.config.validators import ConfigError, _Context

EMBEDDED_SOURCE = "<embedded default>"
EMBEDDED_DEV_SECRET = "keys/dev-identity.secret"  # the embedded default's hs256_secret file

# The demo config shipped in the package (recorder/config/demo.toml); docs/configuration.md shows it.
EMBEDDED_DEFAULT = (resources.files("recorder.config") / "demo.toml").read_text(encoding="utf-8")

_TOML_AT = re.compile(r"(.*) \(at line (\d+), column (\d+)\)\Z", re.DOTALL)


def _parse(text: str, source: str, base_dir: Path, read_secrets: bool = True) -> dict[str, Any]:
    """The checked sections as keyword arguments for GatewayConfig (without source)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _TOML_AT.match(str(e))
        where = f"line {m.group(2)}, column {m.group(3)}: " if m else ""
        raise ConfigError(f"{where}invalid TOML: {m.group(1) if m else e}", source=source) from None
    ctx = _Context(base_dir=Path(base_dir).absolute(), root=SCHEMA)
    try:
        values = SCHEMA.convert(data, "", ctx)
        if read_secrets:
            for ref in ctx.secrets:  # read once now, so an unreadable secret stops start-up
                ref.read()
    except ConfigError as e:
        raise ConfigError(e.problem, key=e.key, source=source) from None
    return values


def parse_config(text: str, *, source: str, base_dir: Path) -> GatewayConfig:
    """Check TOML text. `source` names it in messages; relative paths start at `base_dir`."""
    return GatewayConfig(**_parse(text, source, base_dir), source=Path(source))


def load_config(
    path: str | os.PathLike | None, *, cwd: Path | None = None, read_secrets: bool = True
) -> GatewayConfig:
    """The config from `path`, or the embedded default when `path` is None. A relative `path`,
    and the embedded default's relative paths, start at `cwd` (default: the process's cwd).
    Read-only tools (ls, show) pass read_secrets=False: they need no upstream credential."""
    here = Path(cwd if cwd is not None else Path.cwd()).absolute()
    if path is None:
        if read_secrets:
            ensure_dev_secret(here / EMBEDDED_DEV_SECRET)
        return GatewayConfig(**_parse(EMBEDDED_DEFAULT, EMBEDDED_SOURCE, here, read_secrets), source=None)
    if not os.fspath(path):
        raise ConfigError("the config path is empty; give --set wiretrail_config=PATH, "
                          "or leave it unset for the embedded demo default")
    file = Path(path).expanduser()
    if not file.is_absolute():
        file = here / file
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {file}") from None
    except IsADirectoryError:
        raise ConfigError(f"the config path is a directory, not a file: {file}") from None
    except OSError as e:
        raise ConfigError(f"cannot read the config file {file}: {e.strerror or type(e).__name__}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (bad byte at offset {e.start})", source=str(file)) from None
    return GatewayConfig(**_parse(text, str(file), file.parent, read_secrets), source=file)
