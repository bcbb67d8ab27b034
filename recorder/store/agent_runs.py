"""Which agent run a request belongs to, as the client declares it.

One session per agent run: where the client names its run, the run starts and names a session
(recorder/store/sessions.py keys sessions by verified identity, client address and run). Where it does
not, the session is the identity's from that address, closed after the idle timeout.

| client      | what names the run                                  | agent name    |
|-------------|-----------------------------------------------------|---------------|
| any         | x-wiretrail-run (and x-wiretrail-agent for a name)  | that, or from the User-Agent |
| Claude Code | X-Claude-Code-Session-Id (one per `claude` run)     | claude-code   |
| Codex CLI   | session-id / session_id / thread-id, with an        | codex         |
|             | `originator` or User-Agent that starts with codex   |               |

What the client declares is attacker input: it only groups records. It never switches recording
off, never hides a record, and never changes who the session belongs to (the verified identity
stays part of the key, so a run id cannot join someone else's session). It is bounded and
sanitised: at most MAX_RUN characters of [A-Za-z0-9._:@+-]; anything else becomes "_".
"""
from __future__ import annotations

import re
from collections.abc import Mapping

from recorder.auth.credentials import AGENT_HEADER, RUN_HEADER

MAX_RUN = 128
MAX_NAME = 64
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@+\-]")
CLAUDE_CODE_HEADER = "x-claude-code-session-id"
CODEX_RUN_HEADERS = ("session-id", "session_id", "thread-id", "thread_id", "conversation_id")
_UA_NAMES = (("claude-cli/", "claude-code"), ("codex", "codex"), ("openai/python", "openai-python"),
             ("anthropic/python", "anthropic-python"), ("openai/js", "openai-node"), ("anthropic/js", "anthropic-node"),
             ("curl/", "curl"))


def clean(value: str | None, limit: int) -> str | None:
    """A declared value fit for a record and a listing: printable, bounded, or None if empty."""
    if value is None:
        return None
    value = _UNSAFE.sub("_", value.strip()[:limit])
    return value if value.strip("_") else None


def agent_name(headers: Mapping[str, str]) -> str | None:
    """The agent's name from the User-Agent (or Codex's originator), for the record."""
    ua = (headers.get("user-agent") or "").lower()
    for prefix, name in _UA_NAMES:
        if ua.startswith(prefix):
            return name
    return clean(ua.split(" ", 1)[0].split("/", 1)[0], MAX_NAME) if ua else None


def agent_run(headers: Mapping[str, str]) -> dict | None:
    """{"name": ..., "run": ..., "by": header} for a request that names its run, else None."""
    run = clean(headers.get(RUN_HEADER), MAX_RUN)
    if run is not None:
        name = clean(headers.get(AGENT_HEADER), MAX_NAME) or agent_name(headers) or "client"
        return {"name": name, "run": run, "by": RUN_HEADER}
    run = clean(headers.get(CLAUDE_CODE_HEADER), MAX_RUN)
    if run is not None:
        return {"name": "claude-code", "run": run, "by": CLAUDE_CODE_HEADER}
    originator = (headers.get("originator") or "").lower()
    if originator.startswith("codex") or (headers.get("user-agent") or "").lower().startswith("codex"):
        for name in CODEX_RUN_HEADERS:
            run = clean(headers.get(name), MAX_RUN)
            if run is not None:
                return {"name": "codex", "run": run, "by": name}
    return None
