"""The replay engine: re-send a recorded session's requests to a sandbox and compare.

`scripts/replay.py` is its command line. The artifact is verified first
(recorder.forensics.verify.verify_file); a damaged or tampered one is refused unless forced.
Each request goes out with the method, path, query and body as recorded (a streamed
request body rebuilt from its http.chunk records). Headers that cannot or must not be
resent are dropped: hop-by-hop headers, content-length and host (the client library
sets them for the sandbox), content-encoding and accept-encoding (bodies are stored
decoded), and every header whose value is a credential marker or a masked value.
The caller adds the sandbox's own credential. Masked values inside a body or URL are
sent as the masked text, and the result says so.

Everything printed is masked first (recorder/masking/output.py): the sandbox's live
replies, and the recorded ones, with today's rules. A masked span of the recording
compared with the live reply matches whatever the reply holds there: it is counted as
masked (not compared), not reported as a difference.
"""
from __future__ import annotations

import json
import re
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from recorder.forensics.exchange import CREDENTIAL_PREFIX, MASK_PREFIX, Exchange, exchanges
from recorder.forensics.reader import SessionRead
from recorder.http import json_depth
from recorder.http.sse import is_sse, parse_sse

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
}
# Set by the client library for the sandbox, or wrong for a decoded body.
NOT_RESENT = {"content-length", "host", "content-encoding", "accept-encoding"}
_MASKED = re.compile(r"\[MASKED:[^\]\s]{1,80}\]")


class ReplayRefused(Exception):
    """The artifact failed verification and --force was not given."""


class ReplayUsageError(Exception):
    """A bad selection or option; the message says what to do."""


@dataclass
class PlannedRequest:
    exchange: Exchange
    method: str
    url: str
    headers: list[tuple[str, str]]
    body: bytes
    added: set[str] = field(default_factory=set)  # lower-case names the caller added (values never shown)
    dropped: list[str] = field(default_factory=list)  # "name (why)"
    masked: int = 0  # masked values sent as their masked text (body and URL)
    skip: str | None = None  # why it is not sent

    @property
    def request_line(self) -> str:
        return f"{self.method} {self.exchange.url}"


@dataclass
class ReplayResult:
    planned: PlannedRequest
    recorded_status: int | None
    recorded_size: int
    sandbox_status: int | None = None
    sandbox_size: int | None = None
    first_difference: str | None = None
    masked_spans: int = 0  # masked spans of the recording, not compared with the live reply
    error: str | None = None
    streamed: bool = False
    duration_ms: float | None = None
    ttfb_ms: float | None = None

    @property
    def sent(self) -> bool:
        return self.planned.skip is None and self.error is None


# -- verify -----------------------------------------------------------------------------


def check_artifact(path: Path, *, force: bool) -> tuple[SessionRead, list[str]]:
    """Verify the artifact. Returns (the read session, warnings). Raises ReplayRefused."""
    from recorder.forensics.verify import verify_file

    verdict = verify_file(path)
    lines = verdict.describe()
    if not verdict.ok:
        if not force:
            raise ReplayRefused(
                "refusing to replay: the artifact failed verification (damaged or tampered with), so it may not "
                "say what was really sent:\n  " + "\n  ".join(lines) + "\nre-run with --force to replay it anyway"
            )
        return verdict.read, ["--force: replaying an artifact that FAILED verification:", *lines]
    return verdict.read, [line for line in lines if "unsealed" in line]


# -- plan -------------------------------------------------------------------------------


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ReplayUsageError(f"--header {text!r}: give it as 'Name: value'")
    return name.strip(), value.strip()


def sandbox_url(recorded_url: str, target: str) -> str:
    """The recorded path and query on the target's scheme, host, port (and base path)."""
    t = urlsplit(target)
    if t.scheme not in ("http", "https") or not t.netloc:
        raise ReplayUsageError(f"--target {target!r}: give a URL like https://sandbox.example:8443")
    r = urlsplit(recorded_url)
    path = t.path.rstrip("/") + (r.path or "/")
    return f"{t.scheme}://{t.netloc}{path}" + (f"?{r.query}" if r.query else "")


