"""`wiretrail ls [DIR] [--user U] [--since T] [--until T] [--host H]`: a table of the
recorded sessions, newest last."""
from __future__ import annotations

import argparse
import calendar
import re
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import orjson

from recorder.destinations import canonical_host
from recorder.postgres.transcript import databases
from recorder.reader import SessionSummary, iter_session_files, read_session, summarize
from recorder.ledger import read_ledger
from recorder.store.live import unsealed_state
from recorder.verify import find_ledger

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
    p.add_argument("--user", metavar="USER", help="only sessions of this identity (sub or email)")
    p.add_argument("--since", metavar="TIME", help="only sessions active at or after TIME: 2026-01-31, 2026-01-31T14:00 (UTC), or 2h / 3d / 45m ago")
    p.add_argument("--until", metavar="TIME", help="only sessions that started at or before TIME (same forms as --since)")
    p.add_argument("--host", metavar="HOST", help="only sessions with a request that went to HOST (a name, a subdomain of it, or an address; "
                   "the destination the gateway connected to, not the Host the client named)")
    p.add_argument("--json", action="store_true", help="one JSON object per session, one per line")


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


HEADERS = ("SESSION", "START (UTC)", "DURATION", "IDENTITY", "CLIENT", "AGENT", "RUN", "EXCHANGES", "BYTES", "STATE")
RIGHT = {"EXCHANGES", "BYTES"}


def table(rows: list[tuple[str, ...]], databases: bool = False) -> list[str]:
    headers = HEADERS + (("DATABASE",) if databases else ())
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells):
        out = [c.rjust(w) if h in RIGHT else c.ljust(w) for c, w, h in zip(cells, widths, headers)]
        return "  ".join(out).rstrip()

    return [fmt(headers)] + [fmt(r) for r in rows]


def hosts_of(records: list[dict]) -> set[str]:
    """Where the session's requests went: each record's destination (host and address), not the
    URL the client named; the URL's host only in files from gateways that did not record it."""
    out = set()
    for r in records:
        t = r.get("t")
        dest = r.get("dest") if t in ("http.request", "auth.refused") else r if t == "tunnel" else None
        if isinstance(dest, dict):
            for key in ("host", "address"):
                if isinstance(dest.get(key), str):
                    out.add(canonical_host(dest[key]))
        elif t in ("http.request", "auth.refused") and isinstance(r.get("url"), str):
            try:
                host = urlsplit(r["url"]).hostname
            except ValueError:
                host = None
            if host:
                out.add(canonical_host(host))
        elif t == "pg.connect" and isinstance((r.get("upstream") or {}).get("host"), str):
            out.add(canonical_host(r["upstream"]["host"]))
    return out


def host_matches(hosts: set[str], want: str) -> bool:
    want = canonical_host(want)
    return any(h == want or h.endswith("." + want) for h in hosts)


def _identity_matches(read, want: str) -> bool:
    ident = (read.open_record or {}).get("identity") or {}
    want = want.lower()
    return any(isinstance(ident.get(k), str) and ident[k].lower() == want for k in ("sub", "email"))


def select(d: Path, args) -> list[tuple[SessionSummary, dict]]:
    """(summary, identity) of the sessions the filters keep, oldest first. The identity dict
    also carries "_databases": the database connections the session used."""
    since = parse_time(args.since) if getattr(args, "since", None) else None
    until = parse_time(args.until) if getattr(args, "until", None) else None
    out = []
    for f in iter_session_files(d):
        read = read_session(f)
        if getattr(args, "user", None) and not _identity_matches(read, args.user):
            continue
        dbs = databases(read.records)
        if getattr(args, "host", None) and not (host_matches(hosts_of(read.records), args.host) or args.host in dbs):
            continue
        s = summarize(read)
        if since is not None and (s.end if s.end is not None else float("inf")) < since:
            continue
        if until is not None and (s.start if s.start is not None else float("-inf")) > until:
            continue
        ident = (read.open_record or {}).get("identity") or {}
        out.append((s, dict(ident if isinstance(ident, dict) else {}, _databases=dbs)))
    out.sort(key=lambda x: (x[0].start if x[0].start is not None else float("-inf"), str(x[0].session_id or x[0].path)))
    return out


def run(args: argparse.Namespace) -> int:
    try:
        d = store_dir(args.dir, args.config)
    except StoreError as e:
        print(f"wiretrail ls: {e}", file=sys.stderr)
        return 2
    try:
        selected = select(d, args)
    except ValueError as e:
        print(f"wiretrail ls: {e}", file=sys.stderr)
        return 2
    states = _States(d)
    if args.json:
        for s, ident in selected:
            dbs = ident.pop("_databases", [])
            doc = {
                "session": s.session_id, "path": str(s.path), "start": s.start, "end": s.end, "duration_s": s.duration,
                "identity": ident, "client": s.client, "exchanges": s.exchanges, "bytes": s.bytes,
                "state": states.word(s), "agent": {"name": s.agent, "run": s.run} if s.run else None, "databases": dbs,
            }
            sys.stdout.write(orjson.dumps(doc).decode() + "\n")
        return 0
    if not selected:
        filtered = any(getattr(args, k, None) for k in ("user", "since", "until", "host"))
        print(f"no sessions in {d}" + (" match the filters" if filtered else ""))
        return 0
    rows = []
    unauthenticated = False
    with_db = any(ident.get("_databases") for _, ident in selected)
    for s, ident in selected:
        who = s.sub or "-"
        if isinstance(ident.get("email"), str) and ident["email"] and ident["email"] != who:
            who += f" <{ident['email']}>"
        if s.authenticated is False:
            who += "*"
            unauthenticated = True
        rows.append(
            (
                s.session_id or s.path.name,
                iso_utc(s.start),
                human_duration(s.duration),
                who,
                s.client_ip or "-",
                s.agent or "-",
                s.run or "-",
                str(s.exchanges),
                human_bytes(s.bytes),
                states.word(s),
            ) + ((", ".join(ident.get("_databases") or []) or "-",) if with_db else ())
        )
    for line in table([tuple(safe(c) for c in r) for r in rows], with_db):
        print(line)
    if unauthenticated:
        print("* not authenticated: recorded without a verified identity")
    return 0


class _States:
    """A session's state as `verify` words it: an unsealed one is "open" while the gateway that
    writes it runs, else "unsealed (gateway stopped)" (recorder/store/live.py). Each ledger (one
    per gateway store, several under a fleet root) is read once, and only for unsealed sessions."""

    def __init__(self, d: Path):
        self.d = d
        self._ledgers: dict[Path | None, tuple[dict, Path | None]] = {}

    def word(self, s: SessionSummary) -> str:
        if s.state != "unsealed":
            return s.state
        path = find_ledger(Path(s.path))
        if path not in self._ledgers:
            self._ledgers[path] = (read_ledger(path).state.sessions, path.parent) if path is not None else ({}, None)
        entries, store = self._ledgers[path]
        entry = entries.get(s.session_id)
        return unsealed_state(entry.state if entry is not None else None, store)
