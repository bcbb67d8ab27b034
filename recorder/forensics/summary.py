"""What `wiretrail ls`, the header of `wiretrail show` and the review page's list say about a
session: its summary (who, when, how much) and where its requests went."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from recorder.forensics.reader import SessionRead, flow_records
from recorder.policy.destinations import canonical_host

EXCHANGE_TYPES = ("http.request", "pg.query", "pg.execute", "pg.function")  # a database statement is an exchange


@dataclass(frozen=True)
class SessionSummary:
    """What `wiretrail ls` and the header of `wiretrail show` say about a session."""

    session_id: str | None
    path: Path
    state: str
    start: float | None  # Unix seconds (session.open ts)
    end: float | None  # Unix seconds of the last readable record
    duration: float | None  # seconds
    sub: str | None
    authenticated: bool | None
    client: str | None  # "ip:port"
    client_ip: str | None
    exchanges: int  # http.request records and database statements (EXCHANGE_TYPES)
    bytes: int  # body bytes per flow: http.end sizes, else the recorded body sizes
    records: int
    agent: str | None = None  # session.open's agent.name: the agent run the client named
    run: str | None = None  # session.open's agent.run


def _number(value) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _flow_bytes(recs: list[dict]) -> int:
    # A WebSocket's or raw TCP flow's messages are counted in its ws.close / tcp.close.
    after = sum(sum(_number(v) for v in rec["size"].values()) for rec in recs
                if rec.get("t") in ("ws.close", "tcp.close") and isinstance(rec.get("size"), dict))
    for rec in recs:
        if rec.get("t") == "http.end" and isinstance(rec.get("size"), dict):
            return sum(_number(v) for v in rec["size"].values()) + after
    if after:
        return after
    total = 0
    for rec in recs:
        if rec.get("t") in ("http.request", "http.response", "http.chunk") and isinstance(rec.get("body"), dict):
            total += _number(rec["body"].get("size"))
    return total


def summarize(read: SessionRead) -> SessionSummary:
    opened = read.open_record or {}
    identity = opened.get("identity") if isinstance(opened.get("identity"), dict) else {}
    client = opened.get("client") if isinstance(opened.get("client"), dict) else {}
    agent = opened.get("agent") if isinstance(opened.get("agent"), dict) else {}
    times = [r["ts"] for r in read.records if isinstance(r.get("ts"), (int, float)) and not isinstance(r.get("ts"), bool)]
    start = opened.get("ts") if isinstance(opened.get("ts"), (int, float)) else (times[0] if times else None)
    end = times[-1] if times else None
    duration = None
    for rec in reversed(read.records):
        if rec.get("t") == "session.close" and isinstance(rec.get("duration_s"), (int, float)):
            duration = float(rec["duration_s"])
            break
    if duration is None and start is not None and end is not None:
        duration = max(0.0, end - start)
    ip, port = client.get("ip"), client.get("port")
    return SessionSummary(
        session_id=read.session_id,
        path=read.path,
        state=read.state,
        start=start,
        end=end,
        duration=duration,
        sub=identity.get("sub"),
        authenticated=identity.get("authenticated"),
        client=None if ip is None else (f"[{ip}]:{port}" if ":" in str(ip) else f"{ip}:{port}"),
        client_ip=ip,
        exchanges=sum(1 for r in read.records if r.get("t") in EXCHANGE_TYPES),
        bytes=sum(_flow_bytes(recs) for recs in flow_records(read.records).values())
        + sum(_number(v) for r in read.records if r.get("t") == "pg.end" and isinstance(r.get("bytes"), dict)
              for v in r["bytes"].values()),  # database connections: bytes from both sides
        records=len(read.records),
        agent=_text(agent.get("name")),
        run=_text(agent.get("run")),
    )


def _text(value) -> str | None:
    return value if isinstance(value, str) else None


def hosts_of(records: list[dict]) -> set[str]:
    """Where the session's requests went: each record's destination (host and address), not the
    URL the client named; the URL's host only in files from gateways that did not record it."""
    out = set()
    for r in records:
        t = r.get("t")
        dest = r.get("dest") if t in ("http.request", "auth.refused") else r if t == "tunnel" else None
        if isinstance(dest, dict):
            for key in ("host", "address"):
                if isinstance(dest.get(key), str):
                    out.add(canonical_host(dest[key]))
        elif t in ("http.request", "auth.refused") and isinstance(r.get("url"), str):
            try:
                host = urlsplit(r["url"]).hostname
            except ValueError:
                host = None
            if host:
                out.add(canonical_host(host))
        elif t == "pg.connect" and isinstance((r.get("upstream") or {}).get("host"), str):
            out.add(canonical_host(r["upstream"]["host"]))
    return out


def host_matches(hosts: set[str], want: str) -> bool:
    want = canonical_host(want)
    return any(h == want or h.endswith("." + want) for h in hosts)
