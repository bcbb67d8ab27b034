"""A fake LLM upstream for end-to-end tests: real TLS, HTTP/1.1, 127.0.0.1 only.

One thread accepts, one thread serves each connection (keep-alive), so a slow stream
never holds up another request. Every request is kept as an `Exchange`: what arrived
(method, path, headers, body) and what was sent back (the body before any
Content-Encoding, and when each streamed event left). Event content is deterministic,
so a test can compare what the client got and what the artifact holds byte for byte.

Routes (any method unless noted):
  POST <path in models>      a scripted model's answer (FakeUpstream(models={path: model.answer})): SSE
                             events 10 ms apart (chunked), or JSON; checked before the routes below
  POST /v1/chat/completions  OpenAI JSON, or with "stream": true OpenAI SSE (chunked); a body field
                             "x_reply_text" makes the stream spell that text, one character per event
  POST /v1/messages          Anthropic JSON, or with "stream": true Anthropic SSE (chunked)
  POST /echo                 the request body back, with Content-Length
  /gzip                      gzip-encoded JSON (Content-Encoding: gzip, Content-Length)
  /gzip-sse                  gzip-encoded SSE, one Z_SYNC_FLUSH per event, chunked
  /reset-mid-stream          SSE headers and two events, then a TCP reset (SO_LINGER 0)
  /slow-sse?n=&delay=        n SSE events `delay` seconds apart, chunked
  /never                     reads the request and never answers (until the connection closes)
  /nested?depth=             a JSON reply nested `depth` levels deep (default 300), a secret at the bottom
  /nested-sse?depth=         SSE whose third event is such a JSON document
  POST /sse-script           the SSE stream the JSON body describes: {"events": [[name or null, data],
                             ...], "delay": s, "crlf": bool, "hold": s (keep the stream open after the
                             last event), "content_type": ...}; one event per HTTP chunk
  POST /encoded?ce=CODINGS   the request body back in the Content-Encoding CODINGS ("gzip, br",
                             "raw-deflate" = deflate without the zlib header; any other name is
                             only put in the header); &stream=1: chunked, in 64-byte pieces

Streams take their event count and spacing from the upstream's `sse_events` and
`sse_delay`, overridable per request with the headers x-upstream-events and
x-upstream-delay.
"""
from __future__ import annotations

import gzip
import json
import socket
import ssl
import struct
import sys
import threading
import time
import zlib
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from tests.support.listener import stop_listening
from tests.support.tls import TestCA

# Deterministic stream content; a multi-byte character in it checks that text split
# across chunks is recorded intact.
TOKENS = ["Hello", " wörld", ",", " this", " is", " the", " fake", " upstream", " ✓", " done"]
CREATED = 1_700_000_000


def token(i: int) -> str:
    return TOKENS[i % len(TOKENS)]


def stream_text(n: int) -> str:
    """The assistant text of an n-event OpenAI or Anthropic stream."""
    return "".join(token(i) for i in range(n))


JSON_REPLY_TEXT = "Hello from the fake upstream. Ünïcödé ✓"


@dataclass
class Exchange:
    """One request the upstream received and what it sent back."""

    method: str
    target: str
    path: str
    query: dict
    headers: list  # [(name, value), ...] as received
    body: bytes = b""  # as much of the body as arrived
    started_at: float = 0.0  # request headers read
    received_at: float = 0.0  # request body read: the upstream has the whole request
    trailers: list = field(default_factory=list)  # [(name, value), ...] of a chunked body's trailer section
    status: int | None = None
    response_headers: list = field(default_factory=list)
    response_body: bytes = b""  # what was sent, before Content-Encoding
    event_times: list = field(default_factory=list)  # when each streamed event was handed to the socket
    complete: bool = False  # the whole response was sent
    error: str | None = None  # why sending stopped early
    done: threading.Event = field(default_factory=threading.Event, repr=False)  # the upstream is through with it

    def header(self, name: str) -> str | None:
        name = name.lower()
        for k, v in self.headers:
            if k.lower() == name:
                return v
        return None

    @property
    def test_id(self) -> str | None:
        return self.header("x-test-id")


class _ClientGone(Exception):
    pass


