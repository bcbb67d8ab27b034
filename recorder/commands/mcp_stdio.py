"""`wiretrail mcp-stdio -- CMD ARGS...`: run a local MCP server and record its stdio session.

A local MCP server speaks JSON-RPC over stdin/stdout and never crosses a network, so the
gateway cannot see it. An agent's MCP config launches this command instead of the server:
it runs CMD, relays stdin/stdout untouched, and records every message into the store, under
the caller's identity (a token in $WIRETRAIL_TOKEN, checked exactly as the gateway checks
tokens), masked, chained, signed and in a ledger (recorder/protocols/mcp/stdio.py).

It is a small gateway of its own: its sessions and its ledger live in a sub-store of the
config's storage.dir, `mcp-stdio/<host>.<uid>.<n>/` (n: the first slot no running
mcp-stdio holds), so it never contends for the gateway's ledger lock; a slot's next run
recovers what a crashed run left open. `wiretrail ls/show/verify` read the whole store.
"""
from __future__ import annotations

import argparse
import fcntl
import os
import re
import select
import socket
import sys
from pathlib import Path

HELP = "run a local (stdio) MCP server and record its session"
TOKEN_ENV = "WIRETRAIL_TOKEN"
CONFIG_ENV = "WIRETRAIL_CONFIG"
KIND = "mcp-stdio"
MAX_SLOTS = 256

