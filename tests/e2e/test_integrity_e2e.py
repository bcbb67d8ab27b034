"""End to end: a real gateway signs its sessions and keeps the ledger; `wiretrail verify`
catches each kind of tampering on that real store, a signed store without its ledger, and
(with anchors sent to a file, an HTTP endpoint and syslog) a ledger rolled back together
with its newest session; a kill -9 is recovered honestly at the next start; a full disk
refuses traffic instead of losing records, and verify reports it as damage, not tampering;
retention deletes old sessions and leaves a ledger that still verifies; a hung disk gets
503 after storage.write_timeout instead of hanging requests."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import httpx
import pytest
import zstandard

from tests.support.anchor_sinks import HttpAnchorSink, SyslogAnchorSink
from tests.support.artifacts import Artifacts
from tests.support.checks import assert_every_upstream_request_recorded, wait_until
from tests.support.clients import httpx_client, new_test_id
from tests.support.gateway import WIRETRAIL
from tests.support.shared_store import kept_read_only

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]


# -- helpers ------------------------------------------------------------------------------


def keygen(directory: Path) -> tuple[Path, Path]:
    proc = subprocess.run([str(WIRETRAIL), "keygen", str(directory)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return directory / "gateway.key", directory / "gateway.pub"


def verify(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(WIRETRAIL), "verify", *map(str, args)], capture_output=True, text=True, timeout=60)


def signed(store: Path, key: Path, **storage) -> dict:
    return {"storage": {"dir": store, "signing_key": key, "checkpoint_interval": 0.2, **storage}}


def session_files(store: Path) -> list[Path]:
    return sorted(store.rglob("*.jsonl.zst"))


def read_lines(path: Path) -> list[bytes]:
    data = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    return data.split(b"\n")[:-1]


def rewrite(path: Path, lines: list[bytes]) -> None:
    cobj = zstandard.ZstdCompressor().compressobj()
    path.write_bytes(cobj.compress(b"".join(x + b"\n" for x in lines)) + cobj.flush())


def rechain(lines: list[bytes]) -> list[bytes]:
    """What a forger without the key does: renumber and re-hash every line."""
    out, prev = [], "0" * 64
    for seq, line in enumerate(lines):
        rec = json.loads(line)
        rec["seq"], rec["prev"] = seq, prev
        new = json.dumps(rec, separators=(",", ":"), ensure_ascii=False).encode()
        out.append(new)
        prev = hashlib.sha256(new).hexdigest()
    return out


def ledger_entries(store: Path) -> list[dict]:
    path = store / "ledger.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_bytes().split(b"\n") if x]


def post(client: httpx.Client, tid: str, body: bytes | None = None) -> httpx.Response:
    if body is not None:
        return client.post("/echo", content=body, headers={"x-test-id": tid, "content-type": "text/plain"})
    return client.post("/v1/chat/completions", content=b'{"model":"m"}',
                       headers={"x-test-id": tid, "content-type": "application/json"})


# -- a signed store, and every tamper kind on it --------------------------------------------


@pytest.fixture(scope="module")
def signed_store(start_module_gateway, module_upstream, tmp_path_factory):
    """Three sealed sessions (two closed idle, one at shutdown) written by a real gateway, once
    for the module: every test that tampers works on its own copy (`tampered`)."""
    upstream, workdir = module_upstream, tmp_path_factory.mktemp("signed-store")
    priv, pub = keygen(workdir / "keys")
    store = workdir / "store"
    gw = start_module_gateway(config={**signed(store, priv), "sessions": {"idle_timeout": 0.4}})
    with httpx_client(gw, "reverse") as client:
        for i in range(3):
            for _ in range(3):
                assert post(client, new_test_id()).status_code == 200
            if i < 2:  # let the session close idle (and be sealed) before the next opens
                assert wait_until(lambda: sum(e["t"] == "session.close" for e in ledger_entries(store)) > i)
    assert gw.stop() == 0
    assert_every_upstream_request_recorded(upstream, Artifacts(store))
    with kept_read_only(store), kept_read_only(pub.parent):
        yield store, pub


def test_signed_store_verifies(signed_store):
    store, pub = signed_store
    files = session_files(store)
    assert len(files) == 3
    for f in files:
        lines = [json.loads(x) for x in read_lines(f)]
        assert lines[-1]["t"] == "seal" and lines[-2]["t"] == "session.close"
        assert lines[0]["key"] == lines[-1]["key"] is not None
    kinds = [e["t"] for e in ledger_entries(store)]
    assert kinds.count("session.open") == 3 and kinds.count("session.close") == 3
    res = verify("--key", pub, store)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count(": sealed,") == 3
    assert "all entries signed and verified" in res.stdout
    res = verify(store)
    assert res.returncode == 0 and "only the hash chains were checked" in res.stdout


def tampered(signed_store, tmp_path) -> tuple[Path, Path, list[Path]]:
    store, pub = signed_store
    copy = tmp_path / f"copy{len(list(tmp_path.glob('copy*')))}"
    shutil.copytree(store, copy)
    return copy, pub, session_files(copy)


def assert_caught(res: subprocess.CompletedProcess, *needles: str) -> None:
    assert res.returncode == 1, res.stdout + res.stderr
    for n in needles:
        assert n in res.stdout, f"{n!r} not in:\n{res.stdout}"


def test_deleted_session_file(signed_store, tmp_path):
    store, pub, files = tampered(signed_store, tmp_path)
    files[1].unlink()
    assert_caught(verify("--key", pub, store), f"FAILED  {files[1]}: session file deleted or moved")
    assert_caught(verify(store), f"FAILED  {files[1]}: session file deleted or moved")


def test_swapped_session_file(signed_store, tmp_path):
    store, pub, files = tampered(signed_store, tmp_path)
    a, b = files[0].read_bytes(), files[1].read_bytes()
    files[0].write_bytes(b)
    files[1].write_bytes(a)
    res = verify("--key", pub, store)
    assert_caught(res, f"FAILED  {files[0]}", f"{files[0]}: seq 0: ", "swapped")


def test_truncated_sealed_session(signed_store, tmp_path):
    store, pub, files = tampered(signed_store, tmp_path)
    lines = read_lines(files[2])
    rewrite(files[2], lines[:-3])  # cut at a line boundary: the chain alone cannot see it
    res = verify("--key", pub, store)
    assert_caught(res, f"{files[2]}: seq {len(lines) - 3}: truncated sealed session")
    assert_caught(verify(store), "truncated sealed session")


@pytest.mark.parametrize("kind", ["edited", "reordered", "deleted"])
def test_edited_reordered_deleted_record(signed_store, tmp_path, kind):
    store, pub, files = tampered(signed_store, tmp_path)
    lines = read_lines(files[0])
    if kind == "edited":
        lines[2] = lines[2].replace(b'"status":200', b'"status":500')
        assert b'"status":500' in lines[2]
        want = "seq 3: prev does not match the hash of the line before it (seq 2)"
    elif kind == "reordered":
        lines[2], lines[3] = lines[3], lines[2]
        want = "seq 2: expected seq 4, found 2 (out of order or repeated)"
    else:
        del lines[2]
        want = "seq 3: expected seq 2, found 3 (gap: records missing)"
    rewrite(files[0], lines)
    assert_caught(verify("--key", pub, store), f"FAILED  {files[0]}", f"{files[0]}: {want}")


def test_edited_last_record_is_caught_by_the_seal_and_the_ledger(signed_store, tmp_path):
    store, pub, files = tampered(signed_store, tmp_path)
    lines = read_lines(files[0])
    lines[-1] = lines[-1].replace(b'"sig":"', b'"sig":"A')
    rewrite(files[0], lines)
    assert_caught(verify("--key", pub, store), f"seq {len(lines) - 1}: seal signature does not verify")
    assert_caught(verify(store), "differs from the head the ledger recorded")


def test_rechained_forgery(signed_store, tmp_path):
    store, pub, files = tampered(signed_store, tmp_path)
    lines = read_lines(files[1])
    edited = 3
    lines[edited] = lines[edited].replace(b'"status":200', b'"status":403')
    forged = rechain(lines)
    rewrite(files[1], forged)
    # The chain is whole again, but the signatures no longer match it; nor does the ledger.
    res = verify("--key", pub, files[1])
    assert_caught(res, "signature does not verify", "differs from the head the ledger recorded")
    # The forger rewrites the ledger's head for that session too, and re-chains the ledger.
    ledger = store / "ledger.jsonl"
    entries = ledger.read_bytes().split(b"\n")[:-1]
    sid = json.loads(forged[0])["session"]
    new_head = hashlib.sha256(forged[-1]).hexdigest()
    out = []
    for line in entries:
        e = json.loads(line)
        if e["t"] == "session.close" and e["session"] == sid:
            e["head"] = new_head
        out.append(json.dumps(e, separators=(",", ":")).encode())
    ledger.write_bytes(b"".join(x + b"\n" for x in rechain(out)))
    # Without the key only chains are checked: the forgery passes, and verify says what it did not check.
    res = verify(store)
    assert res.returncode == 0 and "only the hash chains were checked" in res.stdout, res.stdout
    res = verify("--key", pub, store)
    assert_caught(res, "ledger signature does not verify", f"{files[1]}: seq", "signature does not verify")


def test_planted_file_and_cut_ledger_against_an_anchor(signed_store, tmp_path):
    store, pub, files = tampered(signed_store, tmp_path)
    ledger = store / "ledger.jsonl"
    lines = ledger.read_bytes().split(b"\n")[:-1]
    anchor = f"{len(lines) - 1}:{hashlib.sha256(lines[-1]).hexdigest()}"
    assert verify("--key", pub, "--anchor", anchor, store).returncode == 0
    # Cut the last ledger entry (the last session's close): with the anchor, it shows.
    ledger.write_bytes(b"".join(x + b"\n" for x in lines[:-1]))
    assert_caught(verify("--key", pub, "--anchor", anchor, store), "no ledger checked has that entry")
    # A file the gateway never wrote: not in the ledger.
    planted = files[0].with_name("01KDVDNA00B8Y9W7VV5N66X2GB.jsonl.zst")
    shutil.copy(files[0], planted)
    assert_caught(verify("--key", pub, store), f"{planted}", "not in the ledger")


# -- the ledger gone, or rolled back ------------------------------------------------------------


def test_ledger_deleted_with_a_session_file(signed_store, tmp_path, start_gateway):
    store, pub, files = tampered(signed_store, tmp_path)
    (store / "ledger.jsonl").unlink()
    files[2].unlink()
    # The files left are signed by the key: their store had a ledger, and it is gone.
    res = verify("--key", pub, store)
    assert_caught(res, f"FAILED  {store}: no ledger (ledger.jsonl) in {store}",
                  "2 session file(s) here are signed by key", "a signed store always has its ledger")
    # Without --key nothing says the files were signed: the chains are checked, and it says what was not.
    res = verify(store)
    assert res.returncode == 0 and "no ledger found" in res.stdout and "only the hash chains" in res.stdout
    # A file copied out of its store on purpose is checked alone only when asked to.
    out = tmp_path / "exported"
    out.mkdir()
    shutil.copy(files[0], out)
    assert_caught(verify("--key", pub, out / files[0].name), "no ledger (ledger.jsonl)")
    res = verify("--key", pub, "--no-ledger", out / files[0].name)
    assert res.returncode == 0 and ": sealed," in res.stdout, res.stdout

    # A gateway started on that store makes a new ledger, and signs in it that the old one was missing.
    gw = start_gateway(config=signed(store, pub.with_name("gateway.key")))
    assert wait_until(lambda: ledger_entries(store))
    assert gw.stop() == 0
    assert "was MISSING (or empty) while the store holds 2 session file(s)" in gw.log_text()
    start = ledger_entries(store)[0]
    assert start["t"] == "gateway.start" and start["ledger_missing"] == {"session_files": 2} and start["sig"]
    res = verify("--key", pub, store)
    assert_caught(res, "the ledger before this one was deleted, moved or emptied",
                  f"FAILED  {files[0]}: 1 problem(s)", "not in the ledger")


def anchor_sinks_config(audit: Path, http: HttpAnchorSink, syslog_socket: Path) -> dict:
    return {"file": audit / "anchors.jsonl", "http": http.url, "syslog": str(syslog_socket), "interval": 0.05}


@pytest.mark.parametrize("writer", ["thread", "process"])
def test_ledger_rollback_with_its_newest_session_is_caught_by_anchors(start_gateway, upstream, tmp_path, writer):
    priv, pub = keygen(tmp_path / "keys")
    store, audit = tmp_path / "store", tmp_path / "audit"
    audit.mkdir()
    sockdir = Path(tempfile.mkdtemp(prefix="wt-"))  # a unix socket path must be short
    http_sink = HttpAnchorSink(audit / "http.jsonl").start()
    syslog_sink = SyslogAnchorSink(sockdir / "log", audit / "syslog.log").start()
    try:
        gw = start_gateway(config={**signed(store, priv, writer=writer), "sessions": {"idle_timeout": 0.4},
                                   "anchors": anchor_sinks_config(audit, http_sink, sockdir / "log")})
        with httpx_client(gw, "reverse") as client:
            for i in range(3):
                assert post(client, new_test_id()).status_code == 200
                assert wait_until(lambda: sum(e["t"] == "session.close" for e in ledger_entries(store)) > i)
        assert gw.stop() == 0
    finally:
        http_sink.stop()
        syslog_sink.stop()
        shutil.rmtree(sockdir, ignore_errors=True)
    assert "anchoring each ledger head to file" in gw.log_text()
    exports = [audit / "anchors.jsonl", audit / "http.jsonl", audit / "syslog.log"]
    lines = (store / "ledger.jsonl").read_bytes().split(b"\n")[:-1]
    for export in exports:
        res = verify("--key", pub, "--anchors", export, store)
        assert res.returncode == 0, res.stdout
        # The newest head reached every sink, the one written at shutdown included.
        assert f"holds seq {len(lines) - 1}; nothing newer" in res.stdout, (export, res.stdout)
    assert "wiretrail[" in (audit / "syslog.log").read_text()

    # The attack: cut the ledger back to before the newest session.open, and delete that session's file.
    entries = ledger_entries(store)
    cut = max(i for i, e in enumerate(entries) if e["t"] == "session.open")
    (store / "ledger.jsonl").write_bytes(b"".join(x + b"\n" for x in lines[:cut]))
    (store / entries[cut]["path"]).unlink()
    res = verify("--key", pub, store)
    assert res.returncode == 0, res.stdout  # nothing left in the store shows it
    for export in exports:
        assert_caught(verify("--key", pub, "--anchors", export, store),
                      "cut back or rewritten after it was anchored", f"it has only {cut} entries")
    # Anchors are signed: one forged into the sink is caught as such, not taken as the truth.
    forged = json.loads((audit / "http.jsonl").read_bytes().split(b"\n")[0])
    forged["seq"], forged["head"] = 1, hashlib.sha256(b"forged").hexdigest()
    (audit / "forged.jsonl").write_text(json.dumps(forged) + "\n")
    assert_caught(verify("--key", pub, "--anchors", audit / "forged.jsonl", store),
                  "signature does not verify: the anchor was forged or altered")
    # A ledger replaced by another one (a fresh store's) matches none of the anchors.
    (store / "ledger.jsonl").unlink()
    shutil.rmtree(store / entries[1]["path"].split("/")[0])
    gw = start_gateway(config=signed(store, priv))
    assert wait_until(lambda: ledger_entries(store))
    assert gw.stop() == 0
    assert_caught(verify("--key", pub, "--anchors", audit / "anchors.jsonl", store), "match no ledger checked")


@pytest.fixture
def down_http_sink(tmp_path):
    """An HTTP anchor sink that answers 503 until the test sets its status to 200."""
    sink = HttpAnchorSink(tmp_path / "http.jsonl").start()
    sink.status = 503
    yield sink
    sink.stop()


def test_a_failing_anchor_sink_is_logged_and_recording_goes_on(start_gateway, upstream, tmp_path, down_http_sink):
    priv, pub = keygen(tmp_path / "keys")
    store, sink = tmp_path / "store", down_http_sink
    gw = start_gateway(config={**signed(store, priv), "sessions": {"idle_timeout": 0.3},
                               "anchors": {"http": sink.url, "interval": 0.05}})
    with httpx_client(gw, "reverse") as client:
        first = new_test_id()
        assert post(client, first).status_code == 200
        assert wait_until(lambda: "ANCHOR FAILED" in gw.log_text())
        log = gw.log_text()
        assert f"{sink.url} answered HTTP 503" in log and "still recording, retrying" in log, log
        assert "not anchored outside the store" in log
        later = new_test_id()
        assert post(client, later).status_code == 200  # recording goes on (not fail_closed)
        assert upstream.received(first) and upstream.received(later)
        sink.status = 200
        assert wait_until(lambda: "works again" in gw.log_text(), 20)
        assert wait_until(lambda: sum(e["t"] == "session.close" for e in ledger_entries(store)) >= 1)
        assert post(client, new_test_id()).status_code == 200
    assert gw.stop() == 0
    assert sink.answered(ok=False) >= 1 and sink.answered(ok=True) >= 1
    # What the sink took after it recovered covers everything before it: the ledger verifies against it.
    res = verify("--key", pub, "--anchors", sink.path, store)
    assert res.returncode == 0, res.stdout
    assert "; nothing newer" in res.stdout, res.stdout


def test_anchors_fail_closed_refuses_traffic_while_a_sink_fails(start_gateway, upstream, tmp_path, down_http_sink):
    priv, pub = keygen(tmp_path / "keys")
    store, sink = tmp_path / "store", down_http_sink
    gw = start_gateway(config={**signed(store, priv),
                               "anchors": {"http": sink.url, "interval": 0.05, "fail_closed": True, "max_lag": 1}})
    with httpx_client(gw, "reverse") as client:
        assert wait_until(lambda: "ANCHOR FAILED" in gw.log_text())
        assert "traffic is refused if it lasts 1 s" in gw.log_text()
        assert wait_until(lambda: post(client, new_test_id()).status_code == 503, 10)
        refused = new_test_id()
        r = post(client, refused)
        assert r.status_code == 503 and r.json()["error"]["code"] == "not_recorded", r.text
        assert upstream.received(refused) == []
        assert "cannot record (anchors failing)" in gw.log_text()
        sink.status = 200
        assert wait_until(lambda: post(client, new_test_id()).status_code == 200, 40)
    assert gw.stop() == 0
    res = verify("--key", pub, "--anchors", sink.path, store)
    assert res.returncode == 0, res.stdout


# -- kill -9 and recovery ----------------------------------------------------------------------


def test_kill_9_during_streams_then_recovery_on_restart(start_gateway, upstream, tmp_path):
    priv, pub = keygen(tmp_path / "keys")
    store = tmp_path / "store"
    gw = start_gateway(config=signed(store, priv))
    tids = [new_test_id() for _ in range(3)]
    stop = threading.Event()

    def stream(tid, mode):
        try:
            with httpx_client(gw, mode, upstream) as client:
                with client.stream("GET", "/slow-sse?n=200&delay=0.05", headers={"x-test-id": tid}) as r:
                    for _ in r.iter_bytes():
                        if stop.is_set():
                            return
        except httpx.HTTPError:
            pass  # the gateway died under it

    threads = [threading.Thread(target=stream, args=(t, m), daemon=True)
               for t, m in zip(tids, ["proxy", "reverse", "proxy"])]
    for t in threads:
        t.start()
    # Streams under way, and the writer has signed at least one checkpoint of them.
    assert wait_until(lambda: len([r for r in Artifacts(store).records if r["t"] == "http.chunk"]) >= 6
                      and any(r["t"] == "checkpoint" for r in Artifacts(store).records))
    time.sleep(0.3)
    assert gw.stop(signal.SIGKILL) == -signal.SIGKILL
    stop.set()
    files = session_files(store)
    assert files
    before = {f: f.read_bytes() for f in files}

    res = verify("--key", pub, store)
    assert res.returncode == 0, res.stdout
    assert "unsealed (gateway stopped)" in res.stdout and "last signed checkpoint seq" in res.stdout
    assert "open in the ledger" in res.stdout

    gw2 = start_gateway(config=signed(store, priv))
    assert wait_until(lambda: any(e["t"] == "session.recovered" for e in ledger_entries(store)))
    recovered = [e for e in ledger_entries(store) if e["t"] == "session.recovered"]
    assert {e["session"] for e in recovered} == {json.loads(read_lines(f)[0])["session"] for f in files}
    for e in recovered:
        path = store / e["path"]
        lines = read_lines(path)
        assert e["records"] == len(lines) and e["head"] == hashlib.sha256(lines[-1]).hexdigest()
        assert e["checkpoint"] is not None and e["key"] is not None and e["sig"]
    # Nothing was appended to the crashed files, and traffic works on new sessions.
    with httpx_client(gw2, "reverse") as client:
        assert post(client, new_test_id()).status_code == 200
    assert gw2.stop() == 0
    for f, data in before.items():
        assert f.read_bytes() == data, f"{f} changed after the crash"
    assert "recovered session" in gw2.log_text()

    res = verify("--key", pub, store)
    assert res.returncode == 0, res.stdout
    assert res.stdout.count("unsealed (crash): ") == len(files), res.stdout
    assert "recovered at the next start" in res.stdout and ": sealed," in res.stdout
    # Cutting a recovered file now shows: the ledger holds its head.
    lines = read_lines(files[0])
    rewrite(files[0], lines[:-1])
    assert_caught(verify("--key", pub, store), f"{files[0]}: seq {len(lines) - 1}: truncated")


# -- disk full ----------------------------------------------------------------------------------


@pytest.fixture
def small_tmpfs(tmp_path):
    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path) -> Path:
    """Fill the tmpfs to the last block; returns the filler file (delete it to free space)."""
    filler = mnt / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 4096, 512):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


@pytest.mark.parametrize("fail_closed", [True, False], ids=["fail_closed", "fail_open"])
def test_disk_full(small_tmpfs, start_gateway, upstream, tmp_path, fail_closed):
    priv, pub = keygen(tmp_path / "keys")
    store = small_tmpfs / "store"
    gw = start_gateway(config=signed(store, priv, fail_closed=fail_closed))

    def body() -> bytes:  # 96 KiB of text that compresses only 2:1, new each time (zstd would dedupe it)
        return os.urandom(48 * 1024).hex().encode()

    with httpx_client(gw, "reverse") as client:
        assert post(client, new_test_id(), body()).status_code == 200  # the session and ledger exist
        filler = fill(small_tmpfs)
        statuses = []
        for _ in range(8):
            r = post(client, new_test_id(), body())
            statuses.append(r.status_code)
        if fail_closed:
            assert 503 in statuses, statuses
            refused = [s for s in statuses if s == 503]
            assert r.status_code == 503 and "could not record" in r.json()["error"]["message"]
        else:
            assert statuses == [200] * 8, statuses
        log = gw.log_text()
        assert log.count("cannot record (disk full)") == 1, log
        if not fail_closed:
            assert log.count("UNRECORDED flow POST") >= 7, log
        # Storage recovers: traffic resumes.
        filler.unlink()
        assert wait_until(lambda: post(client, new_test_id()).status_code == 200, 5)
    assert gw.stop() == 0
    if fail_closed:
        # Nothing reached the upstream that is not in an artifact.
        assert_every_upstream_request_recorded(upstream, Artifacts(store))
        assert len(refused) >= 1
    res = verify("--key", pub, store)
    assert res.returncode == 3, res.stdout  # damage the gateway recorded, not tampering
    failed = [e for e in ledger_entries(store) if e["t"] == "session.failed"]
    assert failed and all(e["cause"] == "disk full" for e in failed), ledger_entries(store)
    assert res.stdout.count("DAMAGED ") == len(failed), res.stdout
    assert "FAILED" not in res.stdout, res.stdout


@pytest.mark.parametrize("writer, stop", [("thread", signal.SIGTERM), ("process", signal.SIGKILL)],
                         ids=["thread-sigterm", "process-sigkill"])
def test_a_disk_full_run_is_damage_not_tampering(small_tmpfs, start_gateway, upstream, tmp_path, writer, stop):
    """The gateway stops (or is killed) while the disk is still full: every session it opened has
    its signed ending in the ledger, and verify says damage (exit 3), never "deleted"."""
    priv, pub = keygen(tmp_path / "keys")
    store = small_tmpfs / "store"
    gw = start_gateway(config=signed(store, priv, writer=writer))
    with httpx_client(gw, "reverse") as client:
        assert post(client, new_test_id(), os.urandom(48 * 1024).hex().encode()).status_code == 200
        filler = fill(small_tmpfs)
        # Each refused request ends its session (storage failed) and the next opens a new one.
        statuses = [post(client, new_test_id(), os.urandom(48 * 1024).hex().encode()).status_code
                    for _ in range(12)]
        assert statuses == [503] * 12
    assert wait_until(lambda: sum(e["t"] == "session.failed" for e in ledger_entries(store)) == 12)
    gw.stop(stop)
    entries = ledger_entries(store)
    opened = [e["session"] for e in entries if e["t"] == "session.open"]
    failed = [e for e in entries if e["t"] == "session.failed"]
    assert len(opened) == 12 and {e["session"] for e in failed} == set(opened), entries
    assert all(e["cause"] == "disk full" and "No space left on device" in e["error"] and e["sig"] for e in failed)
    assert [e["file"] for e in failed].count("kept") == 1  # the first session had a record on disk
    assert len(session_files(store)) == 1  # the others' files were removed, once the ledger said so
    res = verify("--key", pub, store)
    assert res.returncode == 3, res.stdout
    assert res.stdout.count("DAMAGED ") == 12 and res.stdout.count("storage failed (disk full)") == 12, res.stdout
    assert "FAILED" not in res.stdout and "deleted or moved" not in res.stdout, res.stdout
    res = verify(store)
    assert res.returncode == 3 and "without --key nothing proves the gateway wrote it" in res.stdout
    # A file deleted by hand afterwards is tampering, whatever else happened.
    filler.unlink()
    session_files(store)[0].unlink()
    assert_caught(verify("--key", pub, store), "session file deleted or moved")


# -- hung storage -------------------------------------------------------------------------------


@pytest.fixture
def freezable_fs(tmp_path):
    """An ext4 loop mount that `fsfreeze` can stop: every write to it blocks in the kernel until
    thawed, as on a hung disk or NFS mount. Yields (mountpoint, freeze, thaw)."""
    img, mnt = tmp_path / "fs.img", tmp_path / "ext4"
    mnt.mkdir()
    with open(img, "wb") as fh:
        fh.truncate(32 << 20)
    for cmd in (["mkfs.ext4", "-q", "-F", str(img)], ["mount", "-o", "loop", str(img), str(mnt)]):
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
        except FileNotFoundError as e:
            pytest.skip(f"cannot make a freezable file system here: {e}")
        if proc.returncode != 0:
            pytest.skip(f"cannot make a freezable file system here ({cmd[0]}): {proc.stderr.strip()}")

    def freeze():
        subprocess.run(["fsfreeze", "-f", str(mnt)], check=True, timeout=30)

    def thaw():
        subprocess.run(["fsfreeze", "-u", str(mnt)], capture_output=True, timeout=30)

    try:
        yield mnt, freeze, thaw
    finally:
        thaw()  # a frozen mount would hang the gateway's stop and the umount
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


def test_hung_storage_refuses_with_503_after_write_timeout_and_recovers(freezable_fs, start_gateway, upstream,
                                                                        tmp_path):
    mnt, freeze, thaw = freezable_fs
    priv, pub = keygen(tmp_path / "keys")
    store = mnt / "store"
    timeout = 3.0
    gw = start_gateway(config=signed(store, priv, write_timeout=timeout))
    with httpx_client(gw, "reverse") as client:
        assert post(client, new_test_id()).status_code == 200  # the session and ledger exist
        freeze()
        try:
            first, later = new_test_id(), new_test_id()
            t0 = time.monotonic()
            r = post(client, first)
            waited = time.monotonic() - t0
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_recorded", r.text
            assert waited >= timeout * 0.9, waited  # it waited for the write, then gave up
            t0 = time.monotonic()
            r = post(client, later)
            assert r.status_code == 503, r.text
            assert time.monotonic() - t0 < timeout * 0.8  # refused at once: storage is known stuck
            streamed = new_test_id()  # a body of unknown length: its record is made in requestheaders
            r = client.post("/echo", content=iter([b"x" * 1000, b"y" * 1000]), headers={"x-test-id": streamed})
            assert r.status_code == 503, r.text
            assert upstream.received(first) == [] and upstream.received(later) == []
            assert upstream.received(streamed) == []
            log = gw.log_text()
            assert log.count("cannot record (storage not responding)") == 1, log
            assert "write_timeout" in log and str(mnt) in log, log
        finally:
            thaw()
        # The stuck writes complete; traffic resumes.
        assert wait_until(lambda: post(client, new_test_id()).status_code == 200, 10)
        assert "storage recovered; recording again" in gw.log_text()
    assert gw.stop() == 0
    assert_every_upstream_request_recorded(upstream, Artifacts(store))
    arts = Artifacts(store)
    for tid in (first, later, streamed):  # late, not lost: what was asked, and the 503 that was answered
        flow = arts.flow(tid)
        assert flow.request is not None and flow.response is not None and flow.response["status"] == 503, flow.describe()
        assert len(flow.of("http.request")) == 1, flow.describe()
    res = verify("--key", pub, store)
    assert res.returncode == 0, res.stdout


# -- retention -----------------------------------------------------------------------------------

TIME_SHIFT = """\
import os, time
_shift = float(os.environ.get("WIRETRAIL_TEST_TIME_SHIFT", "0"))
if _shift:
    _real = time.time
    time.time = lambda: _real() + _shift
