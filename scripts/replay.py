#!/usr/bin/env python3
"""Re-send a recorded session's requests to a sandbox and compare the replies.

    python scripts/replay.py SESSION --target https://sandbox:8443 --header 'Authorization: Bearer sk-sandbox'
    python scripts/replay.py SESSION --pg "host=sandbox-db dbname=app user=ro sslmode=require" [--allow-writes]

An MCP session over HTTP is replayed as a session (recorder/protocols/mcp/replay.py):
initialized again, the new session id used, the server's requests answered from the record,
and the answers compared by JSON-RPC id.

With --pg the session's database statements are re-run against a sandbox database instead
(recorder/protocols/postgres/replay.py): reads only unless --allow-writes, and row counts and errors
(SQLSTATE) are compared with the recorded ones. The password comes from PGPASSWORD.

SESSION is a session file, or a session id (or unique prefix) looked up in --dir or
the --config's storage.dir. The engine is recorder/forensics/replay.py; docs/forensics.md walks
through an incident. Exit 0: replayed (differences are reported, not errors);
1: refused (the artifact failed verification) or a request could not be sent;
2: usage error.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

import orjson  # noqa: E402

from recorder.commands.common import SessionNotFound, find_session, safe
from recorder.forensics import replay
from recorder.protocols.mcp import replay as mcp_replay
from recorder.protocols.postgres import replay as pg_replay


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="replay.py", description=__doc__.split("\n\n")[0])
    p.add_argument("session", metavar="SESSION", help="a session file, or a session id (or unique prefix)")
    p.add_argument("--target", metavar="URL", help="the sandbox base URL; recorded paths and queries go on it")
    p.add_argument("--pg", metavar="CONNINFO", help="replay the database statements against this sandbox database "
                   "(libpq 'key=value' string or postgresql:// URL; password from PGPASSWORD)")
    p.add_argument("--allow-writes", action="store_true", help="with --pg: also run statements that write "
                   "(default: reads only, each in a READ ONLY transaction)")
    p.add_argument("--dir", metavar="DIR", help="the session store to look the id up in; default ./sessions")
    p.add_argument("--config", metavar="PATH", help="look the id up in storage.dir of this gateway config; its "
                   "masking rules also mask what is printed")
    p.add_argument("--flow", action="append", metavar="ID", help="replay only this flow (id, id prefix, or the [n] of wiretrail show); repeatable")
    p.add_argument("--only", metavar="PATTERN", help="replay only requests whose 'METHOD URL' matches this regular expression")
    p.add_argument("--header", action="append", default=[], metavar="'K: V'", help="add (or replace) a header, e.g. the sandbox credential; repeatable")
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--insecure", action="store_true", help="do not verify the sandbox's TLS certificate")
    tls.add_argument("--ca", metavar="FILE", help="verify the sandbox's TLS certificate against this CA bundle (PEM)")
    p.add_argument("--timeout", type=float, default=120.0, metavar="S", help="per request, seconds (default 120)")
    p.add_argument("--dry-run", action="store_true", help="print what would be sent; send nothing")
    p.add_argument("--force", action="store_true", help="replay even an artifact that failed verification")
    p.add_argument("--json", action="store_true", help="the result as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    err = sys.stderr
    if (args.target is None) == (args.pg is None):
        print("replay: give --target URL (HTTP) or --pg CONNINFO (database), one of them", file=err)
        return 2
    mcp_sessions: list = []
    try:
        path = find_session(args.session, args.dir, args.config)
        extra = [replay.parse_header(h) for h in args.header]
        read, warnings = replay.check_artifact(path, force=args.force)
        if args.pg is not None:
            planned = pg_replay.plan(read.records, allow_writes=args.allow_writes)
            target = pg_replay.parse_target(args.pg)
        else:
            planned = replay.plan(read, args.target, flows=args.flow, only=args.only, extra_headers=extra)
            planned, mcp_sessions = _mcp_sessions(read, planned)
    except (SessionNotFound, replay.ReplayUsageError) as e:
        print(f"replay: {e}", file=err)
        return 2
    except replay.ReplayRefused as e:
        print("replay: " + "\n".join(safe(line) for line in str(e).split("\n")), file=err)
        return 1
    from recorder.config import ConfigError
    from recorder.masking import RuleError
    from recorder.masking.output import output_masker

    try:
        masker, mask_warnings = output_masker(args.config)
    except (ConfigError, RuleError, OSError) as e:
        print(f"replay: {e}", file=err)
        return 2
    for w in warnings + mask_warnings:
        print(f"replay: {safe(masker.mask_text(w))}", file=err)
    if not planned and not (args.pg is None and mcp_sessions):
        print("replay: no request to replay (check --flow / --only)" if args.pg is None
              else "replay: the session has no database statement", file=err)
        return 2
    if args.pg is not None:
        return _replay_database(args, read, warnings, planned, target)
    if args.dry_run:
        if args.json:
            doc = {"session": read.session_id, "target": args.target, "dry_run": True,
                   "flows": [replay.result_json(replay.ReplayResult(p, p.exchange.status, len(p.exchange.response_body)), sent=False) for p in planned]}
            sys.stdout.write(masker.mask_body(orjson.dumps(doc, option=orjson.OPT_INDENT_2), "application/json").decode() + "\n")
        else:
            print(f"dry run: {len(planned)} request(s) to {args.target}; nothing is sent")
            for line in replay.dry_run_lines(planned, masker) + replay.notes(planned):
                print(safe(masker.mask_text(line)))
            for s, _ in mcp_sessions:
                print(safe(masker.mask_text(
                    f"MCP session {s.session_id or '-'} ({s.transport}), exchanges {sorted(s.indexes)}: re-initialized "
                    f"and re-run as a session ({len([m for m in s.messages if m.sender == 'client'])} client message(s))")))
        return 0
    try:
        client = replay.make_client(insecure=args.insecure, ca=args.ca, timeout=args.timeout)
    except replay.ReplayUsageError as e:
        print(f"replay: {e}", file=err)
        return 2
    with client:
        results = [replay.send(p, client, masker) for p in planned]
        mcp_results = [mcp_replay.replay_session(s, args.target, client, headers, timeout=args.timeout,
                                                 compare=_mcp_compare(masker))
                       for s, headers in ((s, _mcp_headers(ex, args.target, extra)) for s, ex in mcp_sessions)]
    if args.json:
        doc = {"session": read.session_id, "target": args.target, "dry_run": False,
               "warnings": warnings, "flows": [replay.result_json(r) for r in results],
               "mcp": [mcp_replay.report_json(r) for r in mcp_results]}
        sys.stdout.write(masker.mask_body(orjson.dumps(doc, option=orjson.OPT_INDENT_2), "application/json").decode() + "\n")
    else:
        if results:
            for line in replay.table(results) + replay.notes(planned):
                print(safe(masker.mask_text(line)))
        for r in mcp_results:
            for line in mcp_replay.report_lines(r):
                print(safe(masker.mask_text(line)))
    mcp_failed = any(r.error or any(c.error for c in r.calls) for r in mcp_results)
    return 1 if any(r.error for r in results) or mcp_failed else 0


def _mcp_sessions(read, planned):
    """MCP sessions over HTTP are replayed as sessions (recorder/protocols/mcp/replay.py), never exchange by
    exchange: (the other planned requests, [(MCP session, its first exchange)])."""
    from recorder.protocols.mcp.session import sessions_of
    from recorder.forensics.exchange import exchanges

    sessions, of_flow = sessions_of(read.records, exchanges(read.records))
    chosen = {p.exchange.flow for p in planned}
    picked = [s for s in sessions if s.indexes and chosen & set(s.flows)]
    mcp_flows = {f for s in picked for f in s.flows}
    first = {}
    for p in planned:
        s = of_flow.get(p.exchange.flow)
        if s in picked and id(s) not in first:
            first[id(s)] = p.exchange
    return [p for p in planned if p.exchange.flow not in mcp_flows], [(s, first[id(s)]) for s in picked]


def _mcp_headers(ex, target, extra):
    """The recorded initialize's headers, as a replayed request's (credentials dropped, the caller's added),
    without what the MCP replay sets itself."""
    own = {"mcp-session-id", "mcp-protocol-version", "accept", "content-type", "last-event-id"}
    return [(k, v) for k, v in replay.plan_request(ex, target, extra).headers if k.lower() not in own]


def _mcp_compare(masker):
    def compare(recorded, live, masked):
        a = orjson.loads(masker.mask_body(orjson.dumps(recorded), "application/json"))
        b = orjson.loads(masker.mask_body(orjson.dumps(live), "application/json"))
        return replay._json_diff(a, b, masked=masked)
    return compare


def _replay_database(args, read, warnings, planned, target) -> int:
    err = sys.stderr
    if not args.dry_run:
        try:
            asyncio.run(pg_replay.run(target, planned, allow_writes=args.allow_writes))
        except (pg_replay.UpstreamError, pg_replay.pg.ProtocolError, asyncio.IncompleteReadError, OSError) as e:
            print(f"replay: cannot replay on the sandbox database: {e}", file=err)
            return 1
    if args.json:
        doc = {"session": read.session_id, "target": {"host": target.settings.host, "port": target.settings.port,
                                                       "database": target.database},
               "dry_run": args.dry_run, "allow_writes": args.allow_writes, "warnings": warnings,
               "statements": [s.json() for s in planned]}
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        for line in pg_replay.table(planned):
            print(safe(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())
