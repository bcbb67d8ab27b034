"""Several gateways' stores under one root (recorder/store/fleet.py), `verify` over that root,
and the object storage helpers that need no server (recorder/store/s3.py). The gateways, the
load balancer and the bucket end to end: tests/e2e/test_fleet_e2e.py,
test_deployment_doc_e2e.py, test_object_storage_e2e.py."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from recorder.store import signing
from recorder.forensics import verify
from recorder.config import ConfigError, parse_config
from recorder.store.sessions import SessionRegistry
from recorder.store import fleet, s3
from recorder.store.writer import RecordWriter

IDENTITY = {"sub": "alice", "email": None, "groups": [], "iss": "test", "method": "jwt", "authenticated": True}


def gateway_part(root: Path, gid: str, signer, sessions: int = 2) -> Path:
    store = fleet.gateway_store(root, gid)
    w = RecordWriter(fsync="never", storage_dir=store, signer=signer)
    w.start()
    reg = SessionRegistry(w, store, idle_timeout=60, max_duration=600, signing_key_id=signer.key_id, gateway_id=gid)
    for i in range(sessions):
        s = reg.begin_flow(f"user{i}", IDENTITY, ("10.0.0.1", 4000 + i))
        s.record("http.error", {"flow": "f", "phase": "connect", "message": "refused"})
        reg.end_flow(s)
    reg.close_all()
    assert w.stop(timeout=10)
    return store


@pytest.fixture
def fleet_root(tmp_path):
    priv, pub, _ = signing.generate(tmp_path / "keys")
    signer = signing.load_signer(priv)
    root = tmp_path / "root"
    for gid in ("gw1", "gw2"):
        gateway_part(root, gid, signer)
    return root, [signing.load_verifier(pub)]


def test_gateway_ids_are_folder_names_and_the_config_checks_them():
    assert fleet.gateway_store(Path("/s"), "gw-1") == Path("/s/gateways/gw-1")
    assert fleet.gateway_store(Path("/s"), None) == Path("/s")
    base = '[storage]\ndir = "s"\n[identity]\nmode = "none"\n[gateway]\nid = '
    assert parse_config(base + '"gw1"\n', source="t", base_dir=Path("/b")).store_dir == Path("/b/s/gateways/gw1")
    for bad in ('"../x"', '"GW1"', '"a/b"', '""', '"-gw"', '"' + "a" * 65 + '"'):
        with pytest.raises(ConfigError) as e:
            parse_config(base + bad + "\n", source="t", base_dir=Path("/b"))
        assert e.value.key == "gateway.id"


def test_a_root_is_one_gateways_store_or_a_fleets(tmp_path):
    assert fleet.layout_problem(tmp_path, None) is None and fleet.layout_problem(tmp_path, "gw1") is None
    (tmp_path / "gateways" / "gw1").mkdir(parents=True)
    assert "has no id" in fleet.layout_problem(tmp_path, None)
    assert fleet.layout_problem(tmp_path, "gw2") is None
    single = tmp_path / "single"
    single.mkdir()
    (single / "ledger.jsonl").write_text("")
    assert "store of a single gateway" in fleet.layout_problem(single, "gw1")
    assert fleet.layout_problem(single, None) is None


def test_verify_checks_each_gateways_part_against_its_own_ledger(fleet_root):
    root, verifiers = fleet_root
    report = verify.verify_paths([root], verifiers)
    assert report.code == 0 and len(report.ledgers) == 2 and len(report.files) == 4
    assert {lv.path.parent.name for lv in report.ledgers} == {"gw1", "gw2"}
    for v in report.files:
        assert v.read.open_record["gateway"]["id"] == v.path.parent.parent.parent.parent.name


def test_verify_catches_a_file_moved_between_gateways_parts(fleet_root):
    root, verifiers = fleet_root
    f = next((root / "gateways" / "gw1").rglob("*.jsonl.zst"))
    moved = root / "gateways" / "gw2" / f.relative_to(root / "gateways" / "gw1")
    shutil.move(f, moved)
    report = verify.verify_paths([root], verifiers)
    assert report.code == 1
    text = "\n".join(line for v in report.files for line in v.describe())
    text += "\n".join(line for lv in report.ledgers for line in lv.describe(True))
    assert "not in the ledger" in text and "deleted or moved" in text


def test_verify_flags_a_session_file_outside_every_gateways_part(fleet_root):
    root, verifiers = fleet_root
    f = next((root / "gateways" / "gw1").rglob("*.jsonl.zst"))
    for where in (root / "2026" / f.name, root / "gateways" / f.name, root / "mcp-stdio" / f.name):
        where.parent.mkdir(exist_ok=True)
        shutil.copy(f, where)
        report = verify.verify_paths([root], verifiers)
        assert report.code == 1
        stray = [v for v in report.files if v.path == where]
        assert stray and "not in any gateway's store" in "\n".join(stray[0].describe())
        where.unlink()


def test_bucket_urls():
    u = s3.BucketUrl.parse("s3://acme/wiretrail/sessions/")
    assert (u.bucket, u.prefix, u.key("gateways/gw1/ledger.jsonl")) == \
        ("acme", "wiretrail/sessions", "wiretrail/sessions/gateways/gw1/ledger.jsonl")
    assert s3.BucketUrl.parse("s3://acme").key("x") == "x"
    for bad in ("s3://", "https://acme/x", "/tmp/x"):
        with pytest.raises(ValueError):
            s3.BucketUrl.parse(bad)


def test_a_bucket_copy_never_writes_outside_its_folder_or_other_kinds_of_file(tmp_path):
    ok = s3.safe_target(tmp_path, "gateways/gw1/2026/12/03/01ABC.jsonl.zst")
    assert ok == tmp_path / "gateways/gw1/2026/12/03/01ABC.jsonl.zst"
    assert s3.safe_target(tmp_path, "gateways/gw1/ledger.jsonl") == tmp_path / "gateways/gw1/ledger.jsonl"
    for key in ("/etc/x.jsonl.zst", "../x.jsonl.zst", "a/../../x.jsonl.zst", "a//x.jsonl.zst", "./x.jsonl.zst",
                "a\\..\\x.jsonl.zst", "gateways/gw1/notes.txt", "", "ledger.jsonl.bak"):
        assert s3.safe_target(tmp_path, key) is None, key


# -- the review page over a fleet's root (recorder/review/index.py) ------------------------------


def _rows(index):
    from recorder.review.listing import Filters

    return index.page(Filters())


def _zst_edit(path: Path, old: bytes, new: bytes) -> None:
    import zstandard

    data = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    assert old in data
    path.write_bytes(zstandard.ZstdCompressor().compress(data.replace(old, new)))


def test_the_review_index_reads_each_gateways_part_against_its_own_ledger(fleet_root):
    from recorder.review.index import SessionIndex

    root, verifiers = fleet_root
    page = _rows(SessionIndex(root, verifiers))
    assert len(page.rows) == 4 and page.ledger_problems == [] and page.no_ledger == []
    assert sorted(page.gateways) == ["gw1", "gw2"]
    for r in page.rows:
        assert r.integrity.state == "verified", r.integrity.detail
        assert r.gateway == r.part in ("gw1", "gw2") and r.href == f"/g/{r.part}/s/{r.session_id}"
    by_gw = {g: [r for r in page.rows if r.gateway == g] for g in ("gw1", "gw2")}
    assert len(by_gw["gw1"]) == len(by_gw["gw2"]) == 2
    # What verify says of the root, the page says of its rows: one file edited in gw1's part,
    # one deleted from gw2's.
    edited = next((root / "gateways" / "gw1").rglob("*.jsonl.zst"))
    _zst_edit(edited, b'"refused"', b'"refuseX"')
    deleted = next((root / "gateways" / "gw2").rglob("*.jsonl.zst"))
    deleted.unlink()
    report = verify.verify_paths([root], verifiers)
    page = _rows(SessionIndex(root, verifiers))
    assert {r.session_id: r.integrity.state for r in page.rows} == \
        {v.path.name.split(".")[0]: ("tampered" if not v.ok else "verified") for v in report.files}
    assert [r.integrity.state for r in page.rows if r.session_id == edited.name.split(".")[0]] == ["tampered"]
    assert [p for p in page.ledger_problems if p.startswith("gw2: session file deleted or moved")], page.ledger_problems
    assert not [p for p in page.ledger_problems if p.startswith("gw1:")]


def test_a_namesake_in_another_part_is_never_the_one_opened(fleet_root, tmp_path):
    """gw1's file copied into gw2's part under the same path: two rows, two links; gw2's copy is
    planted (its ledger does not name it), gw1's stays verified, over HTTP too."""
    import httpx

    from recorder.auth.identity import TokenVerifier
    from recorder.review.auth import ReviewAuth
    from recorder.review.index import SessionIndex
    from recorder.review.server import ReviewContext
    from tests.unit.test_review import Running, dev_identity, token

    root, verifiers = fleet_root
    f = next((root / "gateways" / "gw1").rglob("*.jsonl.zst"))
    twin = root / "gateways" / "gw2" / f.relative_to(root / "gateways" / "gw1")
    shutil.copy(f, twin)
    stem = f.name.split(".")[0]
    index = SessionIndex(root, verifiers)
    page = _rows(index)
    both = {r.part: r for r in page.rows if r.session_id == stem}
    assert both["gw1"].integrity.state == "verified" and both["gw2"].integrity.state == "tampered"
    assert "not in the ledger" in both["gw2"].integrity.detail
    assert index.find(stem, "gw1").path == f and index.find(stem, "gw2").path == twin
    assert index.find(stem) is None  # no part named: no guess
    ident = dev_identity(tmp_path)
    ctx = ReviewContext(store=root, index=index, auth=ReviewAuth(ident, TokenVerifier(ident)), key_ids=["k"])
    ctx.log = lambda *a: None
    with Running(ctx) as base, httpx.Client(base_url=base, trust_env=False,
                                            headers={"Authorization": f"Bearer {token()}"}) as c:
        listing = c.get("/").text
        assert f'href="/g/gw1/s/{stem}"' in listing and f'href="/g/gw2/s/{stem}"' in listing
        assert listing.count('<td class="gateway mono">gw1</td>') == 2
        assert listing.count('<td class="gateway mono">gw2</td>') == 3
        ok, planted = c.get(f"/g/gw1/s/{stem}"), c.get(f"/g/gw2/s/{stem}")
        assert ok.status_code == planted.status_code == 200
        assert ">sealed · verified</span>" in ok.text and ">tampered</span>" in planted.text
        assert f'href="/g/gw1/s/{stem}/artifact"' in ok.text and "gw1 · " in ok.text
        assert c.get(f"/g/gw2/s/{stem}/artifact").content == twin.read_bytes()
        assert c.get(f"/s/{stem}").status_code == 404  # the fleet's sessions are named by their part
        for bad in (f"/g/gw3/s/{stem}", f"/g/..%2Fgw1/s/{stem}", f"/g/gateways/s/{stem}", f"/g/gw1/s/../../etc"):
            assert c.get(bad).status_code == 404, bad


