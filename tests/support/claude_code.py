"""Anthropic's Claude Code for agent tests: a pinned version from npm (tests/support/npm_tools.py).

Proxy mode: HTTPS_PROXY with the identity token in the proxy URL, NODE_EXTRA_CA_CERTS for the
gateway's CA, the user's own ANTHROPIC_API_KEY. Reverse mode: ANTHROPIC_BASE_URL is the gateway, the
identity token in the header ANTHROPIC_CUSTOM_HEADERS names (README, "Claude Code").

What Claude Code sends (seen with 2.1.332 against tests/support/anthropic_fake.py): HEAD /api/hello
first, then POST /v1/messages?beta=true with `X-Claude-Code-Session-Id: <uuid>` (one per run, the
same in `metadata.user_id`'s JSON `session_id`), `User-Agent: claude-cli/<version> (external,
sdk-cli)`, `x-app: cli`, the key as `x-api-key` (ANTHROPIC_API_KEY) or `Authorization: Bearer`
(ANTHROPIC_AUTH_TOKEN), and every header of ANTHROPIC_CUSTOM_HEADERS ("Name: value", one a line).
"""
from __future__ import annotations

from pathlib import Path

from tests.support.npm_tools import clean_env, npm_tool

CLAUDE_CODE_VERSION = "2.1.332"


def claude_bin() -> Path:
    """The pinned Claude Code, installed if it is not yet."""
    return npm_tool("@anthropic-ai/claude-code", CLAUDE_CODE_VERSION, "claude")


def claude_env(home: Path, *, ca_file: Path, extra: dict | None = None) -> dict:
    """A clean environment: its own HOME, the gateway's CA added to the client's roots."""
    env = clean_env(home, ("ANTHROPIC_", "CLAUDE", "WIRETRAIL_"))
    env.update(NODE_EXTRA_CA_CERTS=str(ca_file))
    env.update(extra or {})
    return env


def claude_print(prompt: str, *args: str) -> list[str]:
    """One non-interactive run (`-p`) that may use the Bash tool without asking (the test's fake
    model asks for one; --dangerously-skip-permissions is refused as root, which CI is)."""
    return [str(claude_bin()), "-p", prompt, "--allowedTools", "Bash", *args]
