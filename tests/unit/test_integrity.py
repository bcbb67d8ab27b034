"""Signing, keygen, the ledger, checkpoints and seals, recovery, retention and verify,
on real files written by the real writer thread."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from recorder import cli
from recorder.forensics import verify
from recorder.store import anchors, format_v1, ledger, signing
from recorder.store.sessions import SessionRegistry
from recorder.store.writer import Alarm, RecordWriter
from tests.support.checks import wait_until

IDENTITY = {"sub": "alice", "email": None, "groups": [], "iss": None, "method": "none", "authenticated": False}


def read_lines(path: Path) -> list[bytes]:
    return zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes()).split(b"\n")[:-1]


@pytest.fixture
def keys(tmp_path):
    priv, pub, kid = signing.generate(tmp_path / "keys")
    return priv, pub, kid


def writer(store: Path, signer=None, **kw) -> RecordWriter:
    w = RecordWriter(fsync="never", storage_dir=store, signer=signer, **kw)
    w.start()
    return w


def one_session(w: RecordWriter, store: Path, kid, n: int = 3, close: bool = True, pause: float = 0.0,
                clock=time.time):
    reg = SessionRegistry(w, store, idle_timeout=60, max_duration=600, signing_key_id=kid, clock=clock)
    s = reg.begin_flow("alice", IDENTITY, ("10.0.0.1", 4000))
    for i in range(n):
        s.record("http.error", {"flow": f"f{i}", "phase": "connect", "message": f"refused {i}"})
        if pause:
            time.sleep(pause)
    reg.end_flow(s)
    if close:
        reg.close_all()
    return s


# -- keys -------------------------------------------------------------------------------------


def test_keygen_writes_a_0600_pkcs8_pair_and_refuses_to_overwrite(tmp_path, capsys):
    d = tmp_path / "k"
    assert cli.main(["keygen", str(d)]) == 0
    priv, pub = d / "gateway.key", d / "gateway.pub"
    assert stat.S_IMODE(priv.stat().st_mode) == 0o600
    assert priv.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS8
    key = serialization.load_pem_private_key(priv.read_bytes(), None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    kid = hashlib.sha256(raw).hexdigest()[:16]
    assert f"key id:      {kid}" in capsys.readouterr().out
    assert signing.load_verifier(pub).key_id == kid
    before = priv.read_bytes()
    assert cli.main(["keygen", str(d)]) == 1
    assert "not overwriting" in capsys.readouterr().err and priv.read_bytes() == before
    assert cli.main(["keygen", "--force", str(d)]) == 0
    assert priv.read_bytes() != before


def test_sign_verify_and_bad_key_files(tmp_path, keys):
    priv, pub, kid = keys
    s, v = signing.load_signer(priv), signing.load_verifier(pub)
    sig = s.sign(b"data")
    assert v.verify(b"data", sig) and not v.verify(b"datA", sig) and not v.verify(b"data", "not base64!")
    with pytest.raises(signing.SigningKeyError, match="no such file; make a key pair with `wiretrail keygen DIR`"):
        signing.load_signer(tmp_path / "nope.key")
    with pytest.raises(signing.SigningKeyError, match="a public key, not the private key"):
        signing.load_signer(pub)
    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=1024).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (tmp_path / "rsa.key").write_bytes(rsa_pem)
    with pytest.raises(signing.SigningKeyError, match="not an Ed25519 key"):
        signing.load_signer(tmp_path / "rsa.key")


def test_ensure_dev_signing_key_makes_it_once(tmp_path):
    path = tmp_path / "keys" / "gateway.key"
    assert signing.ensure_dev_signing_key(path) == path
    first = path.read_bytes()
    assert (tmp_path / "keys" / "gateway.pub").exists()
    signing.ensure_dev_signing_key(path)
    assert path.read_bytes() == first
    other = tmp_path / "k2" / "demo.key"
    other.parent.mkdir()
    signing.ensure_dev_signing_key(other)
    assert signing.load_signer(other).key_id == signing.load_verifier(other.with_suffix(".pub")).key_id


# -- checkpoints and seals ----------------------------------------------------------------------


def test_checkpoints_while_records_arrive_and_a_seal_at_close(tmp_path, keys):
    priv, pub, kid = keys
    signer = signing.load_signer(priv)
    store = tmp_path / "store"
    w = writer(store, signer, checkpoint_interval=0.1)
    s = one_session(w, store, kid, n=6, pause=0.06)
    assert w.stop()
    [path] = store.rglob("*.jsonl.zst")
    lines = read_lines(path)
    recs = [json.loads(x) for x in lines]
    assert recs[0]["key"] == kid
    cps = [r for r in recs if r["t"] == "checkpoint"]
    assert len(cps) >= 2, [r["t"] for r in recs]
    assert recs[-1]["t"] == "seal" and recs[-2]["t"] == "session.close"
    assert recs[-2]["counts"]["records"] == len(recs) - 1  # checkpoints counted, the seal not
    v = signer.verifier
    for r in cps + [recs[-1]]:
        assert r["key"] == kid
        assert v.verify(format_v1.signed_bytes(s.id, r["seq"], r["prev"]), r["sig"])
        # The signed prev is the hash of the line before: the signature covers everything up to it.
        assert r["prev"] == format_v1.line_hash(lines[r["seq"] - 1])
    # Checkpoints come no closer than the interval (each covers at least one new record).
    seqs = [r["seq"] for r in cps]
    assert all(b - a > 1 for a, b in zip(seqs, seqs[1:]))


def test_quiet_session_gets_its_tail_signed_by_the_timer(tmp_path, keys, monkeypatch):
    priv, _, kid = keys
    store = tmp_path / "store"
    w = writer(store, signing.load_signer(priv), checkpoint_interval=0.1)
    scans = []  # when the writer's timer looked at the sessions
    real_tick = w._tick

    def tick():
        before = w._next_scan
        real_tick()
        if w._next_scan != before:
            scans.append(time.monotonic())

    monkeypatch.setattr(w, "_tick", tick)
    one_session(w, store, kid, n=2, close=False)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        paths = list(store.rglob("*.jsonl.zst"))
        recs = ([json.loads(x) for x in read_lines(paths[0])] if paths else []) or [{"t": None}]
        if recs[-1]["t"] == "checkpoint":
            break
        time.sleep(0.02)
    assert recs[-1]["t"] == "checkpoint" and recs[-1]["seq"] == 3, recs
    path = paths[0]
    seen = time.monotonic()
    # The timer looked again well after an interval had passed, and signed nothing new: no new records.
    assert wait_until(lambda: any(t > seen + 0.25 for t in scans), 5), "the writer's timer stopped"
    assert len(read_lines(path)) == 4
    w.stop()


def test_without_a_key_no_signatures_and_an_unsigned_ledger(tmp_path):
    store = tmp_path / "store"
    w = writer(store)
    one_session(w, store, None)
    assert w.stop()
    [path] = store.rglob("*.jsonl.zst")
    recs = [json.loads(x) for x in read_lines(path)]
    assert recs[0]["key"] is None and recs[-1]["t"] == "session.close"
    assert not [r for r in recs if r["t"] in ("checkpoint", "seal")]
    lr = ledger.read_ledger(store / ledger.LEDGER_NAME)
    assert not lr.problems and lr.unsigned == len(lr.lines) == 3
    assert [e["t"] for e in lr.entries] == ["gateway.start", "session.open", "session.close"]
    assert lr.entries[2]["sealed"] is False and lr.entries[2]["head"] == format_v1.line_hash(read_lines(path)[-1])


# -- the ledger -----------------------------------------------------------------------------------


def test_ledger_entry_signature_covers_its_own_bytes(keys):
    signer = signing.load_signer(keys[0])
    line = ledger.encode_entry(0, format_v1.ZERO_HASH, "session.open", 1.5, {"session": "S", "path": "p"}, signer)
    assert line.endswith(b'"}') and b',"key":"' + signer.key_id.encode() + b'","sig":"' in line
    unsigned, sig = ledger.split_signature(line)
    assert unsigned == line[: line.index(b',"sig":')] + b"}"
    assert signer.verifier.verify(ledger.LEDGER_CONTEXT + unsigned, sig)
    assert json.loads(unsigned)["key"] == signer.key_id and "sig" not in json.loads(unsigned)


def test_read_ledger_finds_edits_cuts_and_forged_signatures(tmp_path, keys):
    signer = signing.load_signer(keys[0])
    store = tmp_path / "store"
    w = writer(store, signer)
    one_session(w, store, signer.key_id)
    one_session(w, store, signer.key_id)
    assert w.stop()
    path = store / ledger.LEDGER_NAME
    good = path.read_bytes()
    assert not ledger.read_ledger(path, [signer.verifier]).problems
    lines = good.split(b"\n")[:-1]

    path.write_bytes(good.replace(b'"records":', b'"records":1', 1))
    assert any("prev does not match" in m for _, m in ledger.read_ledger(path).problems)

    path.write_bytes(b"".join(x + b"\n" for x in lines[:2] + lines[3:]))
    assert any("seq 3 where 2 was expected" in m for _, m in ledger.read_ledger(path).problems)

    # The last entry edited (no later entry's prev covers it): only its signature tells.
    last = lines[-1].replace(b'"sealed":true', b'"sealed":false')
    path.write_bytes(b"".join(x + b"\n" for x in lines[:-1] + [last]))
    assert not ledger.read_ledger(path).problems
    assert [(s, m) for s, m in ledger.read_ledger(path, [signer.verifier]).problems] == [
        (len(lines) - 1, "ledger signature does not verify: the entry was altered or forged")]

    # A half-written last line is a crash, not damage; the next start drops it and says so.
    path.write_bytes(good + b'{"v":1,"seq":')
    r = ledger.read_ledger(path, [signer.verifier])
    assert not r.problems and r.partial_tail == len(b'{"v":1,"seq":')
    w = writer(store, signer)
    assert w.stop()
    r = ledger.read_ledger(path, [signer.verifier])
    assert not r.problems and r.entries[-1]["t"] == "gateway.start"
    assert r.entries[-1]["dropped_partial_bytes"] == len(b'{"v":1,"seq":')


def test_a_second_writer_on_the_same_store_is_refused(tmp_path):
    store = tmp_path / "store"
    w1 = writer(store)
    deadline = time.monotonic() + 5
    while not ledger.read_ledger(store / ledger.LEDGER_NAME).entries and time.monotonic() < deadline:
        time.sleep(0.01)  # w1's thread holds the ledger once it wrote its start entry
    errors = []
    w2 = RecordWriter(fsync="never", storage_dir=store, on_error=errors.append)
    w2.start()
    acks = []
    reg = SessionRegistry(w2, store, idle_timeout=60, max_duration=600)
    s = reg.begin_flow("a", IDENTITY, ("1.1.1.1", 1))
    s.record("http.error", {"flow": "f", "phase": "x", "message": "m"}, ack=acks.append)
    deadline = time.monotonic() + 5
    while not acks and time.monotonic() < deadline:
        time.sleep(0.01)
    assert acks and acks[0] is not None and "another gateway holds the ledger" in str(acks[0])
    assert errors and errors[0].cause == "ledger locked"
    w2.stop()
    w1.stop()


# -- recovery and retention ---------------------------------------------------------------------------


def test_recovery_covers_the_head_and_appends_nothing(tmp_path, keys):
    signer = signing.load_signer(keys[0])
    store = tmp_path / "store"
    w = writer(store, signer, checkpoint_interval=0.05)
    s = one_session(w, store, signer.key_id, n=4, close=False, pause=0.03)
    assert w.stop()  # stopped without closing the session: what a crash leaves
    [path] = store.rglob("*.jsonl.zst")
    before = path.read_bytes()
    events = []
    w = writer(store, signer, on_event=events.append)
    assert w.stop()
    assert path.read_bytes() == before
    lr = ledger.read_ledger(store / ledger.LEDGER_NAME, [signer.verifier])
    assert not lr.problems
    [rec] = [e for e in lr.entries if e["t"] == "session.recovered"]
    lines = read_lines(path)
    assert rec["session"] == s.id and rec["records"] == len(lines) and rec["last_seq"] == len(lines) - 1
    assert rec["head"] == format_v1.line_hash(lines[-1]) and rec["file"] == "unsealed"
    cps = [json.loads(x)["seq"] for x in lines if json.loads(x)["t"] == "checkpoint"]
    assert cps and rec["checkpoint"] == cps[-1]
    assert any(f"recovered session {s.id}" in e for e in events)
    # A third start finds nothing more to recover.
    w = writer(store, signer)
    assert w.stop()
    lr = ledger.read_ledger(store / ledger.LEDGER_NAME)
    assert sum(e["t"] == "session.recovered" for e in lr.entries) == 1

    report = verify.verify_paths([store], [signer.verifier])
    assert report.ok
    [fv] = report.files
    assert fv.describe()[0].startswith(f"OK      {path}: unsealed (crash): {len(lines)} records readable")
    assert f"last signed checkpoint seq {cps[-1]}" in fv.describe()[0]


def test_retention_deletes_expired_sessions_with_tombstones(tmp_path):
    store = tmp_path / "store"
    now = [1_800_000_000.0]
    w = writer(store, clock=lambda: now[0])
    one_session(w, store, None, clock=lambda: now[0])
    assert w.stop()
    [old] = store.rglob("*.jsonl.zst")
    now[0] += 3 * 86400
    w = writer(store, clock=lambda: now[0], retention_days=2)
    one_session(w, store, None, clock=lambda: now[0])  # a new session, not expired
    deadline = time.monotonic() + 5
    while old.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert w.stop()
    assert not old.exists() and not old.parent.exists()  # the empty day directory went too
    assert len(list(store.rglob("*.jsonl.zst"))) == 1
    lr = ledger.read_ledger(store / ledger.LEDGER_NAME)
    [tomb] = [e for e in lr.entries if e["t"] == "session.deleted"]
    assert tomb["reason"] == "retention" and tomb["file"] == "deleted"
    report = verify.verify_paths([store])
    assert report.ok and report.ledgers[0].deleted == 1


# -- verify ---------------------------------------------------------------------------------------------


def test_verify_with_the_wrong_key_fails_naming_the_key(tmp_path, keys, capsys):
    signer = signing.load_signer(keys[0])
    store = tmp_path / "store"
    w = writer(store, signer)
    one_session(w, store, signer.key_id)
    assert w.stop()
    _, other_pub, other_kid = signing.generate(tmp_path / "other")
    assert cli.main(["verify", "--key", str(other_pub), str(store)]) == 1
    out = capsys.readouterr().out
    assert f"the file says it was signed with key {signer.key_id}, not the --key given" in out
    assert f"ledger entry signed by key {signer.key_id}, not by the --key given" in out
    # Both keys (a rotation): fine.
    assert cli.main(["verify", "--key", str(other_pub), "--key", str(keys[1]), str(store)]) == 0
    assert cli.main(["verify", "--anchor", "nonsense", str(store)]) == 2


def test_signed_bytes_test_vector():
    """docs/format.md §9: the RFC 8032 test key 1 signing a checkpoint (Ed25519 is deterministic)."""
    secret = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    signer = signing.Signer.from_private(ed25519.Ed25519PrivateKey.from_private_bytes(secret))
    assert signer.key_id == "21fe31dfa154a261"
    data = format_v1.signed_bytes("01KDVDNA00B8Y9W7VV5N66X2GB", 3,
                                  "cf22662371b3f5d9f2754bb748abebef19c418f0414d437f256b296330e819ef")
    assert data == (b"wiretrail-seal-v1\n01KDVDNA00B8Y9W7VV5N66X2GB\n3\n"
                    b"cf22662371b3f5d9f2754bb748abebef19c418f0414d437f256b296330e819ef")
    sig = signer.sign(data)
    assert sig == VECTOR_SIG
    assert len(base64.b64decode(sig)) == 64


VECTOR_SIG = "XC56iZ+9RkGOvBx63cGcmTrTjsZFCGJ0M/AoZXzicK/UQ1CwUn4Y3KpsP0hnOV/2h2auj1B4cDGoGkmCsbdsAg=="

LEDGER_VECTOR = (
    b'{"v":1,"seq":0,"t":"gateway.start","ts":1767225600.0,"prev":"' + b"0" * 64 + b'","host":"gw1","pid":4242,'
    b'"key":"21fe31dfa154a261","sig":"3jeJZywmmZd8eQseqNlbzferypVyesi/jzRRgLv56S9/sg0F/FaZ7s6V+ttJyP27uvzYffexeyHB+qUBCTH6DA=="}'
)


def test_ledger_line_test_vector():
    """docs/format.md §10: a signed ledger line, checked byte for byte, by the key alone and by the reader."""
    secret = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
    private = ed25519.Ed25519PrivateKey.from_private_bytes(secret)
    signer = signing.Signer.from_private(private)
    line = ledger.encode_entry(0, format_v1.ZERO_HASH, "gateway.start", 1767225600.0, {"host": "gw1", "pid": 4242},
                               signer)
    assert line == LEDGER_VECTOR
    assert format_v1.line_hash(line) == "6d3c4a1ed862d63cbe9a22cf499f4aed72002c6bea4235b2c1e4c528b891390e"
    # What is signed, derived here from the spec's words rather than from ledger.split_signature.
    cut = line.index(b',"sig":"')
    signed = b"wiretrail-ledger-v1\n" + line[:cut] + b"}"
    sig = base64.b64decode(line[cut + len(b',"sig":"'):-2])
    private.public_key().verify(sig, signed)  # raises if the vector's signature is not over those bytes
    assert ledger.split_signature(line) == (line[:cut] + b"}", base64.b64encode(sig).decode())


# -- damage the gateway suffered, and tampering passed off as damage ----------------------------------

OPEN_FIELDS = {"identity": IDENTITY, "client": {"ip": "10.0.0.1", "port": 4000}, "gateway": {"host": "gw", "version": "0"}}


def make_file(store: Path, sid: str, n: int, signer, sealed: bool) -> tuple[str, int, str]:
    """A session file as the writer leaves it: sealed, or cut off by a storage failure after a
    signed checkpoint. Returns (its path relative to the store, records, head)."""
    chain, lines = format_v1.Chain(), []
    lines.append(chain.next_line("session.open", 1.0, {"session": sid, **OPEN_FIELDS, "key": signer and signer.key_id}))
    for i in range(n):
        lines.append(chain.next_line("http.error", 2.0, {"flow": f"f{i}", "phase": "connect", "message": "m"}))
    if sealed:
        lines.append(chain.next_line("session.close", 3.0, {"reason": "idle", "counts": {}}))
    if signer is not None:
        sig = signer.sign(format_v1.signed_bytes(sid, chain.seq, chain.prev))
        lines.append(chain.next_line("seal" if sealed else "checkpoint", 3.0, {"key": signer.key_id, "sig": sig}))
    rel = f"2026/01/01/{sid}.jsonl.zst"
    (store / rel).parent.mkdir(parents=True, exist_ok=True)
    cobj = zstandard.ZstdCompressor().compressobj()
    data = cobj.compress(b"".join(x + b"\n" for x in lines)) + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    (store / rel).write_bytes(data + (cobj.flush() if sealed else b""))
    return rel, chain.seq, chain.prev


def write_ledger(store: Path, entries: list[tuple[str, dict]], signer) -> list[bytes]:
    seq, prev, lines = 0, format_v1.ZERO_HASH, []
    for t, fields in entries:
        line = ledger.encode_entry(seq, prev, t, 10.0 + seq, fields, signer)
        lines.append(line)
        seq, prev = seq + 1, format_v1.line_hash(line)
    (store / ledger.LEDGER_NAME).write_bytes(b"".join(x + b"\n" for x in lines))
    return lines


A, B, C = "01KDVDNA00AAAAAAAAAAAAAAAA", "01KDVDNA00BBBBBBBBBBBBBBBB", "01KDVDNA00CCCCCCCCCCCCCCCC"


def damaged_store(store: Path, signer) -> dict:
    """A sealed session A; B, whose storage failed after 3 records (file kept); C, whose storage
    failed before any record reached the disk (file removed). The ledger as the writer keeps it."""
    store.mkdir(parents=True, exist_ok=True)
    a, a_n, a_head = make_file(store, A, 2, signer, sealed=True)
    b, b_n, b_head = make_file(store, B, 2, signer, sealed=False)
    c = f"2026/01/01/{C}.jsonl.zst"
    first = {}
    for sid, rel in ((A, a), (B, b)):
        first[sid] = format_v1.line_hash(zstandard.ZstdDecompressor().decompressobj()
                                         .decompress((store / rel).read_bytes()).split(b"\n")[0])
    failure = {"cause": "disk full", "error": "cannot write x: No space left on device", "failed_at": 12.5}
    entries = [
        ("gateway.start", {"host": "gw", "pid": 1}),
        ("session.open", {"session": A, "path": a, "first": first[A]}),
        ("session.open", {"session": B, "path": b, "first": first[B]}),
        ("session.close", {"session": A, "path": a, "records": a_n, "head": a_head, "sealed": True}),
        ("session.open", {"session": C, "path": c, "first": "0" * 64}),
        ("session.failed", {"session": B, "path": b, "records": b_n, "head": b_head, **failure, "file": "kept"}),
        ("session.failed", {"session": C, "path": c, "records": 0, "head": None, **failure, "file": "removed"}),
    ]
    write_ledger(store, entries, signer)
    return {"a": store / a, "b": store / b, "c": store / c, "entries": entries}


def test_storage_failures_in_the_ledger_are_damage_not_tampering(tmp_path, keys, capsys):
    signer = signing.load_signer(keys[0])
    store = tmp_path / "store"
    paths = damaged_store(store, signer)
    report = verify.verify_paths([store], [signer.verifier])
    assert report.ok and report.code == verify.DAMAGED
    by_path = {f.path: f for f in report.files}
    assert by_path[paths["a"]].state == "sealed" and not by_path[paths["a"]].damage
    [b_damage] = by_path[paths["b"]].damage
    assert b_damage.startswith("storage failed (disk full) at 1970-01-01T00:00:12Z: cannot write x: No space left")
    assert "the gateway wrote 4 record(s) of this session and could write no more (ledger seq 5)" in b_damage
    [(entry, c_damage)] = report.ledgers[0].damage
    assert entry.session == C and "no record of it reached the disk, and the gateway removed its empty file" in c_damage
    assert cli.main(["verify", "--key", str(keys[1]), str(store)]) == 3
    out = capsys.readouterr().out
    assert f"DAMAGED {paths['b']}: storage failed (disk full)" in out
    assert f"DAMAGED {paths['c']}: session {C}: storage failed (disk full)" in out
    assert "FAILED" not in out and "1 sealed, 1 damaged" in out

    # The gateway stopped before it removed C's empty file: still damage, not a broken file.
    paths["c"].write_bytes(b"")
    report = verify.verify_paths([store], [signer.verifier])
    assert report.code == verify.DAMAGED, [f.describe() for f in report.files]
    # A file deleted by hand is tampering, whatever the ledger says about other sessions.
    paths["b"].unlink()
    report = verify.verify_paths([store], [signer.verifier])
    assert report.code == verify.TAMPERED and report.ledgers[0].missing


def test_tampering_cannot_pass_as_damage(tmp_path, keys, capsys):
    """Someone deletes sealed session A and rewrites its close entry as a storage failure (file
    removed), re-chaining the ledger after it: without the key, no signature fits."""
    signer = signing.load_signer(keys[0])
    store = tmp_path / "store"
    paths = damaged_store(store, signer)
    paths["a"].unlink()
    entries = [json.loads(x) for x in (store / ledger.LEDGER_NAME).read_bytes().split(b"\n")[:-1]]
    i = next(n for n, e in enumerate(entries) if e["t"] == "session.close")
    entries[i].update(t="session.failed", records=0, head=None, cause="disk full", file="removed")
    del entries[i]["sealed"], entries[i]["sig"]
    prev, out = format_v1.ZERO_HASH, []
    for e in entries:
        e["prev"] = prev
        line = json.dumps(e, separators=(",", ":")).encode()
        out.append(line)
        prev = format_v1.line_hash(line)
    (store / ledger.LEDGER_NAME).write_bytes(b"".join(x + b"\n" for x in out))
    assert cli.main(["verify", "--key", str(keys[1]), str(store)]) == 1
    out = capsys.readouterr().out
    assert f"ledger seq {i}: ledger entry session.failed is not signed (--key was given)" in out
    assert f"ledger seq {i + 1}: ledger signature does not verify" in out
    # Without the key the chain is whole and verify reports the damage claimed, saying nothing proves it.
    assert cli.main(["verify", str(store)]) == 3
    assert "without --key nothing proves the gateway wrote it" in capsys.readouterr().out
    # An unsigned store: any damage it claims is said to be worthless as proof.
    store2 = tmp_path / "unsigned"
    damaged_store(store2, None)
    assert cli.main(["verify", str(store2)]) == 3
    assert "the ledger is UNSIGNED: anyone who can write the store could have written it" in capsys.readouterr().out


def test_an_empty_file_the_gateway_made_right_before_a_crash_is_not_tampering(tmp_path, keys):
    signer = signing.load_signer(keys[0])
    store = tmp_path / "store"
    store.mkdir()
    rel = f"2026/01/01/{A}.jsonl.zst"
    (store / rel).parent.mkdir(parents=True)
    (store / rel).write_bytes(b"")
    write_ledger(store, [("gateway.start", {"host": "gw", "pid": 1}),
                         ("session.open", {"session": A, "path": rel, "first": "0" * 64})], signer)
    report = verify.verify_paths([store], [signer.verifier])
    assert report.code == verify.INTACT, report.files[0].describe()
    assert "no record reached the disk (the gateway stopped right after making the file)" in report.files[0].describe()[0]
    # Not in the ledger, the same empty file is planted.
    write_ledger(store, [("gateway.start", {"host": "gw", "pid": 1})], signer)
    assert verify.verify_paths([store], [signer.verifier]).code == verify.TAMPERED


def test_signed_files_without_their_ledger_fail_with_key(tmp_path, keys, capsys):
    signer = signing.load_signer(keys[0])
    store = tmp_path / "store"
    paths = damaged_store(store, signer)
    (store / ledger.LEDGER_NAME).unlink()
    report = verify.verify_paths([store], [signer.verifier])
    assert report.code == verify.TAMPERED and report.store_issues
    assert f"session file(s) here are signed by key {signer.key_id}" in report.store_issues[0]
    assert verify.verify_paths([store], [signer.verifier], need_ledger=False).code == verify.INTACT
    assert verify.verify_paths([store]).code == verify.INTACT  # no key: nothing says they were signed
    assert cli.main(["verify", "--key", str(keys[1]), "--no-ledger", str(paths["a"])]) == 0
    assert cli.main(["verify", "--key", str(keys[1]), str(paths["a"])]) == 1
    assert "a signed store always has its ledger" in capsys.readouterr().out


# -- anchors ----------------------------------------------------------------------------------------------


def anchor_line(lines: list[bytes], at: int, signer, of: str | None = None, **over) -> bytes:
    """An anchor of `lines`' entry `at` (or, with `of`, of another ledger), signed; `over` then
    alters fields after signing, as a forger would."""
    a = anchors.encode(of or ledger.ledger_id(lines[0]), at, format_v1.line_hash(lines[at]), "x", 5.0, "gw", "/s",
                       signer)
    if over:
        d = json.loads(a)
        d.update(over)
        a = json.dumps(d).encode()
    return a


def test_read_anchors_takes_file_http_and_syslog_lines(tmp_path, keys):
    signer = signing.load_signer(keys[0])
    lines = [ledger.encode_entry(0, format_v1.ZERO_HASH, "gateway.start", 1.0, {}, signer)]
    a = anchor_line(lines, 0, signer)
    f = tmp_path / "a.log"
    f.write_bytes(b"Dec  3 10:00:00 host sshd[1]: unrelated\n" + a + b"\n"
                  + b"Dec  3 10:00:01 host wiretrail[42]: " + a + b"\n"
                  + b'Dec  3 10:00:02 host wiretrail[42]: {"wiretrail_anchor":1,"ledger":"ab\n'
                  + b'{"wiretrail_anchor":1,"ledger":"x","seq":-1}\n')
    got, problems = anchors.read_anchors(f)
    assert [x.where for x in got] == [f"{f}:2", f"{f}:3"] and got[0].seq == 0 and got[0].check([signer.verifier]) is None
    assert problems == [f"{f}:4: an anchor that is not valid JSON (cut or altered)",
                        f"{f}:5: not a well-formed anchor (ledger, seq, head, key, sig)"]


def test_anchors_catch_a_cut_replaced_or_forged_ledger(tmp_path, keys):
    signer = signing.load_signer(keys[0])
    store = tmp_path / "store"
    damaged_store(store, signer)
    lines = (store / ledger.LEDGER_NAME).read_bytes().split(b"\n")[:-1]

    def check(*anchor_lines: bytes, verifiers=(signer.verifier,)) -> verify.Report:
        f = tmp_path / "anchors.jsonl"
        f.write_bytes(b"".join(x + b"\n" for x in anchor_lines))
        got, problems = anchors.read_anchors(f)
        assert not problems
        return verify.verify_paths([store], list(verifiers) or None, anchored=got)

    good = [anchor_line(lines, i, signer) for i in (2, 6)]
    r = check(*good)
    assert r.code == verify.DAMAGED and r.ledgers[0].anchors.endswith("holds seq 6; nothing newer")
    # Cut back to before seq 6: the newest anchor is gone from it.
    (store / ledger.LEDGER_NAME).write_bytes(b"".join(x + b"\n" for x in lines[:6]))
    r = check(*good)
    assert r.code == verify.TAMPERED
    assert "cut back or rewritten after it was anchored" in str(r.ledgers[0].issues[0])
    assert "it has only 6 entries; 1 of 2 anchor(s) fail like this" in str(r.ledgers[0].issues[0])
    (store / ledger.LEDGER_NAME).write_bytes(b"".join(x + b"\n" for x in lines))
    # An anchor of another ledger (this one was replaced, or the file mixes stores).
    r = check(*good, anchor_line(lines, 1, signer, of="e" * 64))
    assert r.code == verify.TAMPERED and "match no ledger checked" in r.anchor_issues[0]
    # Forged or unsigned anchors: caught with --key, not taken for the truth.
    r = check(anchor_line(lines, 1, signer, seq=3))
    assert r.anchor_issues == [f"anchor {tmp_path / 'anchors.jsonl'}:1 signature does not verify: the anchor was "
                               "forged or altered"]
    r = check(anchor_line(lines, 1, None))
    assert "is not signed" in r.anchor_issues[0]
    # Without --key the signatures are not checked; containment still is.
    assert check(anchor_line(lines, 1, None), verifiers=()).code == verify.DAMAGED


class FakeSink:
    def __init__(self):
        self.name = "fake sink"
        self.lines: list[bytes] = []
        self.fail = False
        self.sent = threading.Event()

    def send(self, line):
        if self.fail:
            raise anchors.AnchorError("the fake sink is down")
        self.lines.append(line)
        self.sent.set()

    def close(self):
        pass


def anchorer_with(sink, signer, **spec) -> tuple[anchors.Anchorer, list]:
    events = []
    a = anchors.Anchorer(anchors.AnchorSpec(**{"interval": 0.01, **spec}), signer=signer, store=Path("/s"),
                         host="gw", on_event=events.append, alarm=Alarm)
    a.states = [anchors._SinkState(sink)]
    a.start()
    return a, events


def test_anchorer_sends_the_newest_head_logs_failures_and_recovers(keys, monkeypatch):
    signer = signing.load_signer(keys[0])
    sink = FakeSink()
    monkeypatch.setattr(anchors, "MAX_BACKOFF", 0.05)
    a, events = anchorer_with(sink, signer, fail_closed=True, max_lag=0.2)
    a.offer("L" * 64, 0, "h0", "gateway.start")
    assert wait_until(lambda: sink.lines)
    sink.fail = True
    a.offer("L" * 64, 1, "h1", "session.open")
    assert wait_until(lambda: any("ANCHOR FAILED" in e for e in events))
    alarm = next(e for e in events if "ANCHOR FAILED" in e)
    assert isinstance(alarm, Alarm) and "the fake sink is down" in alarm and "ledger entries after seq 0 are" in alarm
    assert a.refusal() is None or "fail_closed" in a.refusal()
    assert wait_until(lambda: a.refusal() is not None)  # failing longer than max_lag
    assert "no ledger head reached the anchor sink fake sink" in a.refusal()
    for i in range(2, 6):  # heads made while it fails are merged into the newest
        a.offer("L" * 64, i, f"h{i}", "session.close")
    sink.fail = False
    assert wait_until(lambda: any("works again" in e for e in events))
    assert wait_until(lambda: json.loads(sink.lines[-1])["seq"] == 5)
    assert a.refusal() is None
    assert [json.loads(x)["seq"] for x in sink.lines] == [0, 5]
    last = json.loads(sink.lines[-1])
    assert signer.verifier.verify(anchors.signed_bytes(last["ledger"], 5, "h5"), last["sig"])
    # At stop the newest head goes out at once, without waiting for the interval.
    a.spec = anchors.AnchorSpec(interval=3600)
    a.offer("L" * 64, 6, "h6", "session.close")
    a.stop(5)
    assert json.loads(sink.lines[-1])["seq"] == 6


def test_the_writer_anchors_each_durable_ledger_head(tmp_path, keys):
    signer = signing.load_signer(keys[0])
    store = tmp_path / "store"
    w = writer(store, signer, anchors=anchors.AnchorSpec(file=tmp_path / "anchors.jsonl", interval=0.01))
    one_session(w, store, signer.key_id)
    assert w.stop()
    lines = (store / ledger.LEDGER_NAME).read_bytes().split(b"\n")[:-1]
    got, problems = anchors.read_anchors(tmp_path / "anchors.jsonl")
    assert not problems and got[-1].seq == len(lines) - 1
    assert verify.verify_paths([store], [signer.verifier], anchored=got).code == verify.INTACT


# -- a full disk, at the writer ---------------------------------------------------------------------------


@pytest.fixture
def tiny_tmpfs(tmp_path):
    import subprocess

    mnt = tmp_path / "tmpfs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root or CAP_SYS_ADMIN): {proc.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_the_live_marker_never_stops_the_ledger_on_a_full_disk(tiny_tmpfs):
    """The marker that tells "open" from "gateway stopped" is best effort: on a full disk it is
    left out (and no temporary file stays), and the ledger it sits beside still opens."""
    from recorder.store.live import LIVE_NAME, mark_live
    from tests.support.disk import fill

    store = tiny_tmpfs / "store"
    store.mkdir()
    fill(tiny_tmpfs)
    assert mark_live(store) is False
    assert list(store.iterdir()) == []
    lg = ledger.LedgerFile(store, None)
    lg.open()
    assert lg.fd >= 0 and lg.reserve_error and not (store / LIVE_NAME).exists()
    os.close(lg.fd)


def test_on_a_full_disk_the_ledger_says_at_once_which_sessions_failed(tiny_tmpfs, keys):
    """The ledger's reserve takes its entries when session files get ENOSPC; each failed session
    gets its session.failed while the gateway still runs, and its empty file goes after it."""
    signer = signing.load_signer(keys[0])
    store = tiny_tmpfs / "store"
    w = writer(store, signer)
    reg = SessionRegistry(w, store, idle_timeout=60, max_duration=600, signing_key_id=signer.key_id)
    # The disk is filled only once the ledger holds its reserve (taken just after the file is made).
    assert wait_until(lambda: (store / ledger.LEDGER_NAME).exists() and (store / ledger.LEDGER_NAME).stat().st_blocks * 512 >= ledger.RESERVE)
    fd = os.open(tiny_tmpfs / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)
    errors = []
    for i in range(20):  # 20 sessions: their entries (~14 KB) need more than a page of the ledger
        s = reg.begin_flow(f"u{i}", IDENTITY, ("10.0.0.1", 1))
        acked = threading.Event()
        s.record("http.error", {"flow": "f", "phase": "x", "message": os.urandom(8192).hex()},
                 ack=lambda e, ev=acked: (errors.append(e), ev.set()))
        assert acked.wait(5)
    assert all(e is not None and e.cause == "disk full" for e in errors)

    def failed_entries():
        return [e for e in ledger.read_ledger(store / ledger.LEDGER_NAME, [signer.verifier]).entries
                if e["t"] == "session.failed"]

    # The ack comes from the session file's write; the ledger's entry follows on the writer thread.
    assert wait_until(lambda: len(failed_entries()) == 20), failed_entries()
    assert not ledger.read_ledger(store / ledger.LEDGER_NAME, [signer.verifier]).problems
    assert all(e["file"] == "removed" and e["cause"] == "disk full" for e in failed_entries())
    assert wait_until(lambda: not list(store.rglob("*.jsonl.zst")))  # removed once the ledger said so
    w.stop()
    report = verify.verify_paths([store], [signer.verifier])
    assert report.code == verify.DAMAGED and len(report.ledgers[0].damage) == 20


def test_verify_help_and_integrity_doc_give_the_exit_codes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["verify", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    doc = (Path(__file__).resolve().parents[2] / "docs" / "integrity.md").read_text()
    for code, word in ((verify.INTACT, "intact"), (verify.TAMPERED, "tampered with or broken"),
                       (verify.USAGE, "usage error"), (verify.DAMAGED, "damaged, not tampered")):
        assert f"{code} {word}" in text
        assert f"| {code} | {word}" in doc