def test_a_file_outside_every_part_and_a_part_without_its_ledger_are_shown(fleet_root):
    from recorder.review.index import SessionIndex

    root, verifiers = fleet_root
    f = next((root / "gateways" / "gw1").rglob("*.jsonl.zst"))
    (root / "2026").mkdir()
    stray = root / "2026" / f.name
    shutil.copy(f, stray)
    (root / "gateways" / "gw2" / "ledger.jsonl").unlink()
    page = _rows(SessionIndex(root, verifiers))
    outside = [r for r in page.rows if r.part == fleet.STRAY]
    assert len(outside) == 1 and outside[0].integrity.state == "tampered"
    assert "not in any gateway's store" in outside[0].integrity.detail
    assert page.no_ledger == ["gw2"]


def test_a_gateway_part_that_is_a_symlink_out_of_the_store_is_not_read(fleet_root, tmp_path):
    from recorder.review.index import SessionIndex

    root, verifiers = fleet_root
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(root / "gateways" / "gw2", elsewhere)
    (root / "gateways" / "gw3").symlink_to(elsewhere)
    page = _rows(SessionIndex(root, verifiers))
    assert {r.part for r in page.rows} == {"gw1", "gw2"}
    assert any(p.startswith("gw3: a symbolic link, not read") for p in page.ledger_problems)