def select(all_exchanges: list[Exchange], flows: list[str] | None, only: str | None) -> list[Exchange]:
    chosen = [ex for ex in all_exchanges if ex.kind == "http" and ex.request is not None]
    if flows:
        picked = []
        for want in flows:
            if want.isdigit():
                hits = [ex for ex in chosen if ex.index == int(want)]
            else:
                hits = [ex for ex in chosen if ex.flow == want] or [ex for ex in chosen if ex.flow.startswith(want)]
            if not hits:
                raise ReplayUsageError(f"--flow {want}: no such request in this session (wiretrail show lists them)")
            if len(hits) > 1:
                raise ReplayUsageError(f"--flow {want}: matches {len(hits)} flows; give more of the id")
            if hits[0] not in picked:
                picked.append(hits[0])
        chosen = sorted(picked, key=lambda ex: ex.index)
    if only:
        try:
            pattern = re.compile(only)
        except re.error as e:
            raise ReplayUsageError(f"--only {only!r}: not a regular expression ({e})") from e
        chosen = [ex for ex in chosen if pattern.search(f"{ex.method} {ex.url}")]
    return chosen


def plan_request(ex: Exchange, target: str, extra_headers: list[tuple[str, str]]) -> PlannedRequest:
    req = ex.request or {}
    headers: list[tuple[str, str]] = []
    dropped: list[str] = []
    added = {name.lower() for name, _ in extra_headers}
    for pair in req.get("headers") or ():
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            continue
        name, value = str(pair[0]), str(pair[1])
        low = name.lower()
        if low in added:
            continue  # the caller's value replaces it
        if low in HOP_BY_HOP or low in NOT_RESENT:
            continue  # not worth a word: about the recorded connection, or set by the client library
        elif CREDENTIAL_PREFIX in value:
            dropped.append(f"{name} (credential marker)")
        elif MASK_PREFIX in value:
            dropped.append(f"{name} (masked credential)")
        else:
            headers.append((name, value))
    headers.extend(extra_headers)
    body = ex.request_body
    masked = len(_MASKED.findall(body.decode("utf-8", errors="replace"))) + len(_MASKED.findall(ex.url or ""))
    planned = PlannedRequest(
        exchange=ex,
        method=str(req.get("method") or "GET"),
        url=sandbox_url(str(req.get("url") or ""), target),
        headers=headers,
        body=body,
        added=added,
        dropped=dropped,
        masked=masked,
    )
    if ex.request_truncated:
        planned.skip = "the request body was cut at record time (capture.max_body): not sent"
    return planned


def plan(read: SessionRead, target: str, *, flows=None, only=None, extra_headers=()) -> list[PlannedRequest]:
    chosen = select(exchanges(read.records), flows, only)
    return [plan_request(ex, target, list(extra_headers)) for ex in chosen]


# -- send -------------------------------------------------------------------------------


def make_client(*, insecure: bool = False, ca: str | None = None, timeout: float = 120.0):
    import httpx

    if insecure:
        verify: object = False
    elif ca:
        try:
            verify = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as e:
            raise ReplayUsageError(f"--ca {ca}: cannot load it as a PEM CA bundle ({e})") from e
    else:
        verify = True
    # trust_env=False: replay goes straight to the target, never through a proxy from the environment.
    return httpx.Client(verify=verify, trust_env=False, timeout=httpx.Timeout(timeout), follow_redirects=False)


def send(p: PlannedRequest, client, masker=None) -> ReplayResult:
    import httpx

    ex = p.exchange
    recorded = ex.response_body
    result = ReplayResult(p, ex.status, len(recorded), streamed=ex.response_streamed)
    if p.skip:
        return result
    start = time.monotonic()
    got = bytearray()
    try:
        with client.stream(p.method, p.url, headers=p.headers, content=p.body) as resp:
            result.sandbox_status = resp.status_code
            ctype = resp.headers.get("content-type")
            for data in resp.iter_bytes():  # read as it streams
                if result.ttfb_ms is None:
                    result.ttfb_ms = (time.monotonic() - start) * 1000
                got += data
    except httpx.HTTPError as e:
        result.error = f"{type(e).__name__}: {e}"
        return result
    result.duration_ms = (time.monotonic() - start) * 1000
    result.sandbox_size = len(got)
    masked = [0]
    result.first_difference = first_difference(
        ex.status, result.sandbox_status, recorded, bytes(got), ex.response_header("content-type"), ctype,
        masker=masker, masked=masked,
    )
    result.masked_spans = masked[0]
    return result


