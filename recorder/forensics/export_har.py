"""A session as HAR 1.2 (http://www.softwareishard.com/blog/har-12-spec/), which browser
devtools and many HTTP tools open.

Bodies are stored decoded, as HAR's content.text expects; binary bodies are base64
(`"encoding": "base64"`). What HAR has no field for (the session, the flow id, the
connection name, an error) goes into `comment` and `_wiretrail` fields.
"""
from __future__ import annotations

import base64
import time
from urllib.parse import parse_qsl, urlsplit

from recorder import __version__
from recorder.forensics.exchange import Exchange, exchanges
from recorder.forensics.reader import SessionRead


def _iso(ts: float | None) -> str:
    ts = ts or 0.0
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def _headers(pairs) -> list[dict]:
    return [
        {"name": str(p[0]), "value": str(p[1])}
        for p in pairs or ()
        if isinstance(p, (list, tuple)) and len(p) == 2
    ]


def _content(data: bytes, mime: str) -> dict:
    out: dict = {"size": len(data), "mimeType": mime}
    try:
        out["text"] = data.decode("utf-8")
    except UnicodeDecodeError:
        out["text"] = base64.b64encode(data).decode("ascii")
        out["encoding"] = "base64"
    return out


def entry(read: SessionRead, ex: Exchange) -> dict:
    req = ex.request or {}
    url = str(req.get("url") or "")
    version = str(req.get("http_version") or "HTTP/1.1")
    body = ex.request_body
    request: dict = {
        "method": str(req.get("method") or "GET"),
        "url": url,
        "httpVersion": version,
        "cookies": [],
        "headers": _headers(req.get("headers")),
        "queryString": [{"name": k, "value": v} for k, v in parse_qsl(urlsplit(url).query, keep_blank_values=True)],
        "headersSize": -1,
        "bodySize": len(body),
    }
    if body or ex.request_streamed:
        mime = ex.request_header("content-type") or "application/octet-stream"
        content = _content(body, mime)
        request["postData"] = {"mimeType": mime, "params": [], "text": content["text"]}
        if content.get("encoding"):
            request["postData"]["comment"] = "base64: the body is not UTF-8"
    resp = ex.response or {}
    rbody = ex.response_body
    response = {
        "status": int(resp.get("status") or 0),
        "statusText": str(resp.get("reason") or ""),
        "httpVersion": str(resp.get("http_version") or version),
        "cookies": [],
        "headers": _headers(resp.get("headers")),
        "content": _content(rbody, ex.response_header("content-type") or "application/octet-stream"),
        "redirectURL": ex.response_header("location") or "",
        "headersSize": -1,
        "bodySize": len(rbody) if ex.response is not None else -1,
    }
    duration = ex.duration_ms
    ttfb = ex.ttfb_ms
    wait = ttfb if ttfb is not None else (duration or 0.0)
    timings = {"send": 0, "wait": round(wait, 3), "receive": round(max(0.0, (duration or wait) - wait), 3)}
    comments = []
    for e in ex.errors:
        comments.append(f"error ({e.get('phase')}): {e.get('message')}")
    if ex.request_truncated or ex.response_truncated:
        comments.append("a body was cut at record time (capture.max_body)")
    return {
        "startedDateTime": _iso(ex.ts),
        "time": round(duration if duration is not None else wait, 3),
        "request": request,
        "response": response,
        "cache": {},
        "timings": timings,
        "connection": str(req.get("conn") or ""),
        "comment": "; ".join(comments),
        "_wiretrail": {"flow": ex.flow, "connection": req.get("connection"), "streamed": ex.response_streamed},
    }


def export_har(read: SessionRead) -> dict:
    opened = read.open_record or {}
    ident = opened.get("identity") or {}
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "wiretrail", "version": __version__},
            "pages": [],
            "entries": [entry(read, ex) for ex in exchanges(read.records) if ex.kind == "http" and ex.request is not None],
            "comment": f"wiretrail session {read.session_id} of {ident.get('sub')} (state {read.state})",
        }
    }
