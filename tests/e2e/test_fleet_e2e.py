"""End to end, issue 23: several real gateways (mitmdump processes) write one storage root at
once, each into its own folder with its own ledger; `wiretrail verify`, `ls` and `show` take
the root; a deleted or planted file in either gateway's part is caught; a second process with
the same id refuses traffic; a gateway whose id does not fit the root's layout does not start.
The load-balanced pair and docs/deployment.md are tested in test_deployment_doc_e2e.py."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
from pathlib import Path

import pytest

from recorder.store import fleet
from tests.support.artifacts import TEST_ID_HEADER, Artifacts
from tests.support.checks import assert_every_upstream_request_recorded, wait_until
from tests.support.clients import httpx_client, new_test_id
from tests.support.gateway import WIRETRAIL, GatewayStartError

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(WIRETRAIL), *map(str, args)], capture_output=True, text=True, timeout=60)


def member(root: Path, key: Path, gid: str) -> dict:
    return {"storage": {"dir": root, "signing_key": key, "checkpoint_interval": 0.2}, "gateway": {"id": gid}}


def start_fails(start_gateway, cfg: dict) -> str:
    """The log of a gateway that must not start: mitmdump exits on an error logged during
    start-up, which may come just after it listens."""
    try:
        gw = start_gateway(cfg)
    except GatewayStartError as e:
        return str(e)
    assert wait_until(lambda: not gw.alive(), 20), "the gateway kept running"
    return gw.log_text()


@pytest.fixture
def signing_key(tmp_path) -> tuple[Path, Path]:
    res = run("keygen", tmp_path / "keys")
    assert res.returncode == 0, res.stderr
    return tmp_path / "keys" / "gateway.key", tmp_path / "keys" / "gateway.pub"


def test_two_gateways_write_one_store_that_verifies_as_a_whole(start_gateway, upstream, tmp_path, signing_key):
    key, pub = signing_key
    root = tmp_path / "fleet"
    gws = [start_gateway(member(root, key, "gw1")), start_gateway(member(root, key, "gw2"))]
    sent: dict[str, list[str]] = {"gw1": [], "gw2": []}
    errors: list[BaseException] = []

    def traffic(gw, gid: str) -> None:
        try:
            with httpx_client(gw, "reverse") as c:
                for i in range(15):
                    tid = new_test_id()
                    r = c.post("/echo", content=f"{gid} request {i}".encode(), headers={TEST_ID_HEADER: tid})
                    assert r.status_code == 200, r.text
                    sent[gid].append(tid)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=traffic, args=(gw, gid)) for gw, gid in zip(gws, ("gw1", "gw2"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    for gw in gws:
        assert gw.stop() == 0

    # Each gateway wrote its own part, with its own ledger, and recorded its id.
    for gid in ("gw1", "gw2"):
        part = root / fleet.GATEWAYS / gid
        assert (part / "ledger.jsonl").is_file()
        art = Artifacts(part)
        assert art.sessions, f"no session of {gid}"
        for s in art.sessions:
            assert s.records[0]["gateway"]["id"] == gid
        recorded = {tid for tid in sent[gid] if art.flows_with_test_id(tid)}
        assert recorded == set(sent[gid]), f"{gid}: not every request it forwarded is in its part"
    ledgers = [(root / fleet.GATEWAYS / g / "ledger.jsonl").read_bytes() for g in ("gw1", "gw2")]
    assert ledgers[0].split(b"\n")[0] != ledgers[1].split(b"\n")[0], "two gateways share one ledger"
    # The upstream's own log: every request it got is on the record, in one of the two parts.
    assert_every_upstream_request_recorded(upstream, Artifacts(root))

    ok = run("verify", "--key", pub, root)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count("ledger") >= 2 and "gw1" in ok.stdout and "gw2" in ok.stdout, ok.stdout
    listing = run("ls", root)
    assert listing.returncode == 0, listing.stderr
    for s in Artifacts(root).sessions:
        assert s.session_id in listing.stdout
        shown = run("show", s.session_id, "--dir", root)
        assert shown.returncode == 0 and s.session_id in shown.stdout, shown.stderr

    # A file deleted from the second gateway's part is caught by its ledger.
    victim = Artifacts(root / fleet.GATEWAYS / "gw2").paths[0]
    kept = victim.read_bytes()
    victim.unlink()
    bad = run("verify", "--key", pub, root)
    assert bad.returncode == 1 and "session file deleted or moved" in bad.stdout, bad.stdout
    victim.write_bytes(kept)
    # A gateway's session file planted beside the gateways' parts: no ledger vouches for it.
    stray = root / "2026" / victim.name
    stray.parent.mkdir()
    shutil.copy(victim, stray)
    bad = run("verify", "--key", pub, root)
    assert bad.returncode == 1 and "not in any gateway's store" in bad.stdout, bad.stdout
    stray.unlink()
    # One gateway's ledger deleted: its signed files are caught without it.
    (root / fleet.GATEWAYS / "gw1" / "ledger.jsonl").unlink()
    bad = run("verify", "--key", pub, root)
    assert bad.returncode == 1 and "no ledger" in bad.stdout, bad.stdout


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_a_second_process_with_the_same_id_does_not_record(start_gateway, upstream, tmp_path, signing_key, writer):
    """Its ledger is locked by the first: it stops at start-up (its `running` waits for the
    writer's try, so mitmproxy exits on the error logged during start-up, whichever writer),
    and the first goes on recording."""
    key, _ = signing_key
    root = tmp_path / "fleet"
    first = start_gateway(member(root, key, "gw1"))
    second = member(root, key, "gw1")
    second["storage"]["writer"] = writer
    log = start_fails(start_gateway, second)
    assert "another gateway holds the ledger" in log, log
    tid = new_test_id()
    with httpx_client(first, "reverse") as c:
        assert c.post("/echo", content=b"x", headers={TEST_ID_HEADER: tid}).status_code == 200
    assert len(upstream.received(tid)) == 1


@pytest.mark.parametrize("layout, gid, says", [
    ("fleet", None, "has no id: set [gateway] id"),
    ("single", "gw1", "is the store of a single gateway"),
])
def test_a_gateway_that_does_not_fit_the_roots_layout_does_not_start(start_gateway, tmp_path, signing_key,
                                                                       layout, gid, says):
    key, _ = signing_key
    root = tmp_path / "root"
    if layout == "fleet":
        (root / fleet.GATEWAYS / "gw1").mkdir(parents=True)
    else:
        root.mkdir()
        (root / "ledger.jsonl").write_text(json.dumps({"v": 1}) + "\n")
    cfg = {"storage": {"dir": root, "signing_key": key}}
    if gid:
        cfg["gateway"] = {"id": gid}
    assert says in start_fails(start_gateway, cfg)
