"""One row per session for the review list, and the list's filters.

A row is made from what `wiretrail ls` and `show` already compute (recorder.forensics.reader.summarize,
the transcript, recorder.forensics.verify) and holds only plain values, so the index can keep ten
thousand of them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from recorder.commands.common import parse_time
from recorder.forensics.exchange import header
from recorder.forensics.summary import host_matches, hosts_of, summarize
from recorder.forensics.transcript import Turn, build
from recorder.forensics.verify import FileVerdict
from recorder.review.integrity import STATES, Integrity

_PRODUCT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


@dataclass(frozen=True)
class Agent:
    name: str | None
    run: str | None


def agent_of(records: list[dict]) -> Agent:
    """The agent and its run: session.open's `agent` where the gateway knows it ({"name", "run"}),
    else the product of the first request's User-Agent (claude-cli/1.0 -> claude-cli)."""
    opened = records[0] if records and records[0].get("t") == "session.open" else {}
    agent = opened.get("agent")
    if isinstance(agent, dict) and isinstance(agent.get("name"), str) and agent["name"]:
        run = agent.get("run")
        return Agent(agent["name"][:100], str(run)[:100] if isinstance(run, (str, int)) and run != "" else None)
    for rec in records:
        if rec.get("t") == "http.request":
            ua = header(rec.get("headers"), "user-agent")
            m = _PRODUCT.match(ua.strip()) if ua else None
            if m:
                return Agent(m.group(0).split("/")[0], None)
    return Agent(None, None)


def _int(v) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else 0


def token_usage(turns: list[Turn]) -> tuple[int, int]:
    """(input, output) tokens over the turns, as the APIs reported them."""
    tin = tout = 0
    for t in turns:
        u = t.usage if isinstance(t.usage, dict) else {}
        tin += _int(u.get("prompt_tokens")) or _int(u.get("input_tokens"))
        tout += _int(u.get("completion_tokens")) or _int(u.get("output_tokens"))
    return tin, tout


def tool_calls(turn: Turn) -> int:
    """Tool calls a turn made: those the model asked for in its reply, and MCP tools/call requests
    (the tool calls in an LLM request are echoes of earlier replies)."""
    msgs = turn.messages if turn.protocol == "mcp" else turn.reply
    return sum(1 for m in msgs for p in m.parts if p.type == "tool_call")


PG_STATEMENTS = ("pg.query", "pg.execute", "pg.function")  # what a database client asked: its exchanges


def pg_counts(records: list[dict]) -> dict[str, int]:
    """A PostgreSQL session's statements, errors and refusals, counted as HTTP exchanges are."""
    out = {"statements": 0, "errors": 0, "refusals": 0}
    for r in records:
        t = r.get("t")
        if t in PG_STATEMENTS:
            out["statements"] += 1
        elif (t == "pg.result" and r.get("error")) or t == "pg.error":
            out["errors"] += 1
        elif t == "pg.refused":
            out["refusals"] += 1
    return out


def has_error(turn: Turn) -> bool:
    ex = turn.exchange
    return ex.kind == "http" and (bool(ex.errors) or (ex.status is not None and ex.status >= 400))


@dataclass(frozen=True)
class SessionRow:
    session_id: str  # the file's stem (the session id for files the gateway wrote)
    rel: str  # path relative to the store
    start: float | None
    end: float | None
    duration: float | None
    sub: str | None
    email: str | None
    authenticated: bool | None
    method: str | None
    client: str | None
    agent: Agent
    hosts: tuple[str, ...]
    models: tuple[str, ...]
    tokens_in: int
    tokens_out: int
    exchanges: int
    tool_calls: int
    errors: int
    refusals: int
    records: int
    integrity: Integrity
    part: str = ""  # the key of the part of a fleet's root it lies in (recorder/store/fleet.py); "" = the store
    gateway: str = ""  # that part's name: the gateway id (the folder its ledger is in)

    @property
    def href(self) -> str:
        return session_href(self.session_id, self.part)


def session_href(stem: str, part: str = "") -> str:
    """The page of one session: its part and its id, so that a namesake in another part is never
    the one opened."""
    s = quote(stem, safe="")
    return f"/g/{quote(part, safe='')}/s/{s}" if part else f"/s/{s}"


