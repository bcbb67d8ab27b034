"""End to end, issue 23: a real gateway uploads its ended sessions and its ledger to an
S3-compatible bucket. The bucket is moto's standalone server (`moto_server`), a stand-in: no
real S3 server installs from the registries reachable here. Ground truth is the bucket itself
(boto3 against the same server): objects arrive with the SHA-256 of the local file as their
checksum; a gateway killed before uploading uploads at its next start; an Object Lock
(COMPLIANCE) version cannot be deleted, and an overwrite is caught by `verify s3://...`;
`ls`/`show` read the bucket; a gateway that requires the lock does not start without it."""
from __future__ import annotations

import base64
import hashlib
import signal
import subprocess
import threading
from pathlib import Path

import boto3
import httpx
import pytest
from botocore.exceptions import ClientError

from recorder.store import fleet
from tests.support.artifacts import TEST_ID_HEADER, Artifacts
from tests.support.checks import wait_until
from tests.support.clients import httpx_client, new_test_id
from tests.support.gateway import WIRETRAIL, GatewayStartError
from tests.support.s3 import MotoS3

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

@pytest.fixture
def s3_server(tmp_path, monkeypatch):
    server = MotoS3(tmp_path).start()
    try:
        for k, v in server.env.items():
            monkeypatch.setenv(k, v)  # the gateway and the CLI inherit them
        yield server.endpoint
    finally:
        server.stop()


def bucket(endpoint: str, name: str, locked: bool):
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=name, ObjectLockEnabledForBucket=locked)
    if locked:
        s3.put_object_lock_configuration(Bucket=name, ObjectLockConfiguration={
            "ObjectLockEnabled": "Enabled", "Rule": {"DefaultRetention": {"Mode": "COMPLIANCE", "Days": 1}}})
    return s3


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(WIRETRAIL), *map(str, args)], capture_output=True, text=True, timeout=120)


@pytest.fixture
def signing_key(tmp_path) -> tuple[Path, Path]:
    res = run("keygen", tmp_path / "keys")
    assert res.returncode == 0, res.stderr
    return tmp_path / "keys" / "gateway.key", tmp_path / "keys" / "gateway.pub"


def config(root: Path, key: Path, endpoint: str, name: str, **upload) -> dict:
    return {
        "storage": {"dir": root, "signing_key": key, "checkpoint_interval": 0.2},
        "sessions": {"idle_timeout": 0.5},  # sessions end while the gateway runs, and are uploaded
        "gateway": {"id": "gw1"},
        "object_storage": {"url": f"s3://{name}/fleet", "endpoint_url": endpoint, "interval": 0.3, **upload},
    }


def send(gw, n: int = 3) -> list[str]:
    tids = []
    with httpx_client(gw, "reverse") as c:
        for i in range(n):
            tid = new_test_id()
            assert c.post("/echo", content=f"to the bucket {i}".encode(), headers={TEST_ID_HEADER: tid}).status_code == 200
            tids.append(tid)
    return tids


def keep_busy(gw, stop: threading.Event) -> None:
    """Requests from 127.0.0.2 (its own session) more often than sessions.idle_timeout."""
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(base_url=gw.reverse_url, transport=transport, trust_env=False, timeout=10) as c:
        while not stop.is_set():
            c.post("/echo", content=b"keeping the session open", headers={TEST_ID_HEADER: new_test_id()})
            stop.wait(0.1)


