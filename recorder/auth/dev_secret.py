"""The development identity's HS256 secret, made on first use.

The embedded demo default trusts tokens minted with `wiretrail token`; both find the
secret in the same file, created here with a random value the first time either runs.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path


def ensure_dev_secret(path: str | os.PathLike) -> Path:
    """Make a random development HS256 secret at `path` (mode 0600) unless one is there. Safe when
    several processes start at once: the file appears complete or not at all. Returns the path."""
    path = Path(path)
    if path.exists():
        return path
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
        try:
            os.link(tmp, path)  # atomic, and never replaces a secret another process made
        except FileExistsError:
            pass
    finally:
        tmp.unlink(missing_ok=True)
    return path