"""


def test_retention_deletes_old_sessions_and_the_ledger_still_verifies(start_gateway, upstream, tmp_path, monkeypatch):
    priv, pub = keygen(tmp_path / "keys")
    store = tmp_path / "store"
    gw = start_gateway(config={**signed(store, priv), "sessions": {"idle_timeout": 0.3}})
    with httpx_client(gw, "reverse") as client:
        assert post(client, new_test_id()).status_code == 200
        assert wait_until(lambda: any(e["t"] == "session.close" for e in ledger_entries(store)))
        assert post(client, new_test_id()).status_code == 200
    assert gw.stop() == 0
    old = session_files(store)
    assert len(old) == 2

    # The next gateway runs two days later (its clock shifted), keeping sessions one day.
    shim = tmp_path / "timeshift"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(TIME_SHIFT)
    monkeypatch.setenv("PYTHONPATH", str(shim))
    monkeypatch.setenv("WIRETRAIL_TEST_TIME_SHIFT", str(2 * 86400))
    gw2 = start_gateway(config=signed(store, priv, retention_days=1))
    monkeypatch.delenv("PYTHONPATH")
    monkeypatch.delenv("WIRETRAIL_TEST_TIME_SHIFT")
    # The tombstone is written before the file goes: wait for both.
    assert wait_until(lambda: sum(e["t"] == "session.deleted" for e in ledger_entries(store)) == 2
                      and not any(f.exists() for f in old))
    with httpx_client(gw2, "reverse") as client:
        assert post(client, new_test_id()).status_code == 200
    assert gw2.stop() == 0
    assert len(session_files(store)) == 1  # the new session stays
    assert "retention: deleted 2 session(s)" in gw2.log_text()

    res = verify("--key", pub, store)
    assert res.returncode == 0, res.stdout
    assert "2 session(s) deleted by retention" in res.stdout
    # A tombstone cannot cover a deletion it did not make: remove the new file, and it shows.
    session_files(store)[0].unlink()
    assert_caught(verify("--key", pub, store), "session file deleted or moved")


def test_an_unusable_signing_key_stops_the_gateway(start_gateway, tmp_path):
    from tests.support.gateway import GatewayStartError

    (tmp_path / "pub").mkdir()
    _, pub = keygen(tmp_path / "pub")
    try:
        gw = start_gateway(config=signed(tmp_path / "store", pub))  # the public key, not the private one
        gw.proc.wait(20)
        log, code = gw.log_text(), gw.proc.returncode
    except GatewayStartError as e:
        log, code = str(e), 1
    assert code != 0
    assert "storage.signing_key" in log and "a public key, not the private key" in log
    assert not list((tmp_path / "store").rglob("*.jsonl.zst"))
