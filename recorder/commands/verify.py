"""`wiretrail verify [--key PUB] PATH...`: check that session files, their signatures and
the store's ledger are intact."""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from recorder.commands.common import safe
from recorder.forensics import verify

_ANCHOR = re.compile(r"(\d+):([0-9a-f]{64})\Z")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "verify",
        help="check that session files, their signatures and the ledger are intact",
        description=(
            "Check session files (a file, or every *.jsonl.zst below a directory) and, when they lie in a "
            "store with a ledger (ledger.jsonl), check them against it: a deleted, swapped, cut or planted "
            "file is reported. With --key, checkpoint, seal and ledger signatures are checked too, and files "
            "signed by the key must have their ledger. With --anchors, the ledger must still hold every head "
            "the gateway anchored outside the store."
        ),
        epilog=(
            f"exit codes: {verify.INTACT} intact (sealed, closed, or an unsealed tail after a crash); "
            f"{verify.TAMPERED} tampered with or broken (named: file, seq, what is wrong); {verify.USAGE} usage "
            f"error; {verify.DAMAGED} damaged, not tampered: the gateway's own ledger (signed, when checked with "
            "--key) says it could not write some records (disk full, storage gone) and everything else is "
            f"intact. {verify.TAMPERED} wins over {verify.DAMAGED}: damage never hides tampering."
        ),
    )
    p.add_argument(
        "--key",
        metavar="PUB",
        action="append",
        help="the gateway's public key (PEM, from wiretrail keygen), taken from outside the store; "
             "repeat for keys used before a rotation",
    )
    p.add_argument(
        "--anchor",
        metavar="SEQ:SHA256",
        action="append",
        default=[],
        help="a ledger head recorded outside the host earlier; the ledger must still contain it",
    )
    p.add_argument(
        "--anchors",
        metavar="FILE",
        action="append",
        default=[],
        help="anchors the gateway sent outside the store ([anchors] in the config): its anchor file, an HTTP "
             "sink's JSON lines, or a syslog export; every anchor must be signed (with --key), belong to a "
             "ledger checked, and still be in it",
    )
    p.add_argument(
        "--no-ledger",
        action="store_true",
        help="check files copied out of their store on their own, without the ledger that --key otherwise "
             "requires (a deleted, swapped or planted file cannot show this way)",
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="a session file or a directory of sessions")


def run(args: argparse.Namespace) -> int:
    from recorder.store.anchors import read_anchors
    from recorder.store.signing import SigningKeyError, load_verifier

    verifiers = []
    for key in args.key or []:
        if not Path(key).is_file():
            print(f"wiretrail verify: --key {key}: no such file", file=sys.stderr)
            return verify.USAGE
        try:
            verifiers.append(load_verifier(key))
        except SigningKeyError as e:
            print(f"wiretrail verify: --key: {e}", file=sys.stderr)
            return verify.USAGE
    anchors = []
    for a in args.anchor:
        m = _ANCHOR.fullmatch(a.strip().lower())
        if not m:
            print(f"wiretrail verify: --anchor {a!r}: expected SEQ:SHA256, e.g. 41:3f2a...(64 hex digits)",
                  file=sys.stderr)
            return verify.USAGE
        anchors.append((int(m.group(1)), m.group(2)))
    anchored, anchor_problems = None, []
    if args.anchors:
        anchored = []
        for path in args.anchors:
            try:
                got, problems = read_anchors(path)
            except OSError as e:
                print(f"wiretrail verify: --anchors {path}: {e.strerror or e}", file=sys.stderr)
                return verify.USAGE
            if not got and not problems:
                print(f"wiretrail verify: --anchors {path}: no anchor in it (lines holding "
                      '{"wiretrail_anchor":1,...})', file=sys.stderr)
                return verify.USAGE
            anchored += got
            anchor_problems += problems
    try:
        files = verify.collect_files(args.paths)
    except FileNotFoundError as e:
        print(f"wiretrail verify: {e}", file=sys.stderr)
        return verify.USAGE
    # With anchors, an empty store is a finding (the anchored ledger is gone), not a usage error.
    if not files and not anchored and not any(verify.find_ledger(Path(p)) for p in args.paths):
        print(
            f"wiretrail verify: no session files (*.jsonl.zst) under {' '.join(args.paths)}; "
            "point it at the storage dir or at a session file",
            file=sys.stderr,
        )
        return verify.USAGE
    report = verify.verify_paths(args.paths, verifiers or None, anchors, anchored, need_ledger=not args.no_ledger,
                                 uploaded_copy=getattr(args, "from_bucket", False))
    report.anchor_issues[:0] = anchor_problems
    for v in report.files:
        for line in v.describe():
            print(safe(line))
    for lv in report.ledgers:
        for line in lv.describe(bool(verifiers)):
            print(safe(line))
    for issue in report.store_issues + report.anchor_issues:
        print(safe(f"FAILED  {issue}"))
    if not report.ledgers:
        print("no ledger found (ledger.jsonl): each file was checked alone; a deleted or swapped file "
              "would not show")
    if verifiers:
        print("signatures checked with key id " + ", ".join(v.key_id for v in verifiers))
    else:
        print(verify.CHAINS_ONLY_NOTE)
    if report.damaged:
        if any(not lv.read.signed_by for lv in report.ledgers):
            print("the damage above is the ledger's word, and the ledger is UNSIGNED: anyone who can write the "
                  "store could have written it")
        elif not verifiers:
            print("the damage above is the ledger's word, not checked: without --key nothing proves the gateway "
                  "wrote it")
    print(verify.summarize(report.files))
    return report.code