class _Responder:
    """Writes one response and records what left in the exchange."""

    def __init__(self, sock: ssl.SSLSocket, ex: Exchange):
        self.sock = sock
        self.ex = ex

    def _send(self, data: bytes) -> None:
        try:
            self.sock.sendall(data)
        except (OSError, ssl.SSLError) as e:
            self.ex.error = f"client gone: {e!r}"
            raise _ClientGone from e

    def _head(self, status: int, headers: list) -> None:
        self.ex.status = status
        self.ex.response_headers = headers
        reason = {200: "OK", 400: "Bad Request", 404: "Not Found"}.get(status, "OK")
        lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
        self._send(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

    def full(self, status: int, body: bytes, content_type: str, *, wire: bytes | None = None, extra=()) -> None:
        """A Content-Length response. `wire` is the encoded body when it differs from `body`."""
        wire = body if wire is None else wire
        headers = [("Content-Type", content_type), ("Content-Length", str(len(wire))), *extra]
        self._head(status, headers)
        self._send(wire)
        self.ex.response_body = body
        self.ex.complete = True

    def stream_head(self, content_type: str = "text/event-stream", extra=()) -> None:
        self._head(
            200,
            [("Content-Type", content_type), ("Cache-Control", "no-cache"), ("Transfer-Encoding", "chunked"), *extra],
        )

    def chunk(self, plain: bytes, wire: bytes | None = None) -> None:
        """One event as one HTTP chunk."""
        wire = plain if wire is None else wire
        if wire:
            self._send(b"%x\r\n%s\r\n" % (len(wire), wire))
        self.ex.response_body += plain
        self.ex.event_times.append(time.time())

    def events(self, events: list[bytes], delay: float, encode=None) -> None:
        for i, ev in enumerate(events):
            if i:
                time.sleep(delay)
            self.chunk(ev, encode(ev) if encode else None)

    def end_chunks(self, trailer_wire: bytes = b"") -> None:
        if trailer_wire:
            self._send(b"%x\r\n%s\r\n" % (len(trailer_wire), trailer_wire))
        self._send(b"0\r\n\r\n")
        self.ex.complete = True


def sse(data: dict | str, event: str | None = None) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode("utf-8")


def openai_events(n: int, model: str = "gpt-test", pieces: list[str] | None = None) -> list[bytes]:
    def chunk(delta: dict, finish):
        return {
            "id": "chatcmpl-wiretrail-test",
            "object": "chat.completion.chunk",
            "created": CREATED,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    events = []
    pieces = pieces if pieces is not None else [token(i) for i in range(n)]
    for i, piece in enumerate(pieces):
        delta = {"role": "assistant", "content": piece} if i == 0 else {"content": piece}
        events.append(sse(chunk(delta, None)))
    events.append(sse(chunk({}, "stop")))
    events.append(sse("[DONE]"))
    return events


def openai_json(model: str = "gpt-test") -> dict:
    return {
        "id": "chatcmpl-wiretrail-test",
        "object": "chat.completion",
        "created": CREATED,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": JSON_REPLY_TEXT, "refusal": None},
                "finish_reason": "stop",
                "logprobs": None,
            }
        ],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    }


def anthropic_json(model: str = "claude-test") -> dict:
    return {
        "id": "msg_wiretrail_test",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [{"type": "text", "text": JSON_REPLY_TEXT}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 5, "output_tokens": 7},
    }


