"""`wiretrail mask`: an artifact recorded before a rule existed is re-masked into a new,
intact artifact that names its original and holds no secret."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import zstandard

from recorder import cli
from recorder.forensics import verify
from recorder.forensics.reader import read_session
from recorder.store.bodies import BodyBytes, BodyStream, ChunkBytes
from recorder.store.sessions import SessionRegistry
from recorder.store.writer import RecordWriter
from tests.support.artifacts import recorded_body
from tests.unit.masking_fakes import GITHUB_PAT, OPENAI_KEY, PASSWORD, j

WIRETRAIL = Path(sys.executable).parent / "wiretrail"
ACME = j("acme", "_", "Q7w8E9r0T1y2U3i4O5p6A7s8D9f0G1h2")
FLOW = "f0000000-0000-0000-0000-000000000001"


def sse(text: str) -> bytes:
    return b"".join(b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": ch}}]}) + b"\n\n"
                    for ch in text) + b"data: [DONE]\n\n"


def record_unmasked(store: Path) -> tuple[str, Path]:
    """A session as a gateway without these rules would have written it (no masker)."""
    w = RecordWriter(fsync="never")
    w.start()
    reg = SessionRegistry(w, store, idle_timeout=60, max_duration=600, clock=lambda: 1_700_000_000.0)
    s = reg.begin_flow("alice", {"sub": "alice", "method": "jwt"}, ("10.0.0.1", 5000))
    s.record("http.request", {
        "flow": FLOW, "conn": "c1", "connection": "openai", "method": "POST",
        "url": f"https://api.example.com/v1/x?token={GITHUB_PAT}", "http_version": "HTTP/1.1",
        "headers": [["content-type", "application/json"], ["x-debug", f"acme={ACME}"]],
        "body": BodyBytes(orjson.dumps({"messages": [{"role": "user", "content": f"db postgres://a:{PASSWORD}@h/x"}]})),
    })
    s.record("http.response", {"flow": FLOW, "status": 200, "headers": [["content-type", "text/event-stream"]],
                                "body": None, "streamed": True})
    raw = sse(f"your key: {OPENAI_KEY} and {ACME}.")
    stream = BodyStream()
    parts = [raw[i:i + 40] for i in range(0, len(raw), 40)]
    for n, part in enumerate(parts):
        s.record("http.chunk", {"flow": FLOW, "dir": "response", "n": n,
                                "body": ChunkBytes(part, stream, final=n == len(parts) - 1)})
    s.record("http.end", {"flow": FLOW, "size": {"request": 1, "response": len(raw)}, "duration_ms": 1, "ttfb_ms": 1})
    reg.end_flow(s)
    reg.close_all()
    assert w.stop()
    return s.id, s.path


def stored_text(path: Path) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())


def test_mask_round_trip(tmp_path, capsys, monkeypatch):
    store = tmp_path / "sessions"
    sid, original = record_unmasked(store)
    before = stored_text(original)
    assert GITHUB_PAT.encode() in before  # the premise: recorded unmasked

    config = tmp_path / "gw.toml"
    config.write_text('[storage]\ndir = "sessions"\n[identity]\nmode = "none"\n'
                      '[[masking.rules]]\nid = "acme-token"\nregex = "acme_[A-Za-z0-9]{32}"\nkeywords = ["acme_"]\n')
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    assert cli.main(["mask", str(original), "-o", str(out_dir), "--config", str(config)]) == 0
    printed = capsys.readouterr().out
    new_path = Path(printed.splitlines()[0])
    assert new_path.parent == out_dir and "newly masked" in printed

    v = verify.verify_file(new_path)
    assert v.ok and v.read.state == "closed", v.describe()
    data = stored_text(new_path)
    for secret in (GITHUB_PAT, OPENAI_KEY, PASSWORD, ACME):
        assert secret.encode() not in data, secret
    read = read_session(new_path)
    opened = read.open_record
    orig = read_session(original)
    assert opened["session"] == read.session_id != sid
    assert opened["remasked_from"]["session"] == sid and opened["remasked_from"]["head"] == orig.head
    # the streamed body, re-assembled, is the masked stream
    body = recorded_body(read.records, FLOW, "response")
    text = "".join(orjson.loads(line[6:])["choices"][0]["delta"]["content"]
                   for line in body.split(b"\n\n") if line.startswith(b"data: {"))
    assert text.startswith("your key: [MASKED:openai:") and "[MASKED:acme-token:" in text
    hdr = dict(map(tuple, [r for r in read.records if r["t"] == "http.request"][0]["headers"]))
    assert hdr["x-debug"].startswith("acme=[MASKED:acme-token:")
    # the original is untouched
    assert stored_text(original) == before and verify.verify_file(original).ok


def test_mask_by_id_default_output_and_errors(tmp_path, capsys):
    store = tmp_path / "sessions"
    sid, original = record_unmasked(store)
    r = subprocess.run([str(WIRETRAIL), "mask", sid[:20], "--dir", str(store)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    new_path = Path(r.stdout.splitlines()[0])
    assert new_path.parent == original.parent and verify.verify_file(new_path).ok
    # a damaged original: refused, nothing written
    bad = tmp_path / "bad.jsonl.zst"
    bad.write_bytes(original.read_bytes()[:-9] + b"\x00" * 9)
    files_before = set(tmp_path.rglob("*.jsonl.zst"))
    assert cli.main(["mask", str(bad), "-o", str(tmp_path)]) == 1
    assert "damaged" in capsys.readouterr().err
    assert set(tmp_path.rglob("*.jsonl.zst")) == files_before
    assert cli.main(["mask", "NOSUCHSESSION", "--dir", str(store)]) == 2


def test_mask_a_session_recorded_before_issue_18(tmp_path):
    """tests/vectors/remask-before-18.jsonl.zst was written by the gateway as it was before
    (tests/vectors/remask_before_18.py): a .env key inside a JSON-in-JSON tool result, a token
    in a header name, a raw-deflate reply stored undecoded. Today's `wiretrail mask` masks them
    all, and the new file verifies."""
    from tests.vectors.remask_before_18 import FILE, secrets

    original = tmp_path / FILE.name
    original.write_bytes(FILE.read_bytes())
    before = stored_text(original)
    assert secrets()["api_key"].encode() in before and secrets()["header"].encode() in before  # the premise
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    r = subprocess.run([str(WIRETRAIL), "mask", str(original), "-o", str(out_dir)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    new_path = Path(r.stdout.splitlines()[0])
    v = verify.verify_file(new_path)
    assert v.ok and v.read.state == "closed", v.describe()
    read = read_session(new_path)
    data = stored_text(new_path)
    import base64
    import zlib

    for rec in read.records:
        body = rec.get("body") if isinstance(rec.get("body"), dict) else {}
        if "b64" in body:  # nothing hides in a body stored as bytes either
            raw = base64.b64decode(body["b64"])
            data += raw
            try:
                data += zlib.decompressobj(-15).decompress(raw)
            except zlib.error:
                pass
    for name, secret in secrets().items():
        assert secret.encode() not in data, name
    deflated = [r for r in read.records if r["t"] == "http.response" and r.get("body")][0]["body"]
    assert "decoded" not in deflated and deflated["text"].startswith('{"token": "[MASKED:github-pat:')
    names = [k for r in read.records if r["t"] == "http.request" for k, _ in r["headers"]]
    assert any(k.startswith("x-[MASKED:github-pat:") for k in names)
    assert stored_text(original) == before


def test_show_and_export_mask_what_they_print(tmp_path):
    """A session recorded before a rule existed (here: without a masker) reaches no terminal or
    export unmasked: show (transcript, --json, --records) and export apply today's rules."""
    import json as jsonlib

    store = tmp_path / "sessions"
    sid, original = record_unmasked(store)
    secrets = (GITHUB_PAT, OPENAI_KEY, PASSWORD)
    # the premise: stored unmasked (the OpenAI key one character per event, whole only once assembled)
    assert GITHUB_PAT.encode() in stored_text(original) and PASSWORD.encode() in stored_text(original)
    for extra in ([], ["--json"], ["--records"], ["--full"]):
        r = subprocess.run([str(WIRETRAIL), "show", str(original), *extra], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert "[MASKED:" in r.stdout, extra
        for s in secrets:
            assert s not in r.stdout, (extra, s)
    har, mitm = tmp_path / "s.har", tmp_path / "s.mitm"
    r = subprocess.run([str(WIRETRAIL), "export", str(original), "--har", str(har), "--mitm", str(mitm)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    for path in (har, mitm):
        data = path.read_bytes()
        for s in secrets:
            assert s.encode() not in data, (path.name, s)
    assert jsonlib.loads(har.read_text())["log"]["entries"]
    # --raw is the stored bytes, for checking hashes: exactly the file's lines.
    r = subprocess.run([str(WIRETRAIL), "show", str(original), "--raw"], capture_output=True)
    assert r.stdout == stored_text(original)
