"""docs/deployment.md, run as written: every ```sh block in order, in one bash script, with a
real HAProxy in front of two real gateways, curl as the client and moto's S3 server as the
bucket. Only the settings block is replaced (by this machine's ports, a local TLS upstream
standing in for the API and the stand-in bucket). Ground truth is the upstream's own log: every
request it got is recorded in one of the two gateways' parts, both gateways got traffic, the
upstream saw the gateway's credential and the store never holds it; and the bucket itself:
it holds every session file with its checksum; the review page the doc starts over the bucket
lists both gateways' sessions, verified."""
from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import boto3
import pytest

from recorder.store import fleet
from tests.support.artifacts import Artifacts
from tests.support.gateway import BIN_DIR, REPO_ROOT, free_ports
from tests.support.s3 import MotoS3

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240),
              pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (.ci/run installs it)")]

DOC = REPO_ROOT / "docs" / "deployment.md"
_BLOCK = re.compile(r"^```sh\n(.*?)^```$", re.S | re.M)
SETTINGS_MARK = "# settings:"
PID_FILES = ("haproxy.pid", "gw1.pid", "gw2.pid", "review.pid")
ROW = re.compile(r'<tr class="row" data-session="([0-9A-Z]+)" data-gateway="([^"]*)">\s*<td><span class="badge '
                 r'b-(\w+)"')


def doc_blocks() -> list[str]:
    return _BLOCK.findall(DOC.read_text())


def settings_names(block: str) -> list[str]:
    return re.findall(r"\b([A-Z][A-Z0-9_]*)=", block)


def test_the_settings_block_is_the_only_one_replaced():
    blocks = doc_blocks()
    marked = [b for b in blocks if b.startswith(SETTINGS_MARK)]
    assert len(marked) == 1 and blocks[0] is marked[0], "deployment.md must open with one settings block"


def test_deployment_doc_runs_as_written(tmp_path, upstream, test_ca):
    blocks = doc_blocks()
    bucket = MotoS3(tmp_path).start()
    try:
        _run_doc(blocks, tmp_path, upstream, test_ca, bucket)
    finally:
        bucket.stop()


def _run_doc(blocks, tmp_path, upstream, test_ca, bucket):
    gw1, gw2, lb, review = free_ports(4)
    secret = "sk-doc-test-" + os.urandom(8).hex()
    settings = {
        "WT": str(tmp_path / "wt"),
        "WIRETRAIL_SRC": str(REPO_ROOT),
        "UPSTREAM_HOST": "127.0.0.1",
        "UPSTREAM_PORT": str(upstream.port),
        "OPENAI_API_KEY": secret,
        "GW1_PORT": str(gw1), "GW2_PORT": str(gw2), "LB_PORT": str(lb), "REVIEW_PORT": str(review),
        "MITMDUMP_OPTS": f"--set ssl_verify_upstream_trusted_ca={test_ca.cert_path}",
        "BUCKET": "doc-walkthrough",
        **bucket.env,  # AWS_REGION, AWS_ENDPOINT_URL, and the stand-in's credentials
    }
    ours_only = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}  # the doc leaves them to boto3's chain
    assert sorted(settings_names(blocks[0])) == sorted(set(settings) - ours_only), \
        "the doc's settings changed: update this test"
    ours = "\n".join(f"export {k}={_quote(v)}" for k, v in settings.items())
    script = "set -euo pipefail\n" + "\n".join([ours, *blocks[1:]])
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    env["PATH"] = f"{BIN_DIR}:{env.get('PATH', '')}"
    env["HOME"] = str(tmp_path)
    wt = Path(settings["WT"])
    try:
        res = subprocess.run(["bash", "-c", script], capture_output=True, text=True, env=env, timeout=200,
                             cwd=tmp_path)
    finally:
        _stop_leftovers(wt)
    logs = "".join(f"\n--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(wt.glob("*.log")))
    assert res.returncode == 0, f"exit {res.returncode}\n{res.stdout[-4000:]}\n{res.stderr[-4000:]}{logs}"
    # The doc's own verify and ls ran (set -e): verify passed over both gateways' parts, locally
    # and in the bucket's copy, each against its own ledger.
    for gid in ("gw1", "gw2"):
        oks = [line for line in res.stdout.splitlines()
               if line.startswith("OK") and f"/gateways/{gid}/ledger.jsonl: " in line]
        assert len(oks) == 2, res.stdout
    # Each gateway ran on a CPU of its own (its writer process inherits it).
    cpus = re.findall(r"pid \d+'s current affinity list: (\S+)", res.stdout)
    assert cpus == ["0", "1" if len(os.sched_getaffinity(0)) > 1 else "0"], res.stdout
    root = wt / "sessions"
    parts = {gid: Artifacts(root / fleet.GATEWAYS / gid) for gid in ("gw1", "gw2")}
    assert parts["gw1"].sessions and parts["gw2"].sessions, "the balancer sent nothing to one of the gateways"
    exchanges = upstream.exchanges
    assert len(exchanges) == 7, [ex.target for ex in exchanges]  # one direct, six through HAProxy
    recorded = [f for a in parts.values() for f in a.flows() if f.request is not None]
    bodies = sorted(f.body("request") for f in recorded)
    assert bodies == sorted(ex.body for ex in exchanges), "the upstream got a request that is not on the record"
    for ex in exchanges:
        assert ex.header("authorization") == f"Bearer {secret}", "the gateway's credential was not injected"
    for p in root.rglob("*"):
        if p.is_file():
            assert secret.encode() not in _plain(p), f"{p} holds the upstream key"
    s3 = boto3.client("s3", endpoint_url=bucket.endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    for p in [*parts["gw1"].paths, *parts["gw2"].paths]:
        key = "wiretrail/" + p.relative_to(root).as_posix()
        head = s3.head_object(Bucket=settings["BUCKET"], Key=key, ChecksumMode="ENABLED")
        assert head["ChecksumSHA256"] == base64.b64encode(hashlib.sha256(p.read_bytes()).digest()).decode(), key
    lock = s3.get_object_lock_configuration(Bucket=settings["BUCKET"])["ObjectLockConfiguration"]
    assert lock["Rule"]["DefaultRetention"]["Mode"] == "COMPLIANCE"
    # The review page the doc started over the bucket listed both gateways' sessions, verified
    # each against its own gateway's ledger.
    listed = {(gid, sid): state for sid, gid, state in ROW.findall((wt / "review.html").read_text())}
    assert listed == {(gid, s.session_id): "verified" for gid, a in parts.items() for s in a.sessions}, listed


def _plain(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".zst"):
        import zstandard
        return zstandard.ZstdDecompressor().decompressobj().decompress(data)
    return data


def _quote(v: str) -> str:
    return "'" + v.replace("'", "'\\''") + "'"


def _stop_leftovers(wt: Path) -> None:
    """The processes the doc started, by the pids it wrote, if the script stopped early."""
    for name in PID_FILES:
        try:
            pid = int((wt / name).read_text().strip())
        except (OSError, ValueError):
            continue
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            continue
        for _ in range(100):
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            import time
            time.sleep(0.1)
        else:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
