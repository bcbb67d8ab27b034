"""`wiretrail ca [DIR]`: make the gateway's TLS interception CA, or export the one in DIR."""
from __future__ import annotations

import argparse
import sys

HELP = "make or export the mitmproxy CA that clients must trust"

DESCRIPTION = """\
Make the CA mitmproxy uses to intercept TLS, or export the one already there.

DIR is mitmproxy's confdir (default ~/.mitmproxy). If DIR holds mitmproxy-ca.pem (private key
+ certificate), the CA is exported: nothing is regenerated. Otherwise a new CA named
"wiretrail" is written in the layout mitmproxy reads; start the gateway with
`--set confdir=DIR` to use it.

Hand clients the public certificate (mitmproxy-ca-cert.pem): NODE_EXTRA_CA_CERTS and
curl --cacert take it. SSL_CERT_FILE and REQUESTS_CA_BUNDLE REPLACE the trusted roots, so give
them wiretrail-ca-bundle.pem (system roots + this CA). The private key never leaves DIR.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "ca",
        help=HELP,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "dir",
        nargs="?",
        default=None,
        metavar="DIR",
        help="mitmproxy confdir holding the CA (default: ~/.mitmproxy)",
    )
    out = p.add_mutually_exclusive_group()
    out.add_argument(
        "--print-path",
        action="store_true",
        help="print only the path of the CA certificate (for NODE_EXTRA_CA_CERTS, curl --cacert)",
    )
    out.add_argument(
        "--print-bundle-path",
        action="store_true",
        help="print only the path of the system roots + CA bundle (for SSL_CERT_FILE, REQUESTS_CA_BUNDLE)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    from recorder.tls import ca  # cryptography loads only when this command runs

    try:
        info = ca.ensure_ca(args.dir)
    except ca.CaError as e:
        print(f"wiretrail ca: error: {e}", file=sys.stderr)
        return 1

    for w in info.warnings:
        print(f"wiretrail ca: warning: {w}", file=sys.stderr)

    if args.print_path or args.print_bundle_path:
        if info.created:
            print(f"wiretrail ca: created a new CA in {info.dir}", file=sys.stderr)
        if args.print_path:
            print(info.cert_path)
            return 0
        if info.bundle_path is None:
            print(
                "wiretrail ca: error: the bundle could not be written (see the warning above); "
                "use --print-path",
                file=sys.stderr,
            )
            return 1
        print(info.bundle_path)
        return 0

    print(_report(info, ca))
    return 0


def _report(info, ca) -> str:
    cert = info.cert_path
    bundle = info.bundle_path
    default_dir = info.dir == ca.ca_dir(None)
    head = (
        f"Created a new CA in {info.dir}"
        if info.created
        else f"Exported the existing CA in {info.dir} (nothing regenerated)"
    )
    lines = [
        head,
        f"  subject:     {info.subject}",
        f"  valid until: {info.not_after:%Y-%m-%d}",
        f"  SHA-256:     {info.fingerprint_sha256}",
        "",
        f"CA certificate (public; hand this to clients): {cert}",
    ]
    if bundle:
        lines.append(f"System roots + this CA:                          {bundle}")
    lines += [
        "",
        "Trust it on a client:",
        f"  Node (Claude Code, Cursor's agent, Node SDKs):  export NODE_EXTRA_CA_CERTS={cert}",
    ]
    if bundle:
        lines += [
            f"  Python (httpx: openai/anthropic SDKs):          export SSL_CERT_FILE={bundle}",
            f"  Python (requests):                              export REQUESTS_CA_BUNDLE={bundle}",
        ]
    lines += [
        f"  curl:                                           curl --cacert {cert} ...",
        f"  Debian/Ubuntu system store:  sudo cp {cert} /usr/local/share/ca-certificates/wiretrail.crt"
        " && sudo update-ca-certificates",
        "  (SSL_CERT_FILE and REQUESTS_CA_BUNDLE replace the default roots; that is why they get the bundle.)",
        "",
        f"The private key ({ca.KEY_PEM}, {ca.KEY_P12}) stays in {info.dir}: never copy or commit it.",
    ]
    if not default_dir:
        lines.append(f"Start the gateway with: mitmdump --set confdir={info.dir} ...")
    lines.append("Client set-up: docs/clients.md")
    return "\n".join(lines)
