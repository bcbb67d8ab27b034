"""Signing, keygen, the ledger, checkpoints and seals, recovery, retention and verify,
on real files written by the real writer thread."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import time
from pathlib import Path

import pytest
import zstandard
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from recorder import cli, format_v1, ledger, signing, verify
from recorder.sessions import SessionRegistry
from recorder.writer import RecordWriter

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


def test_quiet_session_gets_its_tail_signed_by_the_timer(tmp_path, keys):
    priv, _, kid = keys
    store = tmp_path / "store"
    w = writer(store, signing.load_signer(priv), checkpoint_interval=0.1)
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
    time.sleep(0.3)  # no new records: no new checkpoint
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
