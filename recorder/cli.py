"""The `wiretrail` command. Each subcommand lives in its own module under
recorder/commands/ and exposes `add_parser(subparsers)` and `run(args) -> int`."""
from __future__ import annotations

import argparse
import importlib
import sys

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
        return mod.run(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main())