def test_parts_have_keys_that_cannot_collide(tmp_path):
    root = tmp_path / "root"
    for d in ("gateways/gw1", "gateways/Odd.name", "mcp-stdio/host.0.0"):
        (root / d).mkdir(parents=True)
    keys = {p.key: p.name for p in fleet.parts(root)}
    assert keys == {"gw1": "gw1", "gateways.Odd.name": "Odd.name", "mcp-stdio.host.0.0": "mcp-stdio/host.0.0",
                    fleet.STRAY: "outside every gateway's store"}
    single = tmp_path / "single"
    (single / "mcp-stdio" / "h.0.0").mkdir(parents=True)
    assert [p.key for p in fleet.parts(single)] == ["", "mcp-stdio.h.0.0"]


def stdio_part(root: Path, slot: str, signer) -> Path:
    """A `wiretrail mcp-stdio` store (its own ledger) under root/mcp-stdio/<slot>/."""
    store = root / fleet.STDIO_STORES / slot
    w = RecordWriter(fsync="never", storage_dir=store, signer=signer)
    w.start()
    reg = SessionRegistry(w, store, idle_timeout=60, max_duration=600, signing_key_id=signer.key_id)
    s = reg.begin_flow("alice", IDENTITY, ("stdio", 1))
    s.record("mcp.open", {"flow": "f", "command": ["server"], "pid": 1})
    reg.end_flow(s)
    reg.close_all()
    assert w.stop(timeout=10)
    return store


