"""`wiretrail keygen DIR`: make the gateway's Ed25519 signing key pair."""
from __future__ import annotations

import argparse
import sys

HELP = "make the Ed25519 key pair that signs checkpoints, seals and the ledger"

DESCRIPTION = """\
Write DIR/gateway.key (the private key, PKCS8 PEM, mode 0600) and DIR/gateway.pub (the
public key, PEM). Point the gateway at the private key with [storage] signing_key, and keep
a copy of gateway.pub OFF the gateway host: `wiretrail verify --key gateway.pub` trusts only
the key it is given, and a key kept inside the store proves nothing.

An existing key is never overwritten unless --force is given: the old key's signatures
could then no longer be checked with the new public key.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("keygen", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dir", metavar="DIR", help="directory for gateway.key and gateway.pub (made if missing)")
    p.add_argument("--force", action="store_true", help="overwrite an existing key pair")
    return p


def run(args: argparse.Namespace) -> int:
    from recorder.store import signing

    try:
        priv, pub, kid = signing.generate(args.dir, force=args.force)
    except FileExistsError as e:
        print(f"wiretrail keygen: {e} exists; not overwriting it (a new key cannot check the old "
              "key's signatures). Use --force to replace it, or choose another DIR.", file=sys.stderr)
        return 1
    except OSError as e:
        print(f"wiretrail keygen: cannot write the key pair under {args.dir}: {e.strerror or e}", file=sys.stderr)
        return 1
    print(f"private key: {priv} (mode 0600; set [storage] signing_key to this path)")
    print(f"public key:  {pub} (copy it off this host; verify with: wiretrail verify --key {pub.name} STORE)")
    print(f"key id:      {kid}")
    return 0
