"""Clients for end-to-end tests: httpx, the openai and anthropic SDKs, curl.

Every client ignores the environment's proxy settings (trust_env=False) and never
retries, so a request reaches the upstream at most once per call.
"""
from __future__ import annotations

import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass, field

import httpx

from tests.support.artifacts import TEST_ID_HEADER

TIMEOUT = httpx.Timeout(30.0)


def new_test_id() -> str:
    return "t-" + uuid.uuid4().hex[:16]


def trust(gw) -> ssl.SSLContext:
    """An SSL context that trusts the gateway's CA (what a proxied client must do)."""
    return ssl.create_default_context(cafile=str(gw.ca_path))


def httpx_client(gw, mode: str, upstream=None) -> httpx.Client:
    """mode "proxy": through the gateway as HTTPS proxy (requests go to the upstream's URL);
    mode "reverse": to the gateway's reverse listener as the base URL."""
    if mode == "proxy":
        return httpx.Client(
            base_url=upstream.base_url, proxy=gw.proxy_url, verify=trust(gw), trust_env=False, timeout=TIMEOUT
        )
    if mode == "reverse":
        return httpx.Client(base_url=gw.reverse_url, trust_env=False, timeout=TIMEOUT)
    raise ValueError(mode)


def sdk_http_client(gw, mode: str) -> httpx.Client:
    if mode == "proxy":
        return httpx.Client(proxy=gw.proxy_url, verify=trust(gw), trust_env=False, timeout=TIMEOUT)
    return httpx.Client(trust_env=False, timeout=TIMEOUT)


def openai_client(gw, mode: str, upstream, test_id: str):
    import openai

    base = (upstream.base_url if mode == "proxy" else gw.reverse_url) + "/v1"
    return openai.OpenAI(
        base_url=base,
        api_key="sk-test-not-a-real-key",
        http_client=sdk_http_client(gw, mode),
        max_retries=0,
        default_headers={TEST_ID_HEADER: test_id},
    )


def anthropic_client(gw, mode: str, upstream, test_id: str):
    import anthropic

    base = upstream.base_url if mode == "proxy" else gw.reverse_url
    return anthropic.Anthropic(
        base_url=base,
        api_key="sk-ant-test-not-a-real-key",
        http_client=sdk_http_client(gw, mode),
        max_retries=0,
        default_headers={TEST_ID_HEADER: test_id},
    )


@dataclass
class StreamRead:
    """What a client got from a streamed response, and when each SSE event arrived."""

    body: bytes = b""  # every byte received (after Content-Encoding is undone)
    events: list[bytes] = field(default_factory=list)
    arrivals: list[float] = field(default_factory=list)  # time.time() when each event completed


def read_sse(response: httpx.Response, *, stop_after: int | None = None) -> StreamRead:
    """Read an SSE body chunk by chunk, noting when each complete event arrived."""
    out = StreamRead()
    pending = b""
    for data in response.iter_bytes():
        now = time.time()
        out.body += data
        pending += data
        while b"\n\n" in pending:
            ev, pending = pending.split(b"\n\n", 1)
            out.events.append(ev + b"\n\n")
            out.arrivals.append(now)
        if stop_after is not None and len(out.events) >= stop_after:
            break
    return out


def curl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["curl", "--silent", "--show-error", *args], capture_output=True, timeout=timeout)


def read_http_head(sock) -> tuple[int, dict[str, str], bytes]:
    """Read an HTTP/1 response head from a socket: (status, headers lowercased, the bytes after it).
    Status 0 if the peer closed before a head or sent something else."""
    data = b""
    while b"\r\n\r\n" not in data:
        more = sock.recv(65536)
        if not more:
            break
        data += more
    head, _, rest = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1]) if lines[0].startswith("HTTP/") else 0
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return status, headers, rest

