"""Every `flow.metadata` key the gateway's parts use to speak to each other, with its accessor.

One part writes a key, later parts read it; the chain order (addons/gateway.py) makes that
work. Parts use these functions, never `flow.metadata` directly, so that the contract between
them is in one place. A CONNECT's flows inside the tunnel get a fresh metadata: anything that
must outlive a request is keyed on flow.client_conn instead (addons/identity.py, policy.py).
"""
from __future__ import annotations

from typing import Any

from mitmproxy import flow as mflow

from recorder.auth.identity import ANONYMOUS, VerifiedIdentity

# key -> who writes it, and what it holds
IDENTITY = "wiretrail.identity"  # identity: the VerifiedIdentity of the flow
TOKEN_HEADER = "wiretrail.token_header"  # identity: the header a reverse-mode token came in
CONNECTION = "wiretrail.connection"  # policy: the matched ConnectionConfig, or None
DESTINATION = "wiretrail.destination"  # policy: the flow's Destination
TUNNELED = "wiretrail.tunneled"  # policy: an unregistered host under policy "tunnel"
REFUSAL = "wiretrail.refusal"  # refusal.refuse: {"status", "reason", "message"}
INJECTED = "wiretrail.injected"  # credentials: {header name: connection name}
TRAILERS_STRIPPED = "wiretrail.trailers_stripped"  # trailers: names removed from request trailers
KILLED = "wiretrail.killed"  # raw_tcp (any part killing a flow in `response`): why, for the record

KEYS = (IDENTITY, TOKEN_HEADER, CONNECTION, DESTINATION, TUNNELED, REFUSAL, INJECTED, TRAILERS_STRIPPED, KILLED)


def _get(flow: mflow.Flow, key: str, default: Any = None) -> Any:
    return flow.metadata.get(key, default)


# -- identity ----------------------------------------------------------------------------------

def noted_identity(flow: mflow.Flow) -> VerifiedIdentity | None:
    """The identity the identity part noted, or None when it has not (yet)."""
    return _get(flow, IDENTITY)


def identity_of(flow: mflow.Flow) -> VerifiedIdentity:
    return _get(flow, IDENTITY) or ANONYMOUS


def set_identity(flow: mflow.Flow, identity: VerifiedIdentity) -> None:
    flow.metadata[IDENTITY] = identity


def token_header(flow: mflow.Flow) -> str | None:
    """The header a reverse-mode identity token came in (credentials strips it), or None."""
    return _get(flow, TOKEN_HEADER)


def set_token_header(flow: mflow.Flow, header: str) -> None:
    flow.metadata[TOKEN_HEADER] = header


# -- policy ------------------------------------------------------------------------------------

def connection_of(flow: mflow.Flow):
    """The registered connection (ConnectionConfig) the flow matched, or None."""
    return _get(flow, CONNECTION)


def set_connection(flow: mflow.Flow, connection) -> None:
    flow.metadata[CONNECTION] = connection


def noted_destination(flow: mflow.Flow):
    """The policy's Destination of the flow (recorder.policy.destinations), or None."""
    return _get(flow, DESTINATION)


def set_destination(flow: mflow.Flow, destination) -> None:
    flow.metadata[DESTINATION] = destination


def is_tunneled(flow: mflow.Flow) -> bool:
    return bool(_get(flow, TUNNELED))


def mark_tunneled(flow: mflow.Flow) -> None:
    flow.metadata[TUNNELED] = True


# -- refusal -----------------------------------------------------------------------------------

def refusal_of(flow: mflow.Flow) -> dict | None:
    return _get(flow, REFUSAL)


def is_refused(flow: mflow.Flow) -> bool:
    return REFUSAL in flow.metadata


def set_refusal(flow: mflow.Flow, status: int, reason: str, message: str) -> None:
    flow.metadata[REFUSAL] = {"status": status, "reason": reason, "message": message}


# -- credentials and trailers ------------------------------------------------------------------

def injected_of(flow: mflow.Flow) -> dict | None:
    """{header name: connection name} of the credential the gateway injected, or None."""
    return _get(flow, INJECTED)


def set_injected(flow: mflow.Flow, header: str, connection_name: str) -> None:
    flow.metadata[INJECTED] = {header: connection_name}


def trailers_stripped(flow: mflow.Flow) -> list[str] | None:
    return _get(flow, TRAILERS_STRIPPED)


def set_trailers_stripped(flow: mflow.Flow, names: list[str]) -> None:
    flow.metadata[TRAILERS_STRIPPED] = names


# -- a flow killed by a part -------------------------------------------------------------------

def killed_reason(flow: mflow.Flow) -> str | None:
    return _get(flow, KILLED)


def set_killed(flow: mflow.Flow, why: str) -> None:
    flow.metadata[KILLED] = why
