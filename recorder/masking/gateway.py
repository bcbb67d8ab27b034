"""The masker a gateway records with: its config's rules, every secret it holds, and a tag key
derived from its signing key. The gateway (addons/masking.py) and `wiretrail mcp-stdio`, a small
gateway of its own, build it here, so one secret gets one tag in both."""
from __future__ import annotations

import os

from recorder.config import ConfigError, GatewayConfig
from recorder.masking.engine import Masker
from recorder.store.signing import Signer


def signing_material(cfg: GatewayConfig) -> list[str]:
    """The identity secret and the signing key's lines: secrets of the gateway's own."""
    material = []
    if cfg.identity.hs256_secret is not None:
        try:
            material.append(cfg.identity.hs256_secret.read())
        except Exception:  # the identity check reports an unreadable secret
            pass
    if cfg.storage.signing_key is not None:
        try:
            material += [line for line in cfg.storage.signing_key.read_text().splitlines()
                         if line and not line.startswith("-----")]
        except OSError:
            pass
    return material


def mask_key(signer: Signer | None) -> bytes:
    """The HMAC key of mask tags. Derived from the signing key when there is one, so one secret
    keeps its tag across restarts (and between the gateway and mcp-stdio); random otherwise."""
    if signer is not None:
        return signer.derived_key("mask-tags")
    return os.urandom(32)


def readable_credentials(cfg: GatewayConfig) -> list[str]:
    """The connections' upstream credentials that can be read here (a process other than the
    gateway may not see them all; the built-in rules still apply)."""
    out = []
    for conn in cfg.connections:
        if getattr(conn, "credential", None) is None:
            continue
        try:
            out.append(conn.credential.read())
        except ConfigError:
            continue
    return out


def gateway_masker(cfg: GatewayConfig, signer: Signer | None, known_secrets=()) -> Masker:
    known = sorted(set(known_secrets) | set(signing_material(cfg)))
    return Masker.from_config(cfg.masking, mask_key(signer), known_secrets=known)
