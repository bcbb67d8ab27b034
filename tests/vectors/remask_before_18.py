"""A session recorded by the gateway as it was before issue 18 (commit f0728a6), with the
masker of that time: the cases it let through are in it. tests/unit/test_masking_command.py
re-masks it with today's `wiretrail mask`.

It was written by running this file from a checkout of f0728a6:

    git archive f0728a6 | tar -x -C /tmp/old && cd /tmp/old && \\
        python /path/to/tests/vectors/remask_before_18.py OUT_DIR

The secrets are fake, built here from a fixed seed; `secrets()` gives them to the test.
"""
from __future__ import annotations

import json
import random
import string
import sys
import zlib
from pathlib import Path

FILE = Path(__file__).resolve().parent / "remask-before-18.jsonl.zst"
FLOW = "f18f18f1-0000-4000-8000-000000000018"


def secrets() -> dict[str, str]:
    rng = random.Random(1818)
    alnum = string.ascii_letters + string.digits
    pick = lambda n, a=alnum: "".join(rng.choice(a) for _ in range(n))  # noqa: E731
    return {"api_key": pick(32), "header": "gh" + "p_" + pick(36), "db_password": "Pw" + pick(14),
            "deflated": "gh" + "p_" + pick(36)}


def write(out_dir: Path) -> Path:
    from recorder.masking import Masker
    from recorder.store.bodies import BodyBytes, BodyStream, ChunkBytes
    from recorder.store.sessions import SessionRegistry
    from recorder.store.writer import RecordWriter

    s = secrets()
    masker = Masker(b"k" * 32)
    w = RecordWriter(fsync="never")
    w.start()
    reg = SessionRegistry(w, out_dir, idle_timeout=60, max_duration=600, clock=lambda: 1_767_225_600.0)
    ses = reg.begin_flow("alice", {"sub": "alice", "method": "jwt"}, ("10.0.0.1", 5000))
    inner = json.dumps({"path": ".env", "content": f'API_KEY="{s["api_key"]}"\n'})
    from recorder.masking.headers import recordable_headers

    headers = recordable_headers([("content-type", "application/json"), ("x-" + s["header"], "1")], b"k" * 32,
                                 masker=masker)
    ses.record("http.request", {
        "flow": FLOW, "conn": "c1", "connection": "anthropic", "method": "POST", "url": "https://api.example.com/v1/messages",
        "http_version": "HTTP/1.1", "headers": headers,
        "body": BodyBytes(json.dumps({"messages": [{"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_01", "content": inner}]}]}).encode(),
            masker=masker, content_type="application/json"),
    })
    ses.record("http.response", {"flow": FLOW, "status": 200, "headers": [["content-type", "text/event-stream"]],
                                 "body": None, "streamed": True})
    text = f"the db is postgres://app:{s['db_password']}@db.internal:5432/app ok"
    events = [b"event: content_block_delta\ndata: " + json.dumps(
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": ch}}).encode() + b"\n\n"
        for ch in text]
    events.append(b'event: content_block_stop\ndata: {"type":"content_block_stop","index":0}\n\n')
    raw = b"".join(events)
    stream = BodyStream(masker=masker, content_type="text/event-stream")
    parts = [raw[i:i + 300] for i in range(0, len(raw), 300)]
    for n, part in enumerate(parts):
        ses.record("http.chunk", {"flow": FLOW, "dir": "response", "n": n,
                                  "body": ChunkBytes(part, stream, final=n == len(parts) - 1)})
    ses.record("http.end", {"flow": FLOW, "size": {"request": 1, "response": len(raw)}, "duration_ms": 1, "ttfb_ms": 1})
    # A reply in raw deflate, which that gateway stored undecoded (base64 of the wire bytes).
    flow2 = FLOW[:-2] + "19"
    co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    wire = co.compress(json.dumps({"token": s["deflated"]}).encode()) + co.flush()
    ses.record("http.request", {"flow": flow2, "conn": "c1", "connection": None, "method": "GET", "url": "https://x/",
                                "http_version": "HTTP/1.1", "headers": [], "body": BodyBytes(b"")})
    ses.record("http.response", {"flow": flow2, "status": 200, "headers": [["content-encoding", "deflate"]],
                                 "body": BodyBytes(wire, "deflate", masker=masker, content_type="application/json"),
                                 "streamed": False})
    ses.record("http.end", {"flow": flow2, "size": {"request": 0, "response": len(wire)}, "duration_ms": 1, "ttfb_ms": 1})
    reg.end_flow(ses)
    reg.close_all()
    assert w.stop()
    return ses.path


if __name__ == "__main__":
    sys.path.insert(0, str(Path.cwd()))
    path = write(Path(sys.argv[1]))
    print(path)
