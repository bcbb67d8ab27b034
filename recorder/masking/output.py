"""The masker for what the command line prints and exports (show, export, replay, mask).

Records are masked when they are written, but a session recorded before a rule existed,
or a live reply that replay fetches, holds text no rule has seen yet. Every command that
prints or exports applies today's rules first: the built-in catalogue, plus the custom
rules, allowlist and connection credentials of a gateway config when one is given. The
tags use a key of their own (os.urandom): they correlate within one output, not with the
tags in the artifact.
"""
from __future__ import annotations

import os


def output_masker(config_path: str | None = None):
    """(masker, warnings). Raises ConfigError, RuleError or OSError for a bad config."""
    from recorder.masking import Masker

    key = os.urandom(32)
    if not config_path:
        return Masker(key), []
    from recorder.config import ConfigError, load_config

    cfg = load_config(config_path, read_secrets=False)
    known, warnings = [], []
    for conn in cfg.connections:
        if getattr(conn, "credential", None) is None:
            continue
        try:
            known.append(conn.credential.read())
        except ConfigError as e:
            warnings.append(f"{e}; that credential is masked only where a rule finds it")
    return Masker.from_config(cfg.masking, key, known_secrets=known), warnings


def masked_read(read, masker):
    """A copy of a SessionRead whose records carry today's masking (recorder/forensics/remask.py)."""
    import dataclasses

    from recorder.forensics.remask import masked_records

    return dataclasses.replace(read, records=masked_records(read, masker))
