"""`wiretrail ls [DIR]`: a table of the recorded sessions, newest last."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from recorder.reader import iter_session_files, read_session, summarize

DEFAULT_DIR = "sessions"


class StoreError(Exception):
    """The session store cannot be found or named; the message says what to do."""


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ls",
        help="list recorded sessions",
        description="List the sessions in a session store, newest last.",
    )
    p.add_argument("dir", nargs="?", metavar="DIR", help=f"the session store (storage.dir); default ./{DEFAULT_DIR}")
    p.add_argument("--config", metavar="PATH", help="take the store from storage.dir of this gateway config")


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


HEADERS = ("SESSION", "START (UTC)", "DURATION", "SUB", "CLIENT", "EXCHANGES", "BYTES", "STATE")
RIGHT = {"EXCHANGES", "BYTES"}


def table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]

    def fmt(cells):
        out = [c.rjust(w) if h in RIGHT else c.ljust(w) for c, w, h in zip(cells, widths, HEADERS)]
        return "  ".join(out).rstrip()

    return [fmt(HEADERS)] + [fmt(r) for r in rows]


def run(args: argparse.Namespace) -> int:
    try:
        d = store_dir(args.dir, args.config)
    except StoreError as e:
        print(f"wiretrail ls: {e}", file=sys.stderr)
        return 2
    summaries = [summarize(read_session(f)) for f in iter_session_files(d)]
    if not summaries:
        print(f"no sessions in {d}")
        return 0
    summaries.sort(key=lambda s: (s.start if s.start is not None else float("-inf"), str(s.session_id or s.path)))
    rows = []
    unauthenticated = False
    for s in summaries:
        sub = s.sub or "-"
        if s.authenticated is False:
            sub += "*"
            unauthenticated = True
        rows.append(
            (
                s.session_id or s.path.name,
                iso_utc(s.start),
                human_duration(s.duration),
                sub,
                s.client_ip or "-",
                str(s.exchanges),
                human_bytes(s.bytes),
                s.state,
            )
        )
    for line in table([tuple(safe(c) for c in r) for r in rows]):
        print(line)
    if unauthenticated:
        print("* not authenticated: recorded without a verified identity")
    return 0
