"""`wiretrail serve [STORE] [--listen 127.0.0.1:8090]`: the review page, read-only.

The page itself is recorder/review/; this module reads the config, checks that the page can be
served safely (an identity to check, a review group, public keys), and starts it. STORE is a
single gateway's store, a fleet's root (each gateway's part checked against its own ledger), or
s3://BUCKET/PREFIX, read from a copy taken at start (recorder/cli.py makes it, as for `ls`).
"""
from __future__ import annotations

import argparse
import asyncio
import getpass
import signal
import sys
import threading
import time
from pathlib import Path

LINK_TTL = 8 * 3600.0  # the development login's token lifetime


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "serve",
        help="serve the review page: recorded sessions in a browser, for reviewers",
        description=(
            "Serve the review page (read-only): the session list with integrity badges, and each session as a "
            "transcript with its verification result, raw records and downloads. Only callers with an identity "
            "token (checked as the gateway checks it) in one of identity.review_groups see anything. With the "
            "development identity it prints a one-time login link."
        ),
    )
    p.add_argument("store", nargs="?", metavar="STORE",
                   help="the session store: a gateway's store, a fleet's root (storage.dir with gateways/<id>/), "
                        "or s3://BUCKET/PREFIX (read from a copy taken at start); default storage.dir of the config")
    p.add_argument("--dir", metavar="STORE", help="the same as STORE")
    p.add_argument("--listen", metavar="HOST:PORT", help="where to listen; default review.listen (127.0.0.1:8090)")
    p.add_argument("--config", metavar="PATH", help="the gateway's config file (default: the embedded demo default)")
    p.add_argument("--key", metavar="PUB", action="append",
                   help="the gateway's public key (PEM) to check signatures with, from outside the store; "
                        "repeat for keys before a rotation; default review.verify_keys")


def _fail(message: str, code: int = 2) -> int:
    print(f"wiretrail serve: {message}", file=sys.stderr)
    return code


def parse_listen(text: str) -> tuple[str, int]:
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'--listen {text!r}: expected HOST:PORT, e.g. "127.0.0.1:8090"')
    return host, int(port)