def make_row(stem: str, rel: str, v: FileVerdict, integrity: Integrity, turns: list[Turn] | None = None, *,
             part: str = "", gateway: str = "") -> SessionRow:
    read = v.read
    s = summarize(read)
    opened = read.open_record or {}
    ident = opened.get("identity") if isinstance(opened.get("identity"), dict) else {}
    turns = build(read.records) if turns is None else turns
    tin, tout = token_usage(turns)
    models = sorted({str(t.model) for t in turns if t.model})
    hosts = sorted(hosts_of(read.records))
    agent = agent_of(read.records)
    pg = pg_counts(read.records)
    sub = ident.get("sub") if isinstance(ident.get("sub"), str) else None
    email = ident.get("email") if isinstance(ident.get("email"), str) else None
    return SessionRow(
        session_id=stem,
        rel=rel,
        start=s.start,
        end=s.end,
        duration=s.duration,
        sub=sub,
        email=email,
        authenticated=ident.get("authenticated") if isinstance(ident.get("authenticated"), bool) else None,
        method=ident.get("method") if isinstance(ident.get("method"), str) else None,
        client=s.client,
        agent=agent,
        hosts=tuple(hosts),
        models=tuple(models),
        tokens_in=tin,
        tokens_out=tout,
        exchanges=sum(1 for t in turns if t.exchange.kind == "http") + pg["statements"],
        tool_calls=sum(tool_calls(t) for t in turns),
        errors=sum(1 for t in turns if has_error(t)) + pg["errors"],
        refusals=sum(1 for t in turns if t.exchange.kind == "auth.refused") + pg["refusals"],
        records=len(read.records),
        integrity=integrity,
        part=part,
        gateway=gateway,
    )


# -- filters -----------------------------------------------------------------------------------


class FilterError(ValueError):
    """A filter value that cannot be used; the message says what to give."""


@dataclass(frozen=True)
class Filters:
    user: str = ""
    since: str = ""
    until: str = ""
    host: str = ""
    agent: str = ""
    errors: bool = False
    integrity: str = ""

    @classmethod
    def from_query(cls, get) -> "Filters":
        """From query arguments; `get(name)` returns the value or "". Raises FilterError."""
        f = cls(user=get("user").strip()[:200], since=get("since").strip()[:100], until=get("until").strip()[:100],
                host=get("host").strip()[:253], agent=get("agent").strip()[:100], errors=get("errors") in ("1", "on"),
                integrity=get("integrity").strip())
        if f.integrity and f.integrity not in STATES:
            raise FilterError(f"integrity must be one of {', '.join(STATES)}")
        f.times()  # raises on a bad time
        return f

    def times(self) -> tuple[float | None, float | None]:
        try:
            return (parse_time(self.since) if self.since else None, parse_time(self.until) if self.until else None)
        except ValueError as e:
            raise FilterError(str(e)) from None

    @property
    def active(self) -> bool:
        return any((self.user, self.since, self.until, self.host, self.agent, self.errors, self.integrity))

    def query(self) -> dict[str, str]:
        """The filters as query arguments (for paging links), without empty ones."""
        out = {"user": self.user, "since": self.since, "until": self.until, "host": self.host, "agent": self.agent,
               "errors": "1" if self.errors else "", "integrity": self.integrity}
        return {k: v for k, v in out.items() if v}

    def matches(self, row: SessionRow, since: float | None, until: float | None) -> bool:
        """The same rules as `wiretrail ls`: user = sub or email (case-insensitive), since = active
        at or after, until = started at or before, host = the host or a subdomain of it."""
        if self.user:
            want = self.user.lower()
            if not any(isinstance(x, str) and x.lower() == want for x in (row.sub, row.email)):
                return False
        if self.host and not host_matches(set(row.hosts), self.host):
            return False
        if self.agent:
            want = self.agent.lower()
            if not any(want in (x or "").lower() for x in (row.agent.name, row.agent.run)):
                return False
        if self.errors and not (row.errors or row.refusals):
            return False
        if self.integrity and row.integrity.state != self.integrity:
            return False
        if since is not None and (row.end if row.end is not None else float("inf")) < since:
            return False
        if until is not None and (row.start if row.start is not None else float("-inf")) > until:
            return False
        return True
