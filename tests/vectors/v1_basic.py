"""The format v1 test vector: three records with fixed values (docs/format.md, "Test vector").

Run `python tests/vectors/v1_basic.py` to (re)write v1-basic.jsonl and v1-basic.jsonl.zst
next to this file. The .jsonl bytes are fixed by the spec; the .zst bytes depend on the
zstd version, so tests read it rather than compare it.
"""
from __future__ import annotations

from pathlib import Path

from recorder.store import format_v1

HERE = Path(__file__).resolve().parent
JSONL = HERE / "v1-basic.jsonl"
ZST = HERE / "v1-basic.jsonl.zst"

SESSION_ID = "01KDVDNA00B8Y9W7VV5N66X2GB"  # 2026-01-01T00:00:00Z + fixed random part
FLOW_ID = "5c0e6b1a-2f4d-4e8a-9b7c-1d2e3f4a5b6c"
REQUEST_BODY = b'{"model":"gpt-4o-mini","messages":[{"role":"user","content":"hello"}]}'

RECORDS: list[tuple[str, float, dict]] = [
    (
        "session.open",
        1767225600.0,
        {
            "session": SESSION_ID,
            "identity": {
                "sub": "alice",
                "email": "alice@example.com",
                "groups": ["engineering"],
                "iss": "https://idp.example.com/",
                "method": "jwt",
                "authenticated": True,
            },
            "client": {"ip": "127.0.0.1", "port": 50123},
            "gateway": {"host": "gw1", "version": "0.1.0"},
            "key": None,
            "opened": 1767225600.0,
        },
    ),
    (
        "http.request",
        1767225600.25,
        {
            "flow": FLOW_ID,
            "conn": "0b6f2c1e-8d3a-4f5b-9c7d-2e1f0a9b8c7d",
            "connection": "openai",
            "mode": "regular",
            "method": "POST",
            "url": "https://api.openai.com/v1/chat/completions",
            "http_version": "HTTP/1.1",
            "headers": [["content-type", "application/json"], ["authorization", "[credential:openai]"]],
            "body": format_v1.encode_body(REQUEST_BODY),
            "streamed": False,
        },
    ),
    (
        "session.close",
        1767225601.5,
        {"reason": "shutdown", "counts": {"flows": 1, "records": 3, "errors": 0}, "duration_s": 1.5},
    ),
]


def build_lines() -> list[bytes]:
    chain = format_v1.Chain()
    return [chain.next_line(t, ts, fields) for t, ts, fields in RECORDS]


def write() -> None:
    import zstandard

    lines = build_lines()
    JSONL.write_bytes(b"".join(line + b"\n" for line in lines))
    cobj = zstandard.ZstdCompressor(level=3).compressobj()
    out = b""
    for line in lines:  # one block per record, the way the writer flushes its batches
        out += cobj.compress(line + b"\n") + cobj.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
    out += cobj.flush(zstandard.COMPRESSOBJ_FLUSH_FINISH)
    ZST.write_bytes(out)


if __name__ == "__main__":
    write()
    for line in build_lines():
        print(line.decode())
        print("sha256:", format_v1.line_hash(line))
