"""The guard on a store shared by a module's e2e tests (tests/support/shared_store.py) catches
a test that writes to the shared store instead of its own copy: an edit, a new file, a removal."""
from __future__ import annotations

import pytest

from tests.support.shared_store import kept_read_only


def store(tmp_path):
    root = tmp_path / "store"
    (root / "2026").mkdir(parents=True)
    (root / "2026" / "a.jsonl.zst").write_bytes(b"records")
    (root / "ledger.jsonl").write_bytes(b"ledger\n")
    return root


def test_a_store_only_read_passes(tmp_path):
    root = store(tmp_path)
    with kept_read_only(root):
        assert (root / "ledger.jsonl").read_bytes() == b"ledger\n"


@pytest.mark.parametrize("change", ["edited", "added", "removed"])
def test_a_change_to_the_shared_store_fails(tmp_path, change):
    root = store(tmp_path)
    with pytest.raises(AssertionError, match="changed the shared store") as caught:
        with kept_read_only(root):
            if change == "edited":
                (root / "2026" / "a.jsonl.zst").write_bytes(b"recordz")
            elif change == "added":
                (root / "2026" / "b.jsonl.zst").write_bytes(b"planted")
            else:
                (root / "ledger.jsonl").unlink()
    name = {"edited": "a.jsonl.zst", "added": "b.jsonl.zst", "removed": "ledger.jsonl"}[change]
    assert name in str(caught.value)