# -- compare ----------------------------------------------------------------------------

_SHOW = 60
_TAG = re.compile(r"\[(?:MASKED:[a-z0-9-]+:[0-9a-f]{8}|credential:[^\]\s]{1,100})\]")


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return text if len(text) <= _SHOW else text[:_SHOW] + "..."


def _wildcard(pattern: str, text: str) -> bool:
    """text matches pattern, each tag of pattern standing for any text."""
    parts = _TAG.split(pattern)
    if len(parts) == 1:
        return False
    rx = "(?s)" + ".*?".join(re.escape(p) for p in parts)
    return re.fullmatch(rx, text) is not None


def _masked_equal(a: str, b: str, masked: list[int]) -> bool:
    """a and b differ only where one of them holds a mask tag: count those spans."""
    if _wildcard(a, b) or _wildcard(b, a):
        masked[0] += max(len(_TAG.findall(a)), len(_TAG.findall(b)))
        return True
    return False


def _json_diff(a, b, path: str = "$", masked: list[int] | None = None) -> str | None:
    masked = [0] if masked is None else masked
    if isinstance(a, str) and isinstance(b, str) and a != b and _masked_equal(a, b, masked):
        return None
    if type(a) is not type(b):
        return f"{path}: {_short(a)} vs {_short(b)}"
    if isinstance(a, dict):
        for key in a:
            if key not in b:
                return f"{path}.{key}: only in the recording"
            d = _json_diff(a[key], b[key], f"{path}.{key}", masked)
            if d:
                return d
        for key in b:
            if key not in a:
                return f"{path}.{key}: only in the sandbox reply"
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b)):
            d = _json_diff(x, y, f"{path}[{i}]", masked)
            if d:
                return d
        if len(a) != len(b):
            return f"{path}: {len(a)} items vs {len(b)}"
        return None
    return None if a == b else f"{path}: {_short(a)} vs {_short(b)}"


def _bytes_diff(a: bytes, b: bytes, masked: list[int] | None = None) -> str | None:
    if a == b:
        return None
    if masked is not None and _masked_equal(a.decode("utf-8", "replace"), b.decode("utf-8", "replace"), masked):
        return None
    n = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    ra = a[n : n + 30].decode("utf-8", errors="replace")
    rb = b[n : n + 30].decode("utf-8", errors="replace")
    return f"byte {n}: {ra!r} vs {rb!r}"


def first_difference(rec_status, got_status, recorded: bytes, got: bytes, rec_ctype=None, got_ctype=None, *,
                     masker=None, masked: list[int] | None = None) -> str | None:
    """The first way the sandbox's reply differs from the recorded one, or None. Both are
    masked first (`masker`, default: the built-in rules); `masked` counts the recording's
    masked spans that were not compared."""
    if masker is None:
        from recorder.masking.output import output_masker

        masker = output_masker()[0]
    masked = [0] if masked is None else masked
    recorded = masker.mask_body(recorded, rec_ctype) if recorded else recorded
    got = masker.mask_body(got, got_ctype) if got else got
    if rec_status != got_status:
        return f"status {rec_status} vs {got_status}"
    if is_sse(rec_ctype, recorded) or is_sse(got_ctype, got):
        a, b = parse_sse(recorded), parse_sse(got)
        for i, (x, y) in enumerate(zip(a, b)):
            if x.event != y.event:
                return f"event {i + 1}: type {x.event!r} vs {y.event!r}"
            if x.data != y.data:
                jx, jy = x.json(), y.json()
                inner = (_json_diff(jx, jy, masked=masked) if jx is not None and jy is not None
                         else _bytes_diff(x.data.encode(), y.data.encode(), masked))
                if inner:
                    return f"event {i + 1}: {inner}"
        if len(a) != len(b):
            return f"{len(a)} events vs {len(b)}"
        if masked[0]:
            return None
        return _bytes_diff(recorded, got) and "same events, different framing"
    ja, jb = json_depth.loads(recorded), json_depth.loads(got)  # None: not JSON, or too deep to compare as JSON
    if ja is None or jb is None:
        return _bytes_diff(recorded, got, masked)
    return _json_diff(ja, jb, masked=masked) or (None if recorded == got or masked[0] else "same JSON, different bytes")


