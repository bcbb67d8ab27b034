"""A new user's Codex CLI in proxy mode, through a real gateway, to a fake OpenAI upstream.

Codex (pinned, tests/support/codex.py) speaks the Responses API over WebSocket. The fake model
(tests/support/openai_fake.py) answers the first turn with a shell tool call, so Codex runs it
and calls again with its output, then answers with final words. The upstream's own log shows
what arrived; `wiretrail show` must show the prompt, the tool call, its result and the reply;
`wiretrail verify --key` must pass.
"""
from __future__ import annotations

import hashlib
import json
import subprocess

import pytest

from tests.support.artifacts import Artifacts
from tests.support.codex import codex_bin, codex_env
from tests.support.gateway import WIRETRAIL
from tests.support.idp import AUDIENCE, ISSUER, LocalIdP
from tests.support.openai_fake import ScriptedModel
from tests.support.ws_upstream import FakeWsUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

UPSTREAM_KEY = "sk-" + "gatewayopenai" + hashlib.sha256(b"wiretrail-codex-upstream").hexdigest()[:32]
CLIENT_KEY = "sk-" + "codexuser" + hashlib.sha256(b"wiretrail-codex-client").hexdigest()[:32]
PROMPT = "Please list the files here with a shell command, then tell me what you found."
FINAL = "I ran the command and found nothing to worry about: wiretrail-final-words."
TOOL_OUTPUT_MARK = "wiretrail-tool-ran-7f3a"


@pytest.fixture
def idp():
    with LocalIdP() as server:
        yield server


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(WIRETRAIL), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_codex_in_proxy_mode_over_websocket_is_recorded_with_prompt_tool_call_and_reply(
        tmp_path, start_gateway, idp, test_ca):
    codex = codex_bin()
    model = ScriptedModel(final_text=FINAL, tool_command=f"echo {TOOL_OUTPUT_MARK}")
    up = FakeWsUpstream(test_ca, responder=model).start()
    try:
        keys = tmp_path / "keys"
        assert run("keygen", keys).returncode == 0
        key_file = tmp_path / "openai.key"
        key_file.write_text(UPSTREAM_KEY + "\n")
        gw = start_gateway(
            config={"identity": {"mode": "jwt", "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": idp.jwks_url},
                    "policy": {"unregistered": "deny"},
                    "storage": {"dir": tmp_path / "store", "signing_key": keys / "gateway.key"}},
            extra_toml=f"""
[[connections]]
name = "openai"
hosts = ["127.0.0.1"]
ports = [{up.port}]
credential = "file:{key_file}"
inject = "bearer"
allow_groups = ["engineering"]
""")
        token = idp.token("alice", groups=["engineering"])
        work = tmp_path / "work"
        work.mkdir()
        env = codex_env(tmp_path / "home", proxy_url=f"http://alice:{token}@127.0.0.1:{gw.proxy_port}",
                        ca_file=gw.ca_path, api_key=CLIENT_KEY)
        proc = subprocess.run(
            [str(codex), "exec", "--skip-git-repo-check", "-C", str(work), "--dangerously-bypass-approvals-and-sandbox",
             "-c", f'openai_base_url="https://127.0.0.1:{up.port}/v1"', "-m", "gpt-5.1-codex", PROMPT],
            env=env, capture_output=True, text=True, timeout=180, cwd=work)
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert FINAL in proc.stdout, proc.stdout[-2000:]

        # The upstream's log: WebSocket only, the gateway's key on every upgrade, never the token or the client's key.
        conns = up.connections
        assert conns and all(c.http is None and c.path.startswith("/v1/responses") for c in conns), conns
        for c in conns:
            assert c.header_values("authorization") == [f"Bearer {UPSTREAM_KEY}"], c.headers
            seen = json.dumps(c.headers)
            assert token not in seen and CLIENT_KEY not in seen
        asked = [r for r in model.requests if r.get("generate") is not False]
        assert len(asked) >= 2, "Codex did not loop: the tool call was not answered"
        outputs = [o for r in asked for o in ScriptedModel.tool_outputs(r)]
        assert any(TOOL_OUTPUT_MARK in json.dumps(o) for o in outputs), outputs  # the command really ran
        assert gw.stop() == 0
    finally:
        up.stop()

    store = tmp_path / "store"
    art = Artifacts(store)
    ws_sessions = [s for s in art.sessions if any(r["t"] == "ws.open" for r in s.records)]
    assert len(ws_sessions) == 1, art.summary()
    session = ws_sessions[0]
    assert session.open_record["identity"]["sub"] == "alice"
    shown = run("show", session.path, "--color", "never", "--full")
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert PROMPT in text, text
    assert "tool call exec_command" in text and TOOL_OUTPUT_MARK in text, text
    assert "tool result" in text, text
    assert FINAL in text, text
    assert text.index(PROMPT) < text.index("tool call exec_command") < text.index("tool result") < text.index(FINAL)
    as_json = json.loads(run("show", session.path, "--json").stdout)
    protocols = {e.get("protocol") for e in as_json["exchanges"]}
    assert "openai.responses" in protocols, protocols
    verified = run("verify", "--key", keys / "gateway.pub", store)
    assert verified.returncode == 0, verified.stdout + verified.stderr
