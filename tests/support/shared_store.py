"""A store recorded once by a module-scoped fixture and read by several tests.

`kept_read_only(root)` wraps the fixture's yield: at the end of the module it checks that no
test changed, added or removed a file under `root`, so a test that writes to the shared store
(instead of to its own copy in tmp_path) fails loudly rather than skewing the tests after it.
"""
from __future__ import annotations

import hashlib
from contextlib import contextmanager
from pathlib import Path


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@contextmanager
def kept_read_only(root: Path):
    before = tree_digest(root)
    yield
    after = tree_digest(root)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test changed the shared store {root} (work on a copy in tmp_path): {changed}"