def run(args: argparse.Namespace) -> int:
    from recorder.auth.identity import TokenVerifier, mint_dev_token
    from recorder.config import ConfigError, load_config
    from recorder.policy.connections import is_loopback_host
    from recorder.review.auth import ReviewAuth
    from recorder.review.index import SessionIndex
    from recorder.store.signing import SigningKeyError, load_verifier

    try:
        config = load_config(args.config, read_secrets=False)
    except ConfigError as e:
        return _fail(str(e))
    where = args.config or "the embedded default config"
    if args.store and args.dir:
        return _fail("give the store either as STORE or as --dir, not both")
    given = args.store or args.dir
    store = Path(given) if given else Path(config.storage.dir)
    if not store.is_dir():
        return _fail(f"no session store at {store}: no such directory (give STORE, or --config with "
                     "storage.dir; the gateway makes it at its first session)")
    identity = config.identity
    if identity.mode != "jwt":
        return _fail(f'{where}: identity.mode is "{identity.mode}": the review page shows sessions to verified '
                     'reviewers only, so it needs mode = "jwt" (an IdP, or hs256_secret for development)')
    if not identity.review_groups:
        return _fail(f"{where}: identity.review_groups is empty, so nobody may review: list the groups whose "
                     'members may read sessions, e.g. review_groups = ["security"]')
    try:
        verifier = TokenVerifier(identity)
    except ConfigError as e:
        hint = " (the demo's secret is made by the gateway's first start or `wiretrail token`)" \
            if identity.hs256_secret is not None else ""
        return _fail(f"{e}{hint}")
    try:
        verifier.load_keys()
    except Exception as e:  # the IdP may be down now and up later: keys are fetched again on use
        print(f"wiretrail serve: warning: {e}", file=sys.stderr)
    for w in verifier.warnings:
        print(f"wiretrail serve: warning: {w}", file=sys.stderr)
    key_paths = [Path(k) for k in args.key] if args.key else list(config.review.verify_keys)
    verifiers = []
    for k in key_paths:
        try:
            verifiers.append(load_verifier(k))
        except SigningKeyError as e:
            src = "--key" if args.key else "review.verify_keys"
            return _fail(f"{src}: {e}")
    if not verifiers:
        print("wiretrail serve: WARNING: no public key (review.verify_keys or --key): signatures are NOT checked, "
              "only the hash chains; every page says so", file=sys.stderr)
    try:
        host, port = parse_listen(args.listen or config.review.listen)
    except ValueError as e:
        return _fail(str(e))
    if not is_loopback_host(host):
        print(f"wiretrail serve: warning: listening on {host}, not loopback, over plain http: the login cookie "
              "carries the identity token; put the page behind a TLS reverse proxy", file=sys.stderr)

    auth = ReviewAuth(identity, verifier)
    bucket = getattr(args, "bucket_url", None)  # STORE was s3://...: `store` is the local copy
    index = SessionIndex(store, verifiers, uploaded_copy=bucket is not None)
    t0 = time.monotonic()
    ledgers = index.ledgers()
    files = index.files()
    checked = [f"{name + ' ' if name else ''}{len(read.lines)}" for name, read in ledgers if read is not None]
    print(f"store {bucket or store}: {len(files)} session file(s); "
          + (f"ledger{'s' if len(checked) > 1 else ''} {', '.join(checked)} entries checked in "
             f"{time.monotonic() - t0:.2f} s" if checked else "no ledger")
          + (f"; signatures checked with key {', '.join(v.key_id for v in verifiers)}" if verifiers else ""),
          flush=True)

    login = None
    if identity.hs256_secret is not None:
        sub = getpass.getuser() or "reviewer"
        try:
            token = mint_dev_token(identity.hs256_secret.read(), sub=sub, groups=identity.review_groups[:1],
                                   ttl=LINK_TTL, issuer=identity.issuer, audience=identity.audience,
                                   groups_claim=identity.groups_claim)
        except (ConfigError, ValueError) as e:
            return _fail(str(e))
        login = (auth.login_link(token), sub)
    snapshot = None
    if bucket is not None:
        snapshot = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(getattr(args, "bucket_read_at", time.time())))
        print(f"wiretrail serve: showing {bucket} as it was at {snapshot} (a copy taken now; sessions uploaded "
              "later show after a restart)", flush=True)
    return asyncio.run(_serve(host, port, store, index, auth, verifiers, login, bucket, snapshot))


async def _serve(host, port, store, index, auth, verifiers, login, label=None, snapshot=None) -> int:
    from recorder.review.server import ReviewContext, make_app

    ctx = ReviewContext(store=store, index=index, auth=auth, key_ids=[v.key_id for v in verifiers], label=label,
                        snapshot=snapshot)
    app = make_app(ctx)
    try:
        server = app.listen(port, address=host, xheaders=False)
    except OSError as e:
        return _fail(f"cannot listen on {host}:{port}: {e.strerror or e}")
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    done = threading.Event()
    threading.Thread(target=index.warm, args=(done,), name="wiretrail-review-index", daemon=True).start()
    shown = f"[{host}]" if ":" in host else host
    base = f"http://{shown}:{port}"
    print(f"wiretrail review page (read-only) on {base}/", flush=True)
    if login:
        nonce, sub = login
        print(f"log in (development identity, as {sub}; this link works once): {base}/login/once/{nonce}", flush=True)
    else:
        print(f"log in at {base}/login with a token from your IdP that carries one of identity.review_groups: "
              f"{', '.join(auth.groups)}", flush=True)
    await stop.wait()
    done.set()
    server.stop()
    ctx.executor.shutdown(wait=False, cancel_futures=True)
    print("wiretrail serve: stopped", flush=True)
    return 0
