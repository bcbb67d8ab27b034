"""The benchmark's upstream: a small, fast HTTP/1.1 server on raw asyncio streams.

scripts/bench.py starts it in its own process, so that serving costs no CPU in the
process that drives the client load. It must never be the bottleneck: replies are
pre-encoded, connections are kept alive, and there is no framework in the way.

    python scripts/bench_upstream.py [--port 0] [--tls-cert CERT --tls-key KEY]

It prints "PORT <n>" on stdout once it listens (on 127.0.0.1 only). Routes:
  GET  /small                  a small JSON reply with a Content-Length
  GET  /sse?n=N&delay=S        text/event-stream, chunked: N events, the first at once,
                               then one every S seconds; each event carries the upstream's
                               time.monotonic() as "t" (one clock for every process here)
  POST /sink                   reads the request body (Content-Length or chunked) and
                               replies small JSON with the byte count
  POST /chat                   reads a chat request and replies with an assistant
                               message of a size chosen by the request (artifact test)
  GET  /whoami                 replies with the SHA-256 (hex) of each credential header it
                               received (authorization, x-api-key, proxy-authorization;
                               null when absent), so the bench can check the credential swap
                               without the upstream echoing a secret
"""
from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import random
import ssl
import sys
import time
from urllib.parse import parse_qs, urlsplit

SMALL_BODY = json.dumps(
    {
        "id": "chatcmpl-bench",
        "object": "chat.completion",
        "created": 1700000000,
        "model": "bench-model",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello! How can I help you today?"},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
    },
    separators=(",", ":"),
).encode()

SMALL_REPLY = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: application/json\r\n"
    b"content-length: " + str(len(SMALL_BODY)).encode() + b"\r\n"
    b"\r\n" + SMALL_BODY
)

SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n"
    b"\r\n"
)

# An OpenAI-shaped delta; "t" is filled in per event.
_SSE_EVENT = (
    'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","model":"bench-model",'
    '"choices":[{"index":0,"delta":{"content":"token %d "},"finish_reason":null}],"i":%d,"t":%.6f}\n\n'
)

_WORDS = (
    "the of and to in is that for it as with was on be by this are from or at an which but not have "
    "function return value request response stream record session gateway agent model token cache "
    "error index buffer thread writer reader chain hash config policy identity masking upstream client"
).split()


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _json_reply(obj: dict, status: bytes = b"200 OK") -> bytes:
    body = json.dumps(obj, separators=(",", ":")).encode()
    return (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
        + str(len(body)).encode() + b"\r\n\r\n" + body
    )


def _assistant_text(seed: int, size: int) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    n = 0
    while n < size:
        w = rng.choice(_WORDS)
        out.append(w)
        n += len(w) + 1
    return " ".join(out)


async def _read_body(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> int:
    """Reads and discards the request body; returns its length."""
    length = headers.get(b"content-length")
    if length is not None:
        n = int(length)
        remaining = n
        while remaining:
            data = await reader.read(min(remaining, 1 << 18))
            if not data:
                raise ConnectionError("body cut short")
            remaining -= len(data)
        return n
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        total = 0
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0], 16)
            if size == 0:
                # trailers, then the empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                return total
            await reader.readexactly(size + 2)
            total += size
    return 0


async def _read_json_body(reader: asyncio.StreamReader, headers: dict[bytes, bytes]) -> bytes:
    n = int(headers.get(b"content-length", b"0"))
    return await reader.readexactly(n)


async def _serve_sse(writer: asyncio.StreamWriter, n: int, delay: float) -> None:
    for i in range(n):
        event = (_SSE_EVENT % (i, i, time.monotonic())).encode()
        if i == 0:
            writer.write(SSE_HEAD + _chunk(event))
        else:
            writer.write(_chunk(event))
        await writer.drain()
        if i + 1 < n:
            await asyncio.sleep(delay)
    writer.write(_chunk(b"data: [DONE]\n\n") + b"0\r\n\r\n")
    await writer.drain()


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            lines = head.split(b"\r\n")
            method, target, _ = lines[0].split(b" ", 2)
            headers: dict[bytes, bytes] = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
            path = target
            if not path.startswith(b"/"):  # absolute-form, as some proxies send it
                parts = urlsplit(path.decode())
                path = (parts.path + ("?" + parts.query if parts.query else "")).encode()
            if path == b"/small":
                await _read_body(reader, headers)
                writer.write(SMALL_REPLY)
            elif path == b"/sink":
                n = await _read_body(reader, headers)
                writer.write(_json_reply({"received": n}))
            elif path.startswith(b"/sse"):
                await _read_body(reader, headers)
                q = parse_qs(urlsplit(path.decode()).query)
                await _serve_sse(writer, int(q.get("n", ["5"])[0]), float(q.get("delay", ["0.02"])[0]))
            elif path == b"/whoami":
                await _read_body(reader, headers)
                writer.write(_json_reply({
                    name: hashlib.sha256(headers[name.encode()]).hexdigest() if name.encode() in headers else None
                    for name in ("authorization", "x-api-key", "proxy-authorization")
                }))
            elif path == b"/chat" and method == b"POST":
                req = json.loads(await _read_json_body(reader, headers))
                turn = len(req.get("messages", []))
                content = _assistant_text(turn * 7919 + 1, int(req.get("reply_size", 800)))
                writer.write(_json_reply({
                    "id": f"chatcmpl-{turn}",
                    "object": "chat.completion",
                    "model": req.get("model", "bench-model"),
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                 "finish_reason": "stop"}],
                    "usage": {"prompt_tokens": turn * 100, "completion_tokens": len(content) // 4},
                }))
            else:
                await _read_body(reader, headers)
                writer.write(_json_reply({"error": "no such route"}, b"404 Not Found"))
            await writer.drain()
            if headers.get(b"connection", b"").lower() == b"close":
                return
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def main_async(port: int, tls: ssl.SSLContext | None) -> None:
    server = await asyncio.start_server(handle, "127.0.0.1", port, ssl=tls, limit=1 << 20, backlog=1024)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--tls-cert", help="serve HTTPS with this certificate (PEM)")
    p.add_argument("--tls-key", help="the certificate's private key (PEM)")
    args = p.parse_args(argv)
    tls = None
    if args.tls_cert:
        tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        tls.load_cert_chain(args.tls_cert, args.tls_key)
    try:
        asyncio.run(main_async(args.port, tls))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
