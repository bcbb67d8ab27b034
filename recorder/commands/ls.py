"""`wiretrail ls [DIR] [--user U] [--since T] [--until T] [--host H]`: a table of the
recorded sessions, newest last."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from recorder.commands.common import (
    DEFAULT_DIR,
    StoreError,
    human_bytes,
    human_duration,
    iso_utc,
    parse_time,
    safe,
    store_dir,
)
from recorder.forensics.reader import iter_session_files, read_session
from recorder.forensics.summary import SessionSummary, host_matches, hosts_of, summarize
from recorder.forensics.verify import find_ledger
from recorder.protocols.postgres.transcript import databases
from recorder.store.ledger import read_ledger
from recorder.store.live import unsealed_state


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


HEADERS = ("SESSION", "START (UTC)", "DURATION", "IDENTITY", "CLIENT", "AGENT", "RUN", "EXCHANGES", "BYTES", "STATE")
RIGHT = {"EXCHANGES", "BYTES"}


def table(rows: list[tuple[str, ...]], databases: bool = False) -> list[str]:
    headers = HEADERS + (("DATABASE",) if databases else ())
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def fmt(cells):
        out = [c.rjust(w) if h in RIGHT else c.ljust(w) for c, w, h in zip(cells, widths, headers)]
        return "  ".join(out).rstrip()

    return [fmt(headers)] + [fmt(r) for r in rows]


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