def objects(s3, name: str) -> dict[str, dict]:
    return {o["Key"]: o for o in s3.list_objects_v2(Bucket=name, Prefix="fleet/").get("Contents", [])}


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_sessions_reach_a_locked_bucket_with_checksums_and_verify_from_it(start_gateway, s3_server, tmp_path,
                                                                         signing_key):
    key, pub = signing_key
    s3 = bucket(s3_server, "audit", locked=True)
    root = tmp_path / "store"
    gw = start_gateway(config(root, key, s3_server, "audit", require_object_lock=True))
    assert wait_until(lambda: "(Object Lock: COMPLIANCE)" in gw.log_text(), 20), gw.log_text()
    # A second session (another client address) stays open, kept busy, while the first ends and
    # is uploaded with the ledger: the bucket's ledger names a session the bucket has no file of yet.
    stop_busy = threading.Event()
    busy = threading.Thread(target=keep_busy, args=(gw, stop_busy), daemon=True)
    busy.start()
    try:
        send(gw)
        part = root / fleet.GATEWAYS / "gw1"
        assert wait_until(lambda: any(k.endswith(".jsonl.zst") for k in objects(s3, "audit")), 30), gw.log_text()
        meanwhile = run("verify", "--key", pub, "s3://audit/fleet")
        assert meanwhile.returncode == 0, meanwhile.stdout + meanwhile.stderr
        assert "1 session(s) still open when this ledger was uploaded" in meanwhile.stdout, meanwhile.stdout
    finally:
        stop_busy.set()
        busy.join(10)
    assert gw.stop() == 0
    local = Artifacts(part)
    assert local.paths
    held = objects(s3, "audit")
    for p in local.paths + [part / "ledger.jsonl"]:
        k = "fleet/" + p.relative_to(root).as_posix()
        assert k in held, f"{k} not uploaded: {sorted(held)}"
        head = s3.head_object(Bucket="audit", Key=k, ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == sha256_b64(p.read_bytes())
        assert s3.get_object(Bucket="audit", Key=k)["Body"].read() == p.read_bytes()

    ok = run("verify", "--key", pub, "s3://audit/fleet")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    listing = run("ls", "s3://audit/fleet")
    assert listing.returncode == 0, listing.stderr
    shown = {}
    for session in local.sessions:  # the sent requests' session and the busy one, in no set order
        assert session.session_id in listing.stdout
        shown[session.session_id] = run("show", session.session_id, "--dir", "s3://audit/fleet")
        assert shown[session.session_id].returncode == 0, shown[session.session_id].stderr
    assert sum("to the bucket" in r.stdout for r in shown.values()) == 1, [r.stdout for r in shown.values()]

    # The lock: the uploaded version cannot be deleted; an overwrite is a new version, caught by verify.
    k = "fleet/" + local.paths[0].relative_to(root).as_posix()
    version = s3.head_object(Bucket="audit", Key=k)["VersionId"]
    with pytest.raises(ClientError) as e:
        s3.delete_object(Bucket="audit", Key=k, VersionId=version)
    assert e.value.response["Error"]["Code"] == "AccessDenied", e.value.response
    s3.put_object(Bucket="audit", Key=k, Body=local.paths[1 % len(local.paths)].read_bytes() + b"x")
    bad = run("verify", "--key", pub, "s3://audit/fleet")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    original = s3.get_object(Bucket="audit", Key=k, VersionId=version)["Body"].read()
    assert original == local.paths[0].read_bytes(), "the locked version changed"


def test_a_gateway_killed_before_uploading_uploads_at_its_next_start(start_gateway, s3_server, tmp_path,
                                                                    signing_key):
    key, pub = signing_key
    s3 = bucket(s3_server, "resume", locked=False)
    root = tmp_path / "store"
    gw = start_gateway(config(root, key, s3_server, "resume", interval=3600))  # no pass until it stops
    send(gw)
    part = root / fleet.GATEWAYS / "gw1"
    assert wait_until(lambda: b'"session.close"' in (part / "ledger.jsonl").read_bytes(), 20)
    gw.stop(signal.SIGKILL)  # no last pass
    assert objects(s3, "resume") == {}
    again = start_gateway(config(root, key, s3_server, "resume", keep_local=False))
    closed = [p for p in Artifacts(part).paths]
    assert wait_until(lambda: all(not p.exists() for p in closed), 30), again.log_text()
    held = objects(s3, "resume")
    assert len([k for k in held if k.endswith(".jsonl.zst")]) >= len(closed)
    assert again.stop() == 0
    ok = run("verify", "--key", pub, "s3://resume/fleet")
    assert ok.returncode == 0, ok.stdout + ok.stderr


def test_a_gateway_that_requires_the_lock_does_not_start_without_it(start_gateway, s3_server, tmp_path,
                                                                    signing_key):
    key, _ = signing_key
    bucket(s3_server, "open", locked=False)
    try:
        gw = start_gateway(config(tmp_path / "store", key, s3_server, "open", require_object_lock=True))
    except GatewayStartError as e:
        log = str(e)
    else:
        assert wait_until(lambda: not gw.alive(), 20), "the gateway started without the lock it requires"
        log = gw.log_text()
    assert "require_object_lock = true, but" in log, log
