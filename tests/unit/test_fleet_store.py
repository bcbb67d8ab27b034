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
    for where in (root / "2026" / f.name, root / "gateways" / f.name):
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


def test_serve_on_a_fleet_root_names_the_parts_it_can_serve(fleet_root, tmp_path):
    import subprocess
    import sys

    root, _ = fleet_root
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'[storage]\ndir = "{root}"\n[identity]\nmode = "none"\n')
    r = subprocess.run([str(Path(sys.executable).parent / "wiretrail"), "serve", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "holds the stores of several gateways" in r.stderr, r.stderr
    assert str(root / "gateways" / "gw1") in r.stderr and str(root / "gateways" / "gw2") in r.stderr


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
