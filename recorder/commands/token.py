"""`wiretrail token`: mint a development identity token (hs256 identity only)."""
from __future__ import annotations

import argparse
import re
import sys

HELP = "mint a development identity token (hs256 identity only)"

DESCRIPTION = """\
Mint an identity token for the development identity: a JWT signed with the config's
identity.hs256_secret, with the config's issuer and audience. The token is printed on stdout,
and nothing else is, so it can be captured:

    export HTTPS_PROXY="http://alice:$(wiretrail token --sub alice --groups engineering \\
        --config gateway.toml)@localhost:8080"

This works only when the config has [identity] mode = "jwt" with hs256_secret. A gateway that
trusts a real IdP (jwks_url / jwks_file) takes tokens from that IdP, never from this command.
"""

_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhd]?)", re.IGNORECASE)
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """"30m", "8h", "2d", "90s" or plain seconds ("3600") -> seconds > 0."""
    m = _DURATION.fullmatch(text.strip())
    if not m or float(m.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f'expected a duration like "30m", "8h", "2d" or seconds, got {text!r}')
    return float(m.group(1)) * _UNITS[m.group(2).lower()]


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("token", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sub", required=True, help="who the token is for (the sub claim), e.g. alice")
    p.add_argument("--groups", action="append", default=[], metavar="GROUP[,GROUP...]",
                   help="groups the caller belongs to; repeat or separate with commas")
    p.add_argument("--email", help="the email claim")
    p.add_argument("--name", help="the name claim (a display name)")
    p.add_argument("--ttl", type=parse_duration, default=8 * 3600, metavar="DURATION",
                   help='how long the token is valid: 30m, 8h, 2d or seconds (default 8h)')
    p.add_argument("--config", metavar="PATH",
                   help="the gateway's config file (default: the embedded default)")
    return p


def run(args: argparse.Namespace) -> int:
    from recorder.auth.identity import MIN_HS256_SECRET, mint_dev_token
    from recorder.config import ConfigError, load_config

    def fail(message: str) -> int:
        print(f"wiretrail token: error: {message}", file=sys.stderr)
        return 1

    try:
        # A config file: only its HS256 secret is needed (read below), not the upstream credentials.
        config = load_config(args.config, read_secrets=args.config is None)
    except ConfigError as e:
        return fail(str(e))
    identity = config.identity
    where = args.config or "the embedded default config"
    if identity.mode != "jwt" or identity.hs256_secret is None:
        mode = (f'identity mode "{identity.mode}"' if identity.mode != "jwt"
                else "identity from an IdP (jwks_url / jwks_file)")
        return fail(f"{where} has {mode}. `wiretrail token` only works for the development identity: "
                    '[identity] mode = "jwt" with hs256_secret = "env:NAME" or "file:PATH". '
                    "With a real IdP, get the token from the IdP.")
    if not args.sub.strip():
        return fail("--sub must not be empty")
    groups = [g.strip() for arg in args.groups for g in arg.split(",") if g.strip()]
    try:
        secret = identity.hs256_secret.read()
    except ConfigError as e:
        return fail(str(e))
    if len(secret.encode("utf-8")) < MIN_HS256_SECRET:
        return fail(f"{identity.hs256_secret.key}: the HS256 secret needs at least {MIN_HS256_SECRET} bytes; "
                    "make one with: python -c \"import secrets; print(secrets.token_urlsafe(48))\"")
    token = mint_dev_token(secret, sub=args.sub.strip(), groups=groups, email=args.email, name=args.name,
                           ttl=args.ttl, issuer=identity.issuer, audience=identity.audience,
                           groups_claim=identity.groups_claim)
    print(token)
    return 0
