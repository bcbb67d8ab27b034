"""`wiretrail mask SESSION [-o OUT]`: re-mask a recorded session with today's rules into a new file."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recorder.commands.common import SessionNotFound, find_session, safe
from recorder.forensics.reader import read_session


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "mask",
        help="re-mask a recorded session with today's rules, into a new session file",
        description=(
            "Mask a recorded session again with today's rules (the built-in catalogue, plus the custom rules, "
            "allowlist and upstream credentials of --config) and write the result as a NEW session file with "
            "its own id and hash chain. Its session.open names the original (remasked_from: session id and the "
            "hash of its last intact line). The original is not changed. Exit 0 on success, 1 when the original "
            "is damaged or cannot be written, 2 on a usage error."
        ),
    )
    p.add_argument("session", metavar="SESSION", help="a session file, or a session id (or a unique prefix of one)")
    p.add_argument("-o", "--out", metavar="OUT",
                   help="where to write: a directory, or a file ending in .jsonl.zst; default: next to the original")
    p.add_argument("--dir", metavar="DIR", help="the session store to look the id up in; default ./sessions")
    p.add_argument("--config", metavar="PATH",
                   help="gateway config: its [masking] rules and allowlist, and its connections' credentials "
                        "(masked wherever they appear, when readable here)")


def _masker(config_arg: str | None):
    from recorder.masking.output import output_masker

    return output_masker(config_arg)


def run(args: argparse.Namespace) -> int:
    from recorder.config import ConfigError
    from recorder.forensics.remask import remask_session
    from recorder.masking import RuleError

    try:
        path = find_session(args.session, args.dir, None if args.dir else args.config)
    except SessionNotFound as e:
        print(f"wiretrail mask: {e}", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else None
    if out is not None and not out.name.endswith(".jsonl.zst") and out.exists() and not out.is_dir():
        print(f"wiretrail mask: -o {out}: exists and is not a directory", file=sys.stderr)
        return 2
    try:
        masker, warnings = _masker(args.config)
    except (ConfigError, RuleError, OSError) as e:
        print(f"wiretrail mask: {e}", file=sys.stderr)
        return 2
    for w in warnings:
        print(f"wiretrail mask: warning: {safe(w)}", file=sys.stderr)
    read = read_session(path)
    if read.state == "broken":
        print(f"wiretrail mask: {path} is damaged ({len(read.problems)} problem(s), first: {safe(str(read.problems[0]))}); "
              f"run wiretrail verify {path} for the details. Nothing was written.", file=sys.stderr)
        return 1
    try:
        result = remask_session(read, masker, out)
    except FileExistsError as e:
        print(f"wiretrail mask: {e.filename}: already exists; nothing was written", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"wiretrail mask: cannot write the new session file: {e}", file=sys.stderr)
        return 1
    added = result.masked_after - result.masked_before
    print(f"{result.path}")
    print(f"session {result.session_id}: {result.records} records, re-masked from {read.session_id} "
          f"({read.state}); {added} secret(s) newly masked"
          + (f"; {result.dropped['checkpoint']} checkpoint(s) and {result.dropped['seal']} seal(s) of the original "
             "dropped (they sign the original chain)" if any(result.dropped.values()) else ""))
    return 0
