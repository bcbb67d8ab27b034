"""Several gateways, one storage root (docs/deployment.md).

A gateway with `[gateway] id` writes its own store under the shared root:
`<storage.dir>/gateways/<id>/` holds its ledger and its `YYYY/MM/DD/<session>.jsonl.zst` files.
Nothing is shared between gateways but the root, so they need no coordination: each keeps its
own ledger (locked, so two processes with the same id cannot both record), its own recovery and
retention, and session ids are unique by construction (time plus 80 random bits).

Readers (`verify`, `ls`, `show`, `serve`) take the root: ls, show and serve search it
recursively; verify checks each gateway's store against its own ledger (`store_paths`).
"""
from __future__ import annotations

import re
from pathlib import Path

from recorder.store import format_v1
from recorder.store.ledger import LEDGER_NAME

GATEWAYS = "gateways"  # the folder under storage.dir that holds one store per gateway id
# The folder under storage.dir that holds the stores of `wiretrail mcp-stdio` processes (one per
# host, user and slot, each with its own ledger), beside a single gateway's store or a fleet's.
STDIO_STORES = "mcp-stdio"
ID_PATTERN = r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?"  # a DNS label: a folder name everywhere
_ID = re.compile(ID_PATTERN)


def gateway_store(root: Path, gateway_id: str | None) -> Path:
    """Where one gateway writes: its own folder under the root, or the root itself (no id)."""
    if gateway_id is None:
        return Path(root)
    if not _ID.fullmatch(gateway_id):
        raise ValueError(f"not a gateway id: {gateway_id!r}")
    return Path(root) / GATEWAYS / gateway_id


def is_fleet_root(path: Path) -> bool:
    return (Path(path) / GATEWAYS).is_dir() and not (Path(path) / LEDGER_NAME).exists()


def layout_problem(root: Path, gateway_id: str | None) -> str | None:
    """Why a gateway with this id must not write under `root`, or None. A root is either one
    gateway's store (its ledger at the top) or a fleet's (gateways/<id>/), never both: a store
    inside another would show as files missing from, or planted in, the other's ledger."""
    root = Path(root)
    if gateway_id is None and (root / GATEWAYS).is_dir():
        ids = sorted(p.name for p in (root / GATEWAYS).iterdir() if p.is_dir())
        return (f"storage.dir {root} holds the stores of several gateways ({', '.join(ids) or 'none yet'}), "
                "and this gateway has no id: set [gateway] id to one of its own")
    if gateway_id is not None and (root / LEDGER_NAME).exists():
        return (f"storage.dir {root} is the store of a single gateway (its {LEDGER_NAME} is at the top), "
                f"and this gateway has [gateway] id = {gateway_id!r}: give the fleet a new storage.dir "
                "(the old store stays readable where it is)")
    return None


def store_paths(path: Path) -> tuple[list[Path], list[Path]]:
    """A path to verify, split into the stores it holds: a fleet root becomes each gateway's
    folder. Also returns session files under a fleet root that lie outside every gateway's
    folder (no ledger can vouch for them)."""
    path = Path(path)
    if not path.is_dir() or not is_fleet_root(path):
        return [path], []
    gateways = path / GATEWAYS
    stdio = path / STDIO_STORES
    stores = sorted(p for p in gateways.iterdir() if p.is_dir())
    stores += sorted(p for p in stdio.iterdir() if p.is_dir()) if stdio.is_dir() else []
    stray = sorted(f for f in path.rglob("*" + format_v1.FILE_SUFFIX)
                   if f.is_file() and gateways not in f.parents and stdio not in f.parents)
    stray += sorted(f for f in gateways.glob("*" + format_v1.FILE_SUFFIX) if f.is_file())
    return stores, stray
