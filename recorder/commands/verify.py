"""`wiretrail verify [--key PUB] PATH...`: check that session files are intact."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from recorder import verify
from recorder.commands.ls import safe


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check that session files are intact (hash chains)",
        description=(
            "Check session files (a file, or every *.jsonl.zst below a directory). "
            "Exit 0 when everything checked is intact (closed, sealed, or an unsealed tail after a crash), "
            "1 when anything was tampered with or is broken, 2 on a usage error."
        ),
    )
    p.add_argument(
        "--key",
        metavar="PUB",
        help="the gateway's public key (PEM), taken from outside the store",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="a session file or a directory of sessions")


def run(args: argparse.Namespace) -> int:
    if args.key is not None and not Path(args.key).is_file():
        print(f"wiretrail verify: --key {args.key}: no such file", file=sys.stderr)
        return 2
    try:
        files = verify.collect_files(args.paths)
    except FileNotFoundError as e:
        print(f"wiretrail verify: {e}", file=sys.stderr)
        return 2
    if not files:
        print(
            f"wiretrail verify: no session files (*.jsonl.zst) under {' '.join(args.paths)}; "
            "point it at the storage dir or at a session file",
            file=sys.stderr,
        )
        return 2
    verdicts = []
    for path in files:
        v = verify.verify_file(path)
        verdicts.append(v)
        for line in v.describe():
            print(safe(line))
    print(verify.KEY_NOT_YET_NOTE if args.key else verify.CHAINS_ONLY_NOTE)
    print(verify.summarize(verdicts))
    return 0 if all(v.ok for v in verdicts) else 1
