"""Sessions: one agent run, or one identity's continuous activity from one client address.

A flow whose client names its agent run (recorder/store/agent_runs.py) goes to that run's session,
keyed by the verified identity, the client address and the run; any other flow to the session of
its identity and address. A session opens at its first flow and closes after `idle_timeout` with
no flow, at `max_duration`, or at shutdown. A refusal or a tunnel that names no run joins the
most recently active open session of its identity and address (so a run's telemetry tunnels are in
the run's session); where there is none it opens one, and a session that holds no exchange
(only refusals or tunnels) closes after QUIET_IDLE seconds without one, so it never lingers. A session with flows still in
progress is not closed under them: it stops taking new flows and closes when its last flow ends.
One identity and address keep at most MAX_RUNS run sessions open; a new run beyond that closes
the least recently active one (reason "run_limit"): a client that makes up run ids cannot hold
files open without end.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from recorder import __version__
from recorder.store import format_v1
from recorder.store.ids import new_session_id
from recorder.store.writer import Ack, RecordWriter
from recorder.store.records import HTTP_ERROR, RECORDS

QUIET_IDLE = 10.0  # seconds: a session without exchanges (refusals, tunnels) closes this soon
MAX_RUNS = 64  # open run sessions per identity and client address


@dataclass(eq=False)  # identity semantics: sessions live in sets
class Session:
    id: str
    key: tuple
    path: Path
    opened: float
    last_activity: float
    identity: dict
    writer: RecordWriter
    agent: dict | None = None  # {"name", "run"} the client declared, when it named its run
    active_flows: int = 0
    flows: int = 0
    exchanges: int = 0  # flows that were exchanges (not refusals or tunnels)
    records: int = 0
    errors: int = 0
    draining: bool = False  # takes no new flows; closes when the last one ends
    closed: bool = False
    close_reason: str | None = None
    failed: BaseException | None = field(default=None, repr=False)

    def record(self, rtype: str, fields: dict, ack: Ack | None = None, ts: float | None = None) -> None:
        if self.closed:
            raise RuntimeError(f"session {self.id} is closed")
        if rtype not in RECORDS:
            raise ValueError(f"{rtype!r} is not a record type of format v1 (recorder/store/records.py)")
        self.records += 1
        if rtype == HTTP_ERROR:
            self.errors += 1
        self.writer.record(self.id, rtype, time.time() if ts is None else ts, fields, ack)


def session_path(storage_dir: Path, session_id: str, opened: float) -> Path:
    day = time.gmtime(opened)
    return storage_dir / f"{day.tm_year:04d}" / f"{day.tm_mon:02d}" / f"{day.tm_mday:02d}" / (
        session_id + format_v1.FILE_SUFFIX
    )


class SessionRegistry:
    def __init__(
        self,
        writer: RecordWriter,
        storage_dir: Path,
        *,
        idle_timeout: float,
        max_duration: float,
        signing_key_id: str | None = None,
        gateway_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ):
        self.writer = writer
        self.storage_dir = storage_dir
        self.idle_timeout = idle_timeout
        self.max_duration = max_duration
        self.signing_key_id = signing_key_id
        self.clock = clock
        self._open: dict[tuple, Session] = {}
        self._draining: set[Session] = set()
        self.gateway = {"host": socket.gethostname(), "version": __version__}
        if gateway_id is not None:  # one of several gateways writing one storage root
            self.gateway["id"] = gateway_id

    def __len__(self) -> int:
        return len(self._open) + len(self._draining)

    def sessions(self) -> list[Session]:
        return list(self._open.values()) + list(self._draining)

    def begin_flow(self, identity_key: str, identity: dict, client: tuple[str, int], agent: dict | None = None,
                   *, exchange: bool = True) -> Session:
        """The session a new flow belongs to, opening one if needed. Counts the flow as active.
        `agent`: the run the client declared ({"name", "run"}), or None. `exchange`: False for a
        refusal or a tunnel, which do not keep a session open for long."""
        now = self.clock()
        run = agent.get("run") if agent else None
        key = (identity_key, client[0], run)
        session = self._open.get(key)
        if session is None and not exchange and run is None:
            session = self._latest_run(key)  # a tunnel or refusal joins the run it came beside
        if session is not None and (session.failed is not None or now - session.opened >= self.max_duration):
            self._retire(session, "max_duration" if session.failed is None else "storage_error")
            session = None
        if session is None:
            if run is not None:
                self._limit_runs(key)
            session = self._open_session(key, identity, client, now, agent)
        session.active_flows += 1
        session.flows += 1
        session.exchanges += exchange
        session.last_activity = now
        return session

    def _latest_run(self, key: tuple) -> Session | None:
        runs = [s for k, s in self._open.items() if k[:2] == key[:2] and s.failed is None]
        return max(runs, key=lambda s: s.last_activity) if runs else None

    def _limit_runs(self, key: tuple) -> None:
        runs = [s for k, s in self._open.items() if k[:2] == key[:2] and k[2] is not None]
        if len(runs) >= MAX_RUNS:
            self._retire(min(runs, key=lambda s: s.last_activity), "run_limit")

    def end_flow(self, session: Session) -> None:
        session.active_flows -= 1
        session.last_activity = self.clock()
        if session.draining and session.active_flows <= 0:
            self._close(session, session.close_reason or "max_duration")

    def mark_failed(self, session: Session, err: BaseException) -> None:
        """Storage failed for this session: the next flow of its key opens a fresh file."""
        if session.failed is None:
            session.failed = err

    def expire(self) -> int:
        """Close sessions that went idle or ran past max_duration. Returns how many closed."""
        now = self.clock()
        closed = 0
        for session in list(self._open.values()):
            if session.active_flows > 0:
                if now - session.opened >= self.max_duration:
                    self._retire(session, "max_duration")
                continue
            idle = self.idle_timeout if session.exchanges else min(self.idle_timeout, QUIET_IDLE)
            if now - session.last_activity >= idle:
                self._open.pop(session.key, None)
                self._close(session, "idle")
                closed += 1
            elif now - session.opened >= self.max_duration:
                self._open.pop(session.key, None)
                self._close(session, "max_duration")
                closed += 1
        return closed

    def close_all(self, reason: str = "shutdown") -> None:
        for session in self.sessions():
            self._open.pop(session.key, None)
            self._close(session, reason)

    # -- internals ------------------------------------------------------------------

    def _open_session(self, key, identity, client, now, agent=None) -> Session:
        sid = new_session_id(now)
        session = Session(
            id=sid,
            key=key,
            path=session_path(self.storage_dir, sid, now),
            opened=now,
            last_activity=now,
            identity=identity,
            writer=self.writer,
            agent=agent,
        )
        self._open[key] = session
        fields = {
            "session": sid,
            "identity": identity,
            "client": {"ip": client[0], "port": client[1]},
            "gateway": self.gateway,
            "key": self.signing_key_id,
            "opened": now,
        }
        if agent:
            fields["agent"] = {"name": agent.get("name"), "run": agent.get("run"), "by": agent.get("by")}
        session.records += 1
        self.writer.open_session(sid, session.path, now, fields)
        return session

    def _retire(self, session: Session, reason: str) -> None:
        """Stop giving the session new flows; close it now or when its flows end."""
        if self._open.get(session.key) is session:
            del self._open[session.key]
        session.draining = True
        session.close_reason = reason
        if session.active_flows <= 0:
            self._close(session, reason)
        else:
            self._draining.add(session)

    def _close(self, session: Session, reason: str) -> None:
        if session.closed:
            return
        session.closed = True
        self._draining.discard(session)
        fields = {
            "reason": reason,
            "counts": {"flows": session.flows, "records": session.records + 1, "errors": session.errors},
            "duration_s": round(self.clock() - session.opened, 3),
        }
        self.writer.close_session(session.id, self.clock(), fields)

