"""Benchmark of the review page's session list with a large store (issue 22: the first page of
10,000 sessions renders in under 300 ms).

    .venv/bin/python scripts/bench_review.py [--sessions 10000] [--store DIR] [--runs 5]

Makes (or reuses) a store of N signed sessions written by recorder's real writer, with its
ledger, each an OpenAI chat exchange with a tool call and an MCP call. Then starts a real
`wiretrail serve` process on it and times, with a real HTTP client:
- start-up: from launch until the page answers (the ledger is checked then);
- the first page, cold: the first request for the list after start-up (rows made on demand);
- the first page, warm: the same request again, and a filtered one once the index is complete.
Figures are wall-clock times of whole HTTP requests on this machine; the script prints them.
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from recorder.auth.identity import mint_dev_token  # noqa: E402
from recorder.store import format_v1  # noqa: E402
from recorder.store.sessions import SessionRegistry  # noqa: E402
from recorder.store.signing import generate, load_signer  # noqa: E402
from recorder.store.writer import RecordWriter  # noqa: E402

WIRETRAIL = Path(sys.executable).parent / "wiretrail"


def make_store(root: Path, n: int) -> None:
    generate(root / "keys")
    signer = load_signer(root / "keys" / "gateway.key")
    clock = [time.time() - n * 60.0]
    writer = RecordWriter(fsync="never", storage_dir=root / "store", signer=signer, checkpoint_interval=3600,
                          clock=lambda: clock[0])
    writer.start()
    reg = SessionRegistry(writer, root / "store", idle_timeout=600, max_duration=36000,
                          signing_key_id=signer.key_id, clock=lambda: clock[0])
    users = [f"user{i}" for i in range(50)]
    for i in range(n):
        clock[0] += 60.0
        sub = users[i % len(users)]
        ident = {"sub": sub, "email": f"{sub}@example.com", "groups": ["eng"], "iss": "https://idp/",
                 "method": "jwt", "authenticated": True}
        s = reg.begin_flow(f"{sub} {i}", ident, ("10.0.0.1", 40000 + i % 20000))
        for k, (url, req, reply) in enumerate(_exchanges(i)):
            flow = f"{i:08d}-{k:04d}-0000-0000-000000000000"
            t = clock[0] + k
            s.record("http.request", {"flow": flow, "conn": "c", "connection": "llm", "method": "POST", "url": url,
                                      "http_version": "HTTP/1.1", "headers": [["content-type", "application/json"],
                                      ["user-agent", "claude-cli/1.0.3"]], "body": format_v1.encode_body(req),
                                      "streamed": False}, ts=t)
            s.record("http.response", {"flow": flow, "status": 200, "headers": [["content-type", "application/json"]],
                                       "body": format_v1.encode_body(reply), "streamed": False}, ts=t + 0.3)
            s.record("http.end", {"flow": flow, "status": 200, "size": {"request": len(req), "response": len(reply)},
                                  "duration_ms": 300.0, "ttfb_ms": 200.0}, ts=t + 0.3)
        reg.end_flow(s)
        reg._open.pop(s.key, None)
        reg._close(s, "idle")
        if i % 1000 == 999:
            print(f"  {i + 1} sessions written", flush=True)
    assert writer.stop(timeout=600)


def _exchanges(i: int):
    msgs = [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": f"task {i}: fix it"}]
    req = json.dumps({"model": "gpt-4o", "messages": msgs, "tools": [{"type": "function", "function": {
        "name": "read_file", "parameters": {"type": "object"}}}]}).encode()
    reply = json.dumps({"model": "gpt-4o", "choices": [{"message": {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "read_file", "arguments": "{\"path\": \"a.py\"}"}}]},
        "finish_reason": "tool_calls"}], "usage": {"prompt_tokens": 120, "completion_tokens": 12}}).encode()
    yield "https://api.openai.com/v1/chat/completions", req, reply
    mreq = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "search",
                       "arguments": {"q": "x"}}}).encode()
    mrep = json.dumps({"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "ok"}]}}).encode()
    yield "https://mcp.example.com/mcp", mreq, mrep


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sessions", type=int, default=10_000)
    ap.add_argument("--store", type=Path, help="where to make (or reuse) the store; default a temporary dir")
    ap.add_argument("--runs", type=int, default=5, help="server starts to time (each: start-up, cold, warm)")
    args = ap.parse_args()
    root = args.store or Path(tempfile.mkdtemp(prefix="wiretrail-bench-review-"))
    root.mkdir(parents=True, exist_ok=True)
    if not (root / "store").is_dir():
        print(f"writing {args.sessions} sessions under {root} ...", flush=True)
        t = time.monotonic()
        make_store(root, args.sessions)
        print(f"  done in {time.monotonic() - t:.1f} s", flush=True)
    files = sum(1 for _ in (root / "store").rglob("*" + format_v1.FILE_SUFFIX))
    secret = secrets.token_urlsafe(48)
    (root / "dev.secret").write_text(secret)
    port = _free_port()
    (root / "serve.toml").write_text(
        f'[storage]\ndir = "store"\n[identity]\nmode = "jwt"\nissuer = "bench"\naudience = "wiretrail"\n'
        f'hs256_secret = "file:dev.secret"\nreview_groups = ["reviewers"]\n'
        f'[review]\nlisten = "127.0.0.1:{port}"\nverify_keys = ["keys/gateway.pub"]\n')
    token = mint_dev_token(secret, sub="bench", groups=["reviewers"], issuer="bench", audience="wiretrail")
    headers = {"Authorization": f"Bearer {token}"}
    base = f"http://127.0.0.1:{port}"
    starts, colds, warms, filtered = [], [], [], []
    for run in range(args.runs):
        t0 = time.monotonic()
        proc = subprocess.Popen([str(WIRETRAIL), "serve", "--config", str(root / "serve.toml")],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            with httpx.Client(timeout=60, trust_env=False) as c:
                while True:
                    try:
                        c.get(base + "/login")
                        break
                    except httpx.TransportError:
                        if proc.poll() is not None:
                            print(proc.stdout.read())
                            return 1
                        time.sleep(0.01)
                starts.append(time.monotonic() - t0)
                colds.append(_timed(c, base + "/", headers))
                warms.append(min(_timed(c, base + "/", headers) for _ in range(5)))
                if run == 0:
                    _wait_indexed(c, base, headers, files)
                    filtered.append(min(_timed(c, base + "/?user=user7&integrity=verified", headers) for _ in range(5)))
        finally:
            proc.terminate()
            proc.wait(30)
    print(f"store: {files} sessions ({root})")
    print(f"start-up until the page answers: median {statistics.median(starts) * 1000:.0f} ms "
          f"(min {min(starts) * 1000:.0f}, max {max(starts) * 1000:.0f}) over {len(starts)} starts")
    print(f"first page, cold (first request after start-up): median {statistics.median(colds) * 1000:.0f} ms "
          f"(min {min(colds) * 1000:.0f}, max {max(colds) * 1000:.0f})")
    print(f"first page, warm: median {statistics.median(warms) * 1000:.0f} ms")
    if filtered:
        print(f"filtered page (user + integrity), index complete: {filtered[0] * 1000:.0f} ms")
    return 0


def _timed(c: httpx.Client, url: str, headers: dict) -> float:
    t = time.monotonic()
    r = c.get(url, headers=headers)
    dt = time.monotonic() - t
    assert r.status_code == 200, r.status_code
    assert r.text.count('<tr class="row"') > 0
    return dt


def _wait_indexed(c: httpx.Client, base: str, headers: dict, files: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = c.get(base + "/?user=nobody-matches", headers=headers)
        if "still indexing" not in r.text:
            return
        time.sleep(1)
    raise SystemExit("the index did not complete in time")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    os.environ.pop("HTTP_PROXY", None)
    sys.exit(main())
