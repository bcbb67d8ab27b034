"""OpenAI's Codex CLI for agent tests: a pinned version from npm (tests/support/npm_tools.py).

Proxy mode: Codex reaches the gateway through HTTPS_PROXY (the identity token in the proxy URL)
and trusts its CA through SSL_CERT_FILE; `openai_base_url` points the built-in `openai` provider,
which speaks the Responses API over WebSocket (`wss://<base>/responses`), at the fake upstream.
Reverse mode: a custom provider whose base_url is the gateway, its API key from `env_key`, the
identity token in a header from `env_http_headers` (README, "Codex CLI").

What Codex sends (seen with 0.171.0 against tests/support/openai_fake.py): `session-id`,
`thread-id` and `x-client-request-id` headers, all the conversation's id; `originator: codex_exec`
(`codex exec`) and a `codex_exec/<version>` User-Agent; `prompt_cache_key` and
`client_metadata.session_id` in each payload, the same id.
"""
from __future__ import annotations

from pathlib import Path

from tests.support.npm_tools import cache_dir, clean_env, npm_tool  # noqa: F401 (cache_dir: re-exported)

CODEX_VERSION = "0.171.0"


def codex_bin() -> Path:
    """The pinned Codex CLI, installed if it is not yet."""
    return npm_tool("@openai/codex", CODEX_VERSION, "codex")


def codex_env(home: Path, *, proxy_url: str | None = None, ca_file: Path, api_key: str | None = None,
              extra: dict | None = None) -> dict:
    """A clean environment: its own HOME and CODEX_HOME, the gateway as proxy (if given)."""
    env = clean_env(home, ("OPENAI_", "CODEX_", "WIRETRAIL_"))
    (home / ".codex").mkdir(parents=True, exist_ok=True)
    env.update(CODEX_HOME=str(home / ".codex"), SSL_CERT_FILE=str(ca_file), RUST_LOG="warn")
    if api_key is not None:
        env["CODEX_API_KEY"] = api_key
    if proxy_url is not None:
        env.update(HTTPS_PROXY=proxy_url, HTTP_PROXY=proxy_url)
    env.update(extra or {})
    return env


def codex_exec(work: Path, prompt: str, *args: str) -> list[str]:
    """The command line of one non-interactive run, allowed to run shell commands (the test's
    fake model asks for one) without a sandbox (none is available in CI's container)."""
    return [str(codex_bin()), "exec", "--skip-git-repo-check", "-C", str(work),
            "--dangerously-bypass-approvals-and-sandbox", "-m", "gpt-5.1-codex", *args, prompt]