@pytest.mark.parametrize("layout", ["fleet", "single"])
def test_mcp_stdio_stores_verify_beside_a_fleet_or_a_single_gateway(tmp_path, fleet_root, layout):
    root, verifiers = fleet_root
    signer = signing.load_signer(next((tmp_path / "keys").glob("*.key")))
    if layout == "single":  # one gateway without an id: its ledger at the top of the root
        root = tmp_path / "single"
        w = RecordWriter(fsync="never", storage_dir=root, signer=signer)
        w.start()
        reg = SessionRegistry(w, root, idle_timeout=60, max_duration=600, signing_key_id=signer.key_id)
        reg.end_flow(reg.begin_flow("bob", IDENTITY, ("10.0.0.2", 4000)))
        reg.close_all()
        assert w.stop(timeout=10)
    stdio_part(root, "host.0.0", signer)
    # The gateways still start there, and verify checks the stdio files against their own ledger.
    assert fleet.layout_problem(root, None if layout == "single" else "gw3") is None
    report = verify.verify_paths([root], verifiers)
    assert report.code == 0, report
    assert any(lv.path.parent.name == "host.0.0" for lv in report.ledgers)
    assert any("mcp.open" in {r.get("t") for r in v.read.records} for v in report.files)
    # The review page reads the stdio store against its own ledger too, as verify does.
    from recorder.review.index import SessionIndex

    page = _rows(SessionIndex(root, verifiers))
    assert page.ledger_problems == [] and {r.integrity.state for r in page.rows} == {"verified"}, \
        [(r.gateway, r.integrity.detail) for r in page.rows]
    assert "mcp-stdio/host.0.0" in {r.gateway for r in page.rows}
