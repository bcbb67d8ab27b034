"""A session as a mitmproxy flow file (`mitmproxy -r FILE`, `mitmweb -r FILE`).

recorder/ does not import mitmproxy, so the file is written here: one tnetstring per
flow (mitmproxy/io/tnetstring.py), each the `get_state()` of an HTTPFlow in flow format
version 21 (mitmproxy 11.0.x, mitmproxy/version.py FLOW_FORMAT_VERSION). mitmproxy's
FlowReader migrates older versions forward, so a newer mitmproxy opens it too.

Bodies are stored decoded, so a recorded Content-Encoding header is left out (mitmproxy
would try to decode the body again); the flow's comment says so.
"""
from __future__ import annotations

import uuid
from pathlib import Path
from urllib.parse import urlsplit

from recorder.forensics.exchange import Exchange, exchanges
from recorder.forensics.reader import SessionRead

FLOW_FORMAT_VERSION = 21
_NS = uuid.UUID("5b0f1a6e-8f55-4f0e-9a59-7a1c0c2f7e11")  # stable connection ids per session


# -- tnetstring (the subset mitmproxy's reader needs) -----------------------------------


def tnetstring(value) -> bytes:
    if value is None:
        return b"0:~"
    if value is True:
        return b"4:true!"
    if value is False:
        return b"5:false!"
    if isinstance(value, int):
        data, tag = str(value).encode(), b"#"
    elif isinstance(value, float):
        data, tag = repr(value).encode(), b"^"
    elif isinstance(value, bytes):
        data, tag = value, b","
    elif isinstance(value, str):
        data, tag = value.encode("utf-8"), b";"
    elif isinstance(value, (list, tuple)):
        data, tag = b"".join(tnetstring(v) for v in value), b"]"
    elif isinstance(value, dict):
        data, tag = b"".join(tnetstring(k) + tnetstring(v) for k, v in value.items()), b"}"
    else:
        raise TypeError(f"cannot write {type(value).__name__} as a tnetstring")
    return str(len(data)).encode() + b":" + data + tag


# -- flow state ---------------------------------------------------------------------------


def _headers(pairs, drop=()) -> list:
    out = []
    for pair in pairs or ():
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and str(pair[0]).lower() not in drop:
            out.append([str(pair[0]).encode("utf-8", "surrogateescape"), str(pair[1]).encode("utf-8", "surrogateescape")])
    return out


def _num(v, default=None):
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default


def _conn_state(conn_id: str, *, tls: bool, sni: str | None) -> dict:
    """The fields mitmproxy's client and server connection states share (no TLS details recorded)."""
    return {
        "id": conn_id,
        "transport_protocol": "tcp",
        "error": None,
        "tls": tls,
        "certificate_list": [],
        "alpn": None,
        "alpn_offers": [],
        "cipher": None,
        "cipher_list": [],
        "tls_version": None,
        "sni": sni,
        "timestamp_end": None,
        "timestamp_tls_setup": None,
    }


def _client_conn(read: SessionRead, ex: Exchange, start: float) -> dict:
    client = (read.open_record or {}).get("client") or {}
    conn = (ex.request or {}).get("conn")
    return {
        **_conn_state(str(uuid.uuid5(_NS, f"{read.session_id}:client:{conn}")), tls=False, sni=None),
        "peername": [str(client.get("ip") or "0.0.0.0"), int(client.get("port") or 0)],
        "sockname": ["", 0],
        "mitmcert": None,
        "proxy_mode": "regular",
        "timestamp_start": start,
    }


def _server_conn(read: SessionRead, ex: Exchange, host: str, port: int, tls: bool) -> dict:
    return {
        **_conn_state(str(uuid.uuid5(_NS, f"{read.session_id}:server:{ex.flow}")), tls=tls, sni=host if tls else None),
        "peername": None,
        "sockname": None,
        "timestamp_start": None,
        "timestamp_tcp_setup": None,
        "address": [host, port],
        "via": None,
    }


def flow_state(read: SessionRead, ex: Exchange) -> dict:
    req = ex.request or {}
    url = urlsplit(str(req.get("url") or ""))
    scheme = url.scheme or "http"
    host = url.hostname or ""
    port = url.port or (443 if scheme == "https" else 80)
    start = ex.ts or 0.0
    req_end = _num((ex.request_chunks[-1] if ex.request_chunks else req).get("ts"), start)
    end = _num((ex.end or {}).get("ts"), req_end)
    comments = []
    if ex.request_truncated or ex.response_truncated:
        comments.append("wiretrail: a body was cut at record time (capture.max_body)")
    request = {
        "host": host,
        "port": port,
        "method": str(req.get("method") or "GET").encode(),
        "scheme": scheme.encode(),
        "authority": b"",
        "path": ((url.path or "/") + (f"?{url.query}" if url.query else "")).encode("utf-8", "surrogateescape"),
        "http_version": str(req.get("http_version") or "HTTP/1.1").encode(),
        "headers": _headers(req.get("headers"), drop=("content-encoding",)),
        "content": ex.request_body,
        "trailers": None,
        "timestamp_start": start,
        "timestamp_end": req_end,
    }
    response = None
    if ex.response is not None:
        resp = ex.response
        if any(str(h[0]).lower() == "content-encoding" for h in resp.get("headers") or () if isinstance(h, list) and h):
            comments.append("wiretrail: the response body is stored decoded; its Content-Encoding header is left out")
        first = _num(resp.get("ts"), start)
        response = {
            "http_version": str(resp.get("http_version") or req.get("http_version") or "HTTP/1.1").encode(),
            "status_code": int(resp.get("status") or 0),
            "reason": str(resp.get("reason") or "").encode("utf-8", "surrogateescape"),
            "headers": _headers(resp.get("headers"), drop=("content-encoding",)),
            "content": ex.response_body,
            "trailers": None,
            "timestamp_start": first,
            "timestamp_end": max(first, end),
        }
    error = None
    if ex.errors:
        e = ex.errors[0]
        error = {"msg": f"{e.get('phase')}: {e.get('message')}", "timestamp": _num(e.get("ts"), end)}
    return {
        "version": FLOW_FORMAT_VERSION,
        "type": "http",
        "id": ex.flow,
        "error": error,
        "client_conn": _client_conn(read, ex, start),
        "server_conn": _server_conn(read, ex, host, port, scheme == "https"),
        "intercepted": False,
        "is_replay": None,
        "marked": "",
        "metadata": {"wiretrail": {"session": read.session_id, "flow": ex.flow, "connection": req.get("connection")}},
        "comment": "\n".join(comments),
        "timestamp_created": start,
        "request": request,
        "response": response,
        "websocket": None,
        "backup": None,
    }


def export_mitm(read: SessionRead, out: Path) -> int:
    """Write every recorded HTTP exchange as a flow. Returns how many."""
    n = 0
    with open(out, "wb") as f:
        for ex in exchanges(read.records):
            if ex.kind == "http" and ex.request is not None:
                f.write(tnetstring(flow_state(read, ex)))
                n += 1
    return n
