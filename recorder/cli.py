"""The `wiretrail` command. Each subcommand lives in its own module under
recorder/commands/ and exposes `add_parser(subparsers)` and `run(args) -> int`."""
from __future__ import annotations

import argparse
import importlib
import sys
import time

from recorder import __version__

# name -> module under recorder.commands
COMMANDS = {
    "ca": "ca",
    "keygen": "keygen",
    "ls": "ls",
    "show": "show",
    "verify": "verify",
    "export": "export",
    "token": "token",
    "mask": "mask",
    "serve": "serve",
    "mcp-stdio": "mcp_stdio",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="wiretrail",
        description="wiretrail: record what AI coding agents do, at the connection.",
    )
    parser.add_argument("--version", action="version", version=f"wiretrail {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, module in COMMANDS.items():
        mod = importlib.import_module(f"recorder.commands.{module}")
        mod.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse exits 2 on a usage error
    mod = importlib.import_module(f"recorder.commands.{COMMANDS[args.command]}")
    try:
        copies = _local_stores(args)
    except Exception as e:  # noqa: BLE001 - no credentials, no bucket, no endpoint: a usage error
        print(f"wiretrail {args.command}: cannot read the bucket: {e}", file=sys.stderr)
        return 2
    try:
        return mod.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    finally:
        for tmp in copies:
            tmp.cleanup()


def _local_stores(args) -> list:
    """Store arguments given as s3://BUCKET/PREFIX (a DIR, --dir, serve's STORE, or verify's
    paths) are read from a local copy of the bucket (recorder/store/s3.py), made here and
    removed after; args.bucket_url keeps the URL (without anything but bucket and prefix)."""
    from recorder.store import s3

    copies = []
    for attr in ("dir", "store", "paths"):
        value = getattr(args, attr, None)
        values = value if isinstance(value, list) else [value]
        out = []
        for v in values:
            if isinstance(v, str) and s3.is_url(v):
                args.bucket_read_at = time.time()  # the copy holds what the bucket held from then on
                local, tmp = s3.local_copy(v)
                copies.append(tmp)
                print(f"wiretrail {args.command}: reading {v} from a copy in {local}", file=sys.stderr)
                args.from_bucket = True
                args.bucket_url = str(s3.BucketUrl.parse(v))
                v = local
            out.append(v)
        if value is not None:
            setattr(args, attr, out if isinstance(value, list) else out[0])
    return copies


if __name__ == "__main__":
    sys.exit(main())