def anthropic_events(n: int, model: str = "claude-test", pieces: list[str] | None = None) -> list[bytes]:
    message = dict(anthropic_json(model), content=[], stop_reason=None, usage={"input_tokens": 5, "output_tokens": 0})
    events = [
        sse({"type": "message_start", "message": message}, "message_start"),
        sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}, "content_block_start"),
    ]
    pieces = pieces if pieces is not None else [token(i) for i in range(n)]
    for piece in pieces:
        events.append(
            sse(
                {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": piece}},
                "content_block_delta",
            )
        )
    events += [
        sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
        sse(
            {
                "type": "message_delta",
                "delta": {"stop_reason": "end_turn", "stop_sequence": None},
                "usage": {"output_tokens": n},
            },
            "message_delta",
        ),
        sse({"type": "message_stop"}, "message_stop"),
    ]
    return events


def slow_events(n: int) -> list[bytes]:
    return [sse({"i": i, "text": token(i)}) for i in range(n)]


NESTED_SECRET = "sk-proj-" + "N3st3dS3cr3tValue0123456789abcdefXYZW"


def nested_json(depth: int, secret: str = NESTED_SECRET) -> bytes:
    """`depth` levels of {"a": ...} with {"api_key": secret} at the bottom: too deep to mask
    value by value, and a rule keyword in it."""
    return b'{"a": ' * depth + json.dumps({"api_key": secret}).encode() + b"}" * depth


def _encode(name: str, data: bytes) -> bytes:
    if name == "gzip":
        return gzip.compress(data)
    if name == "deflate":
        return zlib.compress(data)
    if name == "raw-deflate":
        co = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        return co.compress(data) + co.flush()
    if name == "br":
        import brotli

        return brotli.compress(data)
    if name == "zstd":
        import zstandard

        return zstandard.ZstdCompressor().compress(data)
    return data  # a coding the upstream cannot apply (aes128gcm, x-custom): only named in the header


GZIP_JSON = json.dumps({"compressed": True, "text": JSON_REPLY_TEXT, "items": list(range(50))}).encode()


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAS_IPV6_LOOPBACK = _ipv6_loopback()


def _listen_ipv6_loopback(port: int) -> socket.socket | None:
    if not HAS_IPV6_LOOPBACK:
        return None
    s6 = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    try:
        s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s6.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s6.bind(("::1", port))
        s6.listen(128)
        return s6
    except OSError:
        s6.close()
        return None


class FakeUpstream:
    def __init__(self, ca: TestCA, *, sse_events: int = 5, sse_delay: float = 0.2, models: dict | None = None):
        self.ca = ca
        # path -> a scripted model's answer(payload): ("sse", [event bytes]) or ("json", dict)
        # (tests/support/anthropic_fake.py, openai_fake.py); served before the built-in routes.
        self.models = dict(models or {})
        self.sse_events = sse_events
        self.sse_delay = sse_delay
        self._ctx = ca.server_context()
        self._lock = threading.Lock()
        self._exchanges: list[Exchange] = []
        self._started: list[Exchange] = []  # every request whose headers arrived, complete or not
        self._conns: set[socket.socket] = set()
        self._listener: socket.socket | None = None
        self._listener6: socket.socket | None = None  # the same port on ::1, where IPv6 is up
        self._stopped = threading.Event()
        self.port = 0
        # Called on the connection's thread with the Exchange as soon as a request's
        # headers arrived, before its body is read and before any answer.
        self.on_request_headers = None
        # path -> handler(responder, exchange) returning "keep-alive" or "reset": routes a test adds
        self.routes: dict = {}

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> "FakeUpstream":
        for _attempt in range(20):  # a port free on 127.0.0.1 may be taken on ::1
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
            s6 = _listen_ipv6_loopback(port)
            if s6 is not None or not HAS_IPV6_LOOPBACK:
                break
            s.close()
        s.listen(128)
        self._listener, self._listener6 = s, s6
        self.port = port
        for listener in (s, s6):
            if listener is not None:
                threading.Thread(target=self._accept_loop, args=(listener,), name="fake-upstream-accept",
                                 daemon=True).start()
        return self

    def stop(self) -> None:
        self._stopped.set()
        for listener in (self._listener, self._listener6):
            if listener is not None:
                stop_listening(listener)
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            try:
                c.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                c.close()
            except OSError:
                pass

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    # -- what the tests inspect -----------------------------------------------------------

    @property
    def exchanges(self) -> list[Exchange]:
        with self._lock:
            return list(self._exchanges)

    def received(self, test_id: str) -> list[Exchange]:
        """The exchanges whose request carried `x-test-id: <test_id>`."""
        return [ex for ex in self.exchanges if ex.test_id == test_id]

    def started(self, test_id: str) -> list[Exchange]:
        """Requests with `x-test-id: <test_id>` whose headers arrived, complete or not: one
        whose body never ended has `received_at` 0 and the part of the body that came."""
        with self._lock:
            return [ex for ex in self._started if ex.test_id == test_id]

    def exchange(self, test_id: str, timeout: float = 10.0) -> Exchange:
        """The one exchange with `x-test-id: <test_id>`, once the upstream is through with it
        (the response sent, or sending it failed). The client can finish reading before
        the upstream's thread has noted the last bytes it sent, hence the wait."""
        assert self.wait_for(lambda: len(self.received(test_id)) >= 1, timeout), f"the upstream never got {test_id}"
        got = self.received(test_id)
        assert len(got) == 1, f"the upstream received {test_id} {len(got)} times"
        assert got[0].done.wait(timeout), f"the upstream did not finish answering {test_id} within {timeout} s"
        return got[0]

    def wait_for(self, predicate, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return "keep-alive"
            time.sleep(0.02)
        return predicate()

    # -- serving ------------------------------------------------------------------------

    def _note_dropped(self, stage: str, e: BaseException) -> None:
        # A connection the upstream drops shows as a 502 in a test; say why on stderr, which
        # pytest prints with the failure (a rare drop under heavy load was once seen).
        if not self._stopped.is_set():
            print(f"fake upstream: connection dropped during {stage}: {type(e).__name__}: {e}",
                  file=sys.stderr, flush=True)

    def _accept_loop(self, listener: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), name="fake-upstream-conn", daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(60)
        try:
            sock = self._ctx.wrap_socket(raw, server_side=True)
        except (OSError, ssl.SSLError) as e:
            self._note_dropped("TLS handshake", e)
            raw.close()
            return
        with self._lock:
            self._conns.add(sock)
        rfile = sock.makefile("rb")
        reset = False
        ex = None
        try:
            while not self._stopped.is_set():
                ex = self._read_request(sock, rfile)
                if ex is None:
                    break
                with self._lock:
                    self._exchanges.append(ex)
                outcome = self._dispatch(sock, ex)
                ex.done.set()
                if outcome == "reset":
                    reset = True
                    break
                if outcome != "keep-alive" or (ex.header("connection") or "").lower() == "close":
                    break
        except (_ClientGone, OSError, ssl.SSLError, ValueError) as e:
            if not isinstance(e, _ClientGone):
                self._note_dropped("serving", e)
        finally:
            if ex is not None:
                ex.done.set()
            with self._lock:
                self._conns.discard(sock)
            if reset:
                # SO_LINGER 0: close() sends RST instead of FIN.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            rfile.close()  # the fd closes only when no file object refers to it
            try:
                sock.close()
            except OSError:
                pass

    def _read_request(self, sock: ssl.SSLSocket, rfile) -> Exchange | None:
        line = rfile.readline(65537)
        while line in (b"\r\n", b"\n"):
            line = rfile.readline(65537)
        if not line:
            return None
        method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
        headers = []
        while True:
            h = rfile.readline(65537)
            if h in (b"\r\n", b"\n", b""):
                break
            name, _, value = h.decode("latin-1").rstrip("\r\n").partition(":")
            headers.append((name.strip(), value.strip()))
        parts = urlsplit(target)
        ex = Exchange(
            method=method,
            target=target,
            path=parts.path,
            query={k: v[-1] for k, v in parse_qs(parts.query).items()},
            headers=headers,
            started_at=time.time(),
        )
        ex.body = bytearray()  # grows as the body arrives; bytes once read (or the connection ends)
        with self._lock:
            self._started.append(ex)
        try:
            self._read_body(sock, rfile, ex)
        finally:
            ex.body = bytes(ex.body)
        ex.received_at = time.time()
        return ex

    def _read_body(self, sock, rfile, ex: Exchange) -> None:
        if self.on_request_headers is not None:
            self.on_request_headers(ex)
        if (ex.header("expect") or "").lower() == "100-continue":
            sock.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        if "chunked" in (ex.header("transfer-encoding") or "").lower():
            while True:
                size_line = rfile.readline(65537)
                if not size_line:
                    raise ValueError("request body ended inside a chunk")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while (line := rfile.readline(65537)) not in (b"\r\n", b"\n", b""):
                        name, _, value = line.decode("latin-1").rstrip("\r\n").partition(":")
                        ex.trailers.append((name.strip(), value.strip()))
                    if not line:
                        raise ValueError("request body ended inside its trailer section")
                    break
                while size:
                    data = rfile.read1(size)
                    if not data:
                        raise ValueError("request body ended inside a chunk")
                    ex.body += data
                    size -= len(data)
                rfile.readline(65537)
        elif ex.header("content-length"):
            n = int(ex.header("content-length"))
            while len(ex.body) < n:
                data = rfile.read1(n - len(ex.body))
                if not data:
                    raise ValueError("request body shorter than its Content-Length")
                ex.body += data

    def _stream_params(self, ex: Exchange) -> tuple[int, float]:
        n = int(ex.query.get("n") or ex.header("x-upstream-events") or self.sse_events)
        delay = float(ex.query.get("delay") or ex.header("x-upstream-delay") or self.sse_delay)
        return n, delay

    def _dispatch(self, sock: ssl.SSLSocket, ex: Exchange) -> str:
        """Answer one request: "keep-alive", or "reset" to reset the connection."""
        r = _Responder(sock, ex)
        if ex.path in self.routes:
            return self.routes[ex.path](r, ex)
        n, delay = self._stream_params(ex)
        if ex.path in self.models and ex.method == "POST":
            kind, answer = self.models[ex.path](json.loads(ex.body))
            if kind == "sse":
                r.stream_head()
                r.events(answer, 0.01)
                r.end_chunks()
            else:
                r.full(200, json.dumps(answer).encode(), "application/json")
            return "keep-alive"
        if ex.path in ("/v1/chat/completions", "/v1/messages"):
            try:
                payload = json.loads(ex.body)
                if not isinstance(payload, dict):
                    raise ValueError("not an object")
            except ValueError as e:
                err = {"error": {"message": f"malformed JSON body: {e}", "type": "invalid_request_error"}}
                r.full(400, json.dumps(err).encode(), "application/json")
                return "keep-alive"
            openai = ex.path == "/v1/chat/completions"
            if payload.get("stream"):
                model = payload.get("model", "gpt-test" if openai else "claude-test")
                # A test can have the reply spell out a text one character per event.
                pieces = list(payload["x_reply_text"]) if isinstance(payload.get("x_reply_text"), str) else None
                events = openai_events(n, model, pieces) if openai else anthropic_events(n, model, pieces)
                r.stream_head()
                r.events(events, delay)
                r.end_chunks()
            else:
                body = openai_json(payload.get("model", "gpt-test")) if openai else anthropic_json(
                    payload.get("model", "claude-test")
                )
                r.full(200, json.dumps(body, ensure_ascii=False).encode(), "application/json")
            return "keep-alive"
        if ex.path == "/echo":
            r.full(200, ex.body, ex.header("content-type") or "application/octet-stream")
            return "keep-alive"
        if ex.path == "/gzip":
            r.full(200, GZIP_JSON, "application/json", wire=gzip.compress(GZIP_JSON), extra=[("Content-Encoding", "gzip")])
            return "keep-alive"
        if ex.path == "/gzip-sse":
            co = zlib.compressobj(wbits=31)
            r.stream_head(extra=[("Content-Encoding", "gzip")])
            r.events(slow_events(n), delay, encode=lambda ev: co.compress(ev) + co.flush(zlib.Z_SYNC_FLUSH))
            r.end_chunks(co.flush())
            return "keep-alive"
        if ex.path == "/reset-mid-stream":
            r.stream_head()
            r.events(slow_events(2), 0.05)
            time.sleep(0.3)  # let the gateway read and forward both events before the reset
            ex.error = "reset by design"
            return "reset"
        if ex.path == "/never":
            try:  # never answers: waits until the gateway gives up and closes the connection
                while sock.recv(65536):
                    pass
            except (OSError, ssl.SSLError):
                pass
            ex.error = "closed by the gateway"
            return "closed"
        if ex.path == "/nested":
            r.full(200, nested_json(int(ex.query.get("depth", 300))), "application/json")
            return "keep-alive"
        if ex.path == "/nested-sse":
            r.stream_head()
            deep = b"data: " + nested_json(int(ex.query.get("depth", 300))) + b"\n\n"
            r.events(slow_events(2) + [deep] + slow_events(2), 0.02)
            r.end_chunks()
            return "keep-alive"
        if ex.path == "/sse-script":
            script = json.loads(ex.body)
            eol = "\r\n" if script.get("crlf") else "\n"
            events = []
            for name, data in script["events"]:
                head = f"event: {name}{eol}" if name else ""
                lines = "".join(f"data: {line}{eol}" for line in data.split("\n"))
                events.append((head + lines + eol).encode("utf-8"))
            r.stream_head(script.get("content_type", "text/event-stream"))
            r.events(events, float(script.get("delay", 0.05)))
            time.sleep(float(script.get("hold", 0)))
            r.end_chunks()
            return "keep-alive"
        if ex.path == "/encoded":
            names = [c.strip() for c in ex.query.get("ce", "gzip").split(",")]
            wire = ex.body
            for name in names:
                wire = _encode(name, wire)
            header = ", ".join("deflate" if n == "raw-deflate" else n for n in names)
            ctype = ex.header("content-type") or "application/json"
            if ex.query.get("stream"):
                r.stream_head(ctype, extra=[("Content-Encoding", header)])
                for i in range(0, len(wire), 64):
                    r.chunk(b"", wire[i:i + 64])
                r.ex.response_body = ex.body
                r.end_chunks()
            else:
                r.full(200, ex.body, ctype, wire=wire, extra=[("Content-Encoding", header)])
            return "keep-alive"
        if ex.path == "/slow-sse":
            r.stream_head()
            r.events(slow_events(n), delay)
            r.end_chunks()
            return "keep-alive"
        r.full(404, b'{"error": {"message": "no such route"}}', "application/json")
        return "keep-alive"