# -- report -----------------------------------------------------------------------------


def _size(n) -> str:
    return "-" if n is None else str(n)


def result_json(r: ReplayResult, *, sent: bool = True) -> dict:
    p = r.planned
    out = {
        "n": p.exchange.index,
        "flow": p.exchange.flow,
        "method": p.method,
        "recorded_url": p.exchange.url,
        "url": p.url,
        "headers": [[k, "[sandbox header]" if k.lower() in p.added else v] for k, v in p.headers],
        "dropped_headers": p.dropped,
        "body_size": len(p.body),
        "masked_values_sent": p.masked,
        "skipped": p.skip,
        "recorded": {"status": r.recorded_status, "size": r.recorded_size, "streamed": r.streamed},
    }
    if sent:
        out["sandbox"] = {
            "status": r.sandbox_status,
            "size": r.sandbox_size,
            "duration_ms": r.duration_ms,
            "ttfb_ms": r.ttfb_ms,
            "error": r.error,
        }
        out["first_difference"] = r.first_difference
        out["masked_spans"] = r.masked_spans
    return out


def table(results: list[ReplayResult]) -> list[str]:
    head = ("#", "REQUEST", "STATUS rec/sandbox", "SIZE rec/sandbox", "FIRST DIFFERENCE")
    rows = []
    for r in results:
        p = r.planned
        if p.skip:
            diff = "skipped: " + p.skip
        elif r.error:
            diff = "not sent: " + r.error
        elif r.first_difference:
            diff = r.first_difference
        elif r.masked_spans:
            diff = f"none; masked: {r.masked_spans} masked span(s) of the recording not compared"
        else:
            diff = "none"
        rows.append(
            (
                str(p.exchange.index),
                p.request_line,
                f"{_size(r.recorded_status)} / {_size(r.sandbox_status)}",
                f"{r.recorded_size} / {_size(r.sandbox_size)}",
                diff,
            )
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h) for i, h in enumerate(head[:-1])]

    def fmt(cells):
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths)) + "  " + cells[-1]

    return [fmt(head)] + [fmt(row) for row in rows]


def notes(planned: list[PlannedRequest]) -> list[str]:
    out = []
    for p in planned:
        if p.masked:
            out.append(
                f"[{p.exchange.index}] {p.masked} masked value(s) in the recorded request were sent as the masked "
                "text ([MASKED:...]); the sandbox saw the tag, not the secret"
            )
        if p.dropped:
            out.append(f"[{p.exchange.index}] not resent: " + ", ".join(p.dropped))
    return out


def dry_run_lines(planned: list[PlannedRequest], masker=None) -> list[str]:
    """What would be sent, masked with today's rules (the recording may predate one)."""
    if masker is None:
        from recorder.masking.output import output_masker

        masker = output_masker()[0]
    out = []
    for p in planned:
        out.append(masker.mask_text(f"[{p.exchange.index}] {p.method} {p.url}") + (f"   SKIPPED: {p.skip}" if p.skip else ""))
        for k, v in p.headers:
            out.append(masker.mask_text(f"    {k}: {'[sandbox header, not shown]' if k.lower() in p.added else v}"))
        preview = masker.mask_body(p.body)[:200].decode("utf-8", errors="replace")
        if p.body:
            out.append(f"    body {len(p.body)} B: {preview}{'...' if len(p.body) > 200 else ''}")
    return out
