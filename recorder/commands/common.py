"""Helpers the `wiretrail` subcommands share: finding the session store and a session in it,
and printing recorded text safely (escaped, masked again with today's rules)."""
from __future__ import annotations

import calendar
import re
import sys
import time
from pathlib import Path

from recorder.forensics.reader import SessionRead
from recorder.store import format_v1

DEFAULT_DIR = "sessions"


class StoreError(Exception):
    """The session store cannot be found or named; the message says what to do."""


class SessionNotFound(Exception):
    """No session by that path, id or id prefix; the message says what to do."""


def add_session_arguments(p) -> None:
    """SESSION, --dir and --config: what find_session looks a session up with."""
    p.add_argument("session", metavar="SESSION", help="a session file, or a session id (or a unique prefix of one)")
    p.add_argument("--dir", metavar="DIR", help="the session store to look the id up in; default ./sessions")
    p.add_argument("--config", metavar="PATH", help="look the id up in storage.dir of this gateway config")


def find_session(session: str, dir_arg: str | None, config_arg: str | None) -> Path:
    """A path as given, or the file of a session id (or unique id prefix) in the store."""
    as_path = Path(session)
    if as_path.is_file():
        return as_path
    if as_path.suffix or "/" in session:
        raise SessionNotFound(f"{session}: no such file")
    try:
        d = store_dir(dir_arg, config_arg)
    except StoreError as e:
        raise SessionNotFound(f"cannot look up session {session}: {e}") from e
    want = session.upper()
    exact = list(d.rglob(want + format_v1.FILE_SUFFIX))
    if exact:
        return sorted(exact)[0]
    matches = sorted(f for f in d.rglob(want + "*" + format_v1.FILE_SUFFIX) if f.is_file())
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise SessionNotFound(f"no session {session} in {d} (wiretrail ls {d} lists them)")
    names = ", ".join(m.name[: -len(format_v1.FILE_SUFFIX)] for m in matches[:5])
    raise SessionNotFound(f"{session} matches {len(matches)} sessions in {d} ({names}...): give more of the id")


def store_dir(dir_arg: str | None, config_arg: str | None) -> Path:
    """The session store from DIR or --config (default ./sessions). Raises StoreError."""
    if dir_arg and config_arg:
        raise StoreError("give either DIR or --config, not both")
    if config_arg:
        from recorder.config import ConfigError, load_config

        try:
            d = Path(load_config(config_arg, read_secrets=False).storage.dir)
        except (ConfigError, OSError) as e:
            raise StoreError(str(e)) from e
    else:
        d = Path(dir_arg or DEFAULT_DIR)
    if not d.is_dir():
        hint = "" if dir_arg or config_arg else " (pass the store: wiretrail ls DIR, or --config gateway.toml)"
        raise StoreError(f"no session store at {d}: no such directory{hint}")
    return d


# Recorded text comes from the network: control characters are shown escaped, so that a
# body or a header cannot move the cursor or retitle the operator's terminal.
_ESCAPES = {i: f"\\x{i:02x}" for i in [*range(0x20), *range(0x7F, 0xA0)]}
_ESCAPES.update({0x0A: "\\n", 0x0D: "\\r", 0x09: "\\t"})


def safe(text: str) -> str:
    return text.translate(_ESCAPES)


def iso_utc(ts: float | None, *, ms: bool = False) -> str:
    if ts is None:
        return "-"
    text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts))
    if ms:
        text += f".{int(ts * 1000) % 1000:03d}"
    return text + "Z"


def human_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m{s % 60:02d}s"


def human_bytes(n: int) -> str:
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"  # not reached


_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_FORMATS = ("%Y-%m-%d", "%Y-%m-%dT%H:%M", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d %H:%M:%S")


def parse_time(text: str, *, now: float | None = None) -> float:
    """Unix seconds from an ISO date/time (UTC; a trailing Z is allowed) or "<n><s|m|h|d|w>" ago."""
    t = text.strip()
    m = _RELATIVE.fullmatch(t)
    if m:
        return (time.time() if now is None else now) - float(m.group(1)) * _UNITS[m.group(2)]
    for fmt in _FORMATS:
        try:
            return float(calendar.timegm(time.strptime(t.removesuffix("Z"), fmt)))
        except ValueError:
            continue
    raise ValueError(f"{text!r} is not a time: give 2026-01-31, 2026-01-31T14:00 (UTC) or 2h / 3d / 45m (ago)")


def masked_for_output(read: SessionRead, config: str | None) -> SessionRead | None:
    """The session with today's rules applied to everything that will be printed."""
    from recorder.config import ConfigError
    from recorder.masking import RuleError
    from recorder.masking.output import masked_read, output_masker

    try:
        masker, warnings = output_masker(config)
    except (ConfigError, RuleError, OSError) as e:
        print(f"wiretrail: {e}", file=sys.stderr)
        return None
    for w in warnings:
        print(f"wiretrail: warning: {safe(w)}", file=sys.stderr)
    return masked_read(read, masker)


