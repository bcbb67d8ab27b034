"""Several gateways, one storage root (docs/deployment.md).

A gateway with `[gateway] id` writes its own store under the shared root:
`<storage.dir>/gateways/<id>/` holds its ledger and its `YYYY/MM/DD/<session>.jsonl.zst` files.
Nothing is shared between gateways but the root, so they need no coordination: each keeps its
own ledger (locked, so two processes with the same id cannot both record), its own recovery and
retention, and session ids are unique by construction (time plus 80 random bits).

Readers (`verify`, `ls`, `show`, `serve`) take the root: ls and show search it recursively;
verify and serve check each gateway's store against its own ledger (`store_paths`, `parts`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
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
    stores = _fleet_stores(path)
    stray = sorted(f for f in path.rglob("*" + format_v1.FILE_SUFFIX)
                   if f.is_file() and gateways not in f.parents and stdio not in f.parents)
    stray += sorted(f for f in gateways.glob("*" + format_v1.FILE_SUFFIX) if f.is_file())
    stray += sorted(f for f in stdio.glob("*" + format_v1.FILE_SUFFIX) if f.is_file()) if stdio.is_dir() else []
    return stores, stray


def _fleet_stores(root: Path) -> list[Path]:
    gateways, stdio = root / GATEWAYS, root / STDIO_STORES
    stores = sorted(p for p in gateways.iterdir() if p.is_dir())
    return stores + (sorted(p for p in stdio.iterdir() if p.is_dir()) if stdio.is_dir() else [])


STRAY = "_outside"  # the key of a fleet root's files outside every part (not a gateway id: "_")


@dataclass(frozen=True)
class Part:
    """One store under a root that answers to its own ledger."""

    key: str  # "" for the root's own store; a gateway id; "mcp-stdio.<slot>"; STRAY
    name: str  # as a reader names it: "", "gw1", "mcp-stdio/<slot>"
    path: Path
    prune: frozenset[str] = frozenset()  # folders (relative to path) whose subfolders are other parts


def parts(root: Path) -> list[Part]:
    """The stores under `root` as the review page reads them, split as `store_paths` splits them
    for verify: a fleet root's gateways' and mcp-stdio stores, and (STRAY) the folders that hold
    its stray files; a single store and the mcp-stdio stores beside its files."""
    root = Path(root)
    if is_fleet_root(root):
        out = [_part(root, s) for s in _fleet_stores(root)]
        return out + [Part(STRAY, "outside every gateway's store", root, frozenset({GATEWAYS, STDIO_STORES}))]
    stdio = root / STDIO_STORES
    below = sorted(p for p in stdio.iterdir() if p.is_dir()) if stdio.is_dir() else []
    return [Part("", "", root, frozenset({STDIO_STORES}))] + [_part(root, s) for s in below]


def _part(root: Path, store: Path) -> Part:
    # Keys never collide: a gateway id has no ".", the others start with their folder's name.
    if store.parent.name == STDIO_STORES:
        return Part(f"{STDIO_STORES}.{store.name}", f"{STDIO_STORES}/{store.name}", store)
    key = store.name if _ID.fullmatch(store.name) else f"{GATEWAYS}.{store.name}"
    return Part(key, store.name, store)