DESCRIPTION = f"""\
Run a local MCP server (CMD ARGS...) and record every JSON-RPC message it exchanges with the
MCP client that launched this command, in the store of the gateway config, under the caller's
identity. Put it in front of the server command in the agent's MCP config:

    wiretrail mcp-stdio --config /etc/wiretrail/gateway.toml -- npx -y @modelcontextprotocol/server-github

The identity token comes from ${TOKEN_ENV} and is checked as the gateway checks it; without a
token that verifies, the server is not started. The config comes from --config or ${CONFIG_ENV}.
docs/clients.md shows the Claude Code, Cursor and Codex config lines, and what this does not
guarantee.
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("mcp-stdio", help=HELP, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", metavar="PATH", help=f"the gateway's config file (default: ${CONFIG_ENV})")
    p.add_argument("--name", metavar="NAME", help="a name for this server in the record (e.g. github)")
    p.add_argument("server_command", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...",
                   help="the MCP server command and its arguments, after --")
    return p


def _log(text: str) -> None:
    print(f"wiretrail mcp-stdio: {text}", file=sys.stderr, flush=True)


def _refuse_in_protocol(message: str, wait: float = 5.0) -> None:
    """The MCP client reads stdout: answer its first request (initialize) with a JSON-RPC error that
    says what to do, so the person sees it, not only "server disconnected"."""
    from recorder.protocols.mcp.stdio import error_reply

    try:
        ready, _, _ = select.select([0], [], [], wait)
        if not ready:
            return
        line = os.read(0, 1 << 16).split(b"\n")[0]
        reply = error_reply(line, message, code=-32001)
        if reply:
            os.write(1, reply)
    except OSError:
        pass


def substore(storage_dir: Path) -> tuple[str, Path, int]:
    """(gateway id, its directory, the fd whose lock holds the slot) for this process."""
    host = re.sub(r"[^A-Za-z0-9.-]", "-", socket.gethostname())[:64] or "host"
    from recorder.store.fleet import STDIO_STORES

    base = storage_dir / STDIO_STORES  # beside the gateway's store (or a fleet's gateways/)
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    for n in range(MAX_SLOTS):
        slot = f"{host}.{os.getuid()}.{n}"
        gid = f"{KIND}.{slot}"
        d = base / slot
        d.mkdir(exist_ok=True, mode=0o700)
        fd = os.open(d / "gateway.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return gid, d, fd
        except BlockingIOError:
            os.close(fd)
    raise OSError(f"all {MAX_SLOTS} mcp-stdio slots under {base} are in use")


def run(args: argparse.Namespace) -> int:
    from recorder.config import ConfigError, load_config
    from recorder.auth.identity import IdentityError, TokenVerifier
    from recorder.store.signing import SigningKeyError, load_signer

    command = list(args.server_command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        _log("give the MCP server command after --, e.g. wiretrail mcp-stdio --config gateway.toml -- "
             "npx -y @modelcontextprotocol/server-filesystem /work")
        return 2
    config_path = args.config or os.environ.get(CONFIG_ENV)
    if not config_path:
        _log(f"no config: give --config PATH or set {CONFIG_ENV} to the gateway's config file "
             "(its storage, identity, masking and signing key are used)")
        _refuse_in_protocol(f"wiretrail mcp-stdio: no config (set {CONFIG_ENV} or pass --config); "
                            "the MCP server was not started")
        return 2
    try:
        # The upstream credentials are the gateway's business: only what recording needs is read.
        cfg = load_config(config_path, read_secrets=False)
        signer = load_signer(cfg.storage.signing_key) if cfg.storage.signing_key is not None else None
    except ConfigError as e:
        _log(f"config: {e}")
        return 2
    except SigningKeyError as e:
        _log(f"{cfg.source}: storage.signing_key: {e}; mcp-stdio does not record unsigned when a key is configured")
        return 2

    # Identity: exactly the gateway's check. No verifiable identity, no server.
    token = os.environ.get(TOKEN_ENV, "").strip()
    if cfg.identity.mode != "jwt":
        why = (f'identity.mode is "{cfg.identity.mode}" in {cfg.source}: mcp-stdio records only a verified '
               'identity (mode = "jwt")')
        _log(why + "; the MCP server was not started")
        _refuse_in_protocol(f"wiretrail mcp-stdio: {why}; the MCP server was not started")
        return 1
    try:
        verifier = TokenVerifier(cfg.identity)
        identity = verifier.verify(token) if token else None
        if identity is None:
            raise IdentityError("missing", f"no identity token: set {TOKEN_ENV} (in the MCP server's env in "
                                           "the agent's MCP config) to your wiretrail token")
    except IdentityError as e:
        _log(f"identity refused ({e.reason}): {e.message}; the MCP server was not started")
        _refuse_in_protocol(f"wiretrail mcp-stdio: identity refused: {e.message}; the MCP server was not started")
        return 1
    except ConfigError as e:
        _log(f"config: {e}")
        return 2
    return _record(args, cfg, signer, identity, command)


def _record(args, cfg, signer, identity, command: list[str]) -> int:
    from recorder import __version__
    from recorder.store.anchors import AnchorSpec
    from recorder.masking.gateway import gateway_masker, readable_credentials
    from recorder.protocols.mcp.stdio import Relay, StdioRecorder
    from recorder.store.sessions import SessionRegistry
    from recorder.store.writer import RecordWriter

    try:
        gid, store, lock_fd = substore(cfg.storage.dir)
    except OSError as e:
        _log(f"cannot use the store {cfg.storage.dir}: {e}; the MCP server was not started")
        _refuse_in_protocol(f"wiretrail mcp-stdio: cannot record (the store {cfg.storage.dir} is not usable: "
                            f"{e.strerror or e}); the MCP server was not started")
        return 1
    masker = gateway_masker(cfg, signer, readable_credentials(cfg))
    failures: list = []

    def on_error(err) -> None:  # the writer thread
        failures.append(err)
        if recorder is not None and recorder.failed is None:
            recorder.failed = err

    recorder = None
    writer = RecordWriter(fsync=cfg.storage.fsync, fsync_interval=cfg.storage.fsync_interval, on_error=on_error,
                          storage_dir=store, signer=signer, checkpoint_interval=cfg.storage.checkpoint_interval,
                          retention_days=cfg.storage.retention_days, on_event=lambda text: _log(str(text)),
                          anchors=AnchorSpec.from_config(cfg.anchors))
    registry = SessionRegistry(writer, store, idle_timeout=float("inf"), max_duration=float("inf"),
                               signing_key_id=signer.key_id if signer else None)
    registry.gateway = {"host": socket.gethostname(), "version": __version__, "id": gid, "kind": KIND}
    writer.start()
    if not cfg.storage.fail_closed:
        _log("storage.fail_closed = false: if a record cannot be written, messages pass UNRECORDED")
    session = registry.begin_flow(identity.key(), identity.record(), ("stdio", os.getppid()))
    recorder = StdioRecorder(session, masker=masker, max_body=cfg.capture.max_body,
                             ack_timeout=cfg.storage.write_timeout)
    relay = Relay(command, recorder, fail_closed=cfg.storage.fail_closed, name=args.name, log=_log)
    try:
        code = relay.run()
    finally:
        registry.end_flow(session)
        registry.close_all("shutdown")
        if not writer.stop(timeout=cfg.storage.stop_timeout):
            _log(f"the writer did not finish within {cfg.storage.stop_timeout:g} s; the session stays unsealed "
                 "and the next mcp-stdio in this slot recovers it")
            code = 1
        os.close(lock_fd)
    if failures and cfg.storage.fail_closed:
        _log(f"recording failed: {failures[0]}")
    return code
