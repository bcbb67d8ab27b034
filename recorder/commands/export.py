"""`wiretrail export SESSION --har FILE --mitm FILE`: a session for other tools."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import orjson

from recorder.commands.common import SessionNotFound, add_session_arguments, find_session, masked_for_output
from recorder.forensics.export_har import export_har
from recorder.forensics.export_mitm import export_mitm
from recorder.forensics.reader import read_session


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="export a session as HAR or as a mitmproxy flow file",
        description=(
            "Export one session: --har FILE writes HAR 1.2 (browser devtools), --mitm FILE a mitmproxy flow "
            "file (mitmproxy -r FILE, mitmweb -r FILE). Give one or both. What is exported is masked again "
            "with today's rules (and the --config's)."
        ),
    )
    add_session_arguments(p)
    p.add_argument("--har", metavar="FILE", help="write HAR 1.2 here")
    p.add_argument("--mitm", metavar="FILE", help="write a mitmproxy flow file here")


def run(args: argparse.Namespace) -> int:
    if not args.har and not args.mitm:
        print("wiretrail export: give --har FILE and/or --mitm FILE", file=sys.stderr)
        return 2
    try:
        path = find_session(args.session, args.dir, args.config)
    except SessionNotFound as e:
        print(f"wiretrail export: {e}", file=sys.stderr)
        return 2
    read = read_session(path)
    broken = read.state == "broken"
    read = masked_for_output(read, args.config)
    if read is None:
        return 2
    if broken:
        print(
            f"wiretrail export: warning: {path} failed verification ({len(read.problems)} problem(s); "
            "wiretrail verify shows them): exporting what is readable",
            file=sys.stderr,
        )
    stdio = len({r.get("flow") for r in read.records if r.get("t") == "mcp.open"})
    if stdio:  # HAR and mitmproxy flows hold HTTP; a stdio MCP session has none
        print(f"wiretrail export: note: {stdio} MCP session(s) over stdio (wiretrail mcp-stdio) are not in the "
              "export: they carried no HTTP; wiretrail show (or --json) reads them", file=sys.stderr)
    try:
        if args.har:
            doc = export_har(read)
            Path(args.har).write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
            print(f"wrote {args.har}: HAR 1.2, {len(doc['log']['entries'])} entries")
        if args.mitm:
            n = export_mitm(read, Path(args.mitm))
            print(f"wrote {args.mitm}: mitmproxy flow file, {n} flows (mitmproxy -r {args.mitm})")
    except OSError as e:
        print(f"wiretrail export: cannot write: {e}", file=sys.stderr)
        return 1
    return 0
