"""Real agents, as a newcomer runs them: the README's lines for each client and mode, run as they
are, through a real mitmdump with the gateway, to a local TLS fake of the Anthropic and OpenAI
APIs whose scripted models answer the first turn with a tool call (so every agent loops).

Clients: Claude Code and Codex CLI (pinned, from npm: tests/support/claude_code.py, codex.py), the
newest openai and anthropic Python SDKs in a venv of their own (tests/support/sdk_venv.py), curl.
The gateway runs the embedded demo default with only its two connections' hosts pointed at the
fakes ("demo": the client's own key goes upstream), or the same with an injected key ("inject").

Ground truth is the fake upstream's own log: the key it received, and never the identity token
nor any x-wiretrail-* header. Then the artifact: one session per run holding every turn, which
`show` renders (prompt, tool call, tool result, final words), and `verify --key` passes.
"""
from __future__ import annotations

import base64
import http.client
import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from recorder.config import EMBEDDED_DEFAULT
from recorder.auth.dev_secret import ensure_dev_secret
from tests.support.anthropic_fake import ScriptedClaude
from tests.support.artifacts import Artifacts
from tests.support.claude_code import claude_bin, claude_env, claude_print
from tests.support.codex import codex_bin, codex_env, codex_exec
from tests.support.gateway import REPO_ROOT, WIRETRAIL, Gateway
from tests.support.openai_fake import ScriptedChat, ScriptedModel
from tests.support.sdk_venv import AGENT_SCRIPT, sdk_python
from tests.support.upstream import FakeUpstream
from tests.support.ws_upstream import FakeWsUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(420)]

CLIENT_ANTHROPIC_KEY = "sk-ant-api03-" + "newcomerkey" + "A1b2C3d4E5f6G7h8" * 3
CLIENT_OPENAI_KEY = "sk-proj-" + "newcomerkey" + "Z9y8X7w6V5u4T3s2" * 3
GATEWAY_KEY = "sk-ant-api03-" + "gatewayheld" + "Q1w2E3r4T5y6U7i8" * 3
TOOL_MARK = "wiretrail-tool-ran-5c1d"
FINAL = "Finished: the newcomer's agent saw wiretrail-final-words."
PROMPT = "List the files here with a shell command, then tell me what you found."
README = REPO_ROOT / "README.md"


# -- the README, as a newcomer reads it -------------------------------------------------------------

def readme_block(title: str) -> str:
    """The fenced block whose first line is `# <title>...`, without that line."""
    for m in re.finditer(r"```(?:sh|python)\n(.*?)```", README.read_text(), re.S):
        first, _, rest = m.group(1).partition("\n")
        if first.startswith(f"# {title}"):
            return rest
    raise AssertionError(f"README.md has no block titled {title!r}")


def readme_token_command() -> str:
    m = re.search(r"^export WIRETRAIL_TOKEN=\$\((\.venv/bin/wiretrail token .*)\)$", README.read_text(), re.M)
    assert m, "README.md lost its `export WIRETRAIL_TOKEN=$(.venv/bin/wiretrail token ...)` line"
    return m.group(1).replace(".venv/bin/wiretrail", str(WIRETRAIL))


class Newcomer:
    """One machine: a gateway on the demo config, a HOME whose ~/.mitmproxy is the gateway's
    confdir, a token minted by the README's line, and the README's lines run in bash."""

    def __init__(self, tmp: Path, gw: Gateway, mode: str):
        self.gw, self.mode = gw, mode
        self.home = tmp / "home"
        self.home.mkdir()
        (self.home / ".mitmproxy").symlink_to(gw.confdir)
        base = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
        base.update(HOME=str(self.home), USER="")  # $USER is empty on CI's root shells
        res = subprocess.run([str(WIRETRAIL), "ca"], env=base, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stdout + res.stderr  # the README's `wiretrail ca`: the bundle too
        res = subprocess.run(["bash", "-c", readme_token_command()], cwd=gw.workdir, env=base,
                             capture_output=True, text=True, timeout=60)
        assert res.returncode == 0 and res.stdout.count(".") == 2, res.stdout + res.stderr
        self.token = res.stdout.strip()

    def localize(self, text: str) -> str:
        """The README's addresses, made this test's: its ports; api hosts are the fakes (proxy mode)."""
        return (text.replace("127.0.0.1:8080", f"127.0.0.1:{self.gw.proxy_port}")
                .replace("127.0.0.1:8443", f"127.0.0.1:{self.gw.reverse_port}"))

    def env(self, title: str, base: dict, keep_last_line: bool = False) -> dict:
        """The environment after the README block's lines (not its last line, the client itself)."""
        lines = self.localize(readme_block(title)).rstrip("\n").split("\n")
        script = "\n".join(lines if keep_last_line else lines[:-1])
        env = dict(base, WIRETRAIL_TOKEN=self.token)
        res = subprocess.run(["bash", "-c", f"set -euo pipefail\n{script}\nenv -0"], env=env,
                             capture_output=True, timeout=60)
        assert res.returncode == 0, res.stderr.decode()
        return dict(kv.split("=", 1) for kv in res.stdout.decode().split("\0") if "=" in kv)


# -- the gateway: the embedded demo, its connections pointed at the fakes ----------------------------

def demo_config(gw: Gateway, anthropic_port: int, openai_port: int, inject: Path | None) -> str:
    text = EMBEDDED_DEFAULT.replace('dir = "sessions"', f'dir = "{gw.store_dir}"')
    for name, port in (("anthropic", anthropic_port), ("openai", openai_port)):
        old = f'name = "{name}"\nhosts = ["api.{name}.com"]\ncredential = "none"\ninject = "none"'
        assert old in text, "the embedded default's connections changed shape"
        new = f'name = "{name}"\nhosts = ["127.0.0.1"]\nports = [{port}]\n'
        new += (f'credential = "file:{inject}"\ninject = "{"x-api-key" if name == "anthropic" else "bearer"}"'
                if inject else 'credential = "none"\ninject = "none"')
        text = text.replace(old, new)
    return text


@pytest.fixture
def fakes(test_ca):
    claude, chat = ScriptedClaude(final_text=FINAL, tool_command=f"echo {TOOL_MARK}"), \
        ScriptedChat(final_text=FINAL, tool_command=f"echo {TOOL_MARK}")
    responses = ScriptedModel(final_text=FINAL, tool_command=f"echo {TOOL_MARK}")
    http = FakeUpstream(test_ca, models={"/v1/messages": claude.answer, "/v1/chat/completions": chat.answer}).start()
    ws = FakeWsUpstream(test_ca, responder=responses).start()
    yield {"http": http, "ws": ws, "claude": claude, "chat": chat, "responses": responses}
    http.stop()
    ws.stop()


def start(tmp_path, test_ca, fakes, mode: str, inject: bool, upstream) -> tuple[Gateway, Path | None]:
    key_file = None
    if inject:
        key_file = tmp_path / "upstream.key"
        key_file.write_text(GATEWAY_KEY + "\n")
    gw = Gateway(tmp_path / "gateway", upstream.base_url if hasattr(upstream, "base_url")
                 else f"https://127.0.0.1:{upstream.port}", test_ca.cert_path)
    gw.config_text = demo_config(gw, fakes["http"].port, fakes["ws"].port, key_file)
    ensure_dev_secret(gw.workdir / "keys" / "dev-identity.secret")  # what start.sh's first start makes
    res = subprocess.run([str(WIRETRAIL), "keygen", gw.workdir / "keys"], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return gw.start(), key_file


@pytest.fixture
def newcomer(tmp_path, test_ca, fakes):
    """make(mode, upstream, inject=False): a started gateway and the Newcomer at it; stopped after."""
    started: list[Gateway] = []

    def make(mode: str, upstream, inject: bool = False) -> tuple[Gateway, Newcomer]:
        gw, _ = start(tmp_path, test_ca, fakes, mode, inject, upstream)
        started.append(gw)
        return gw, Newcomer(tmp_path, gw, mode)

    yield make
    for gw in started:
        if gw.alive():
            gw.stop()


def check_record(gw: Gateway, *, agent: str | None, texts: list[str]) -> dict:
    """One session holds the run's model exchanges; `show` renders `texts` in order; verify passes."""
    art = Artifacts(gw.store_dir)
    model_sessions = [s for s in art.sessions if any(
        r.get("t") in ("http.request", "ws.open") and "/v1/" in str(r.get("url") or r.get("path") or "")
        for r in s.records)]
    assert len(model_sessions) == 1, art.summary()
    session = model_sessions[0]
    if agent is not None:
        assert (session.open_record.get("agent") or {}).get("name") == agent, session.open_record
        assert (session.open_record.get("agent") or {}).get("run"), session.open_record
    shown = subprocess.run([str(WIRETRAIL), "show", str(session.path), "--color", "never", "--full"],
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    at = [shown.stdout.find(t) for t in texts]
    assert all(i >= 0 for i in at) and at == sorted(at), (texts, at, shown.stdout[-6000:])
    for secret in (CLIENT_ANTHROPIC_KEY, CLIENT_OPENAI_KEY, GATEWAY_KEY):
        assert secret not in shown.stdout
    verified = subprocess.run([str(WIRETRAIL), "verify", "--key", str(gw.workdir / "keys" / "gateway.pub"),
                               str(gw.store_dir)], capture_output=True, text=True, timeout=60)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    return session.open_record


def assert_upstream_headers(headers: list, *, token: str, key_header: str, key: str) -> None:
    seen = json.dumps(headers)
    assert token not in seen, "the identity token reached the upstream"
    assert "x-wiretrail" not in seen.lower(), headers
    values = [v for k, v in headers if k.lower() == key_header]
    assert values == [key], (key_header, [k for k, v in headers if key in v or "sk-" in v])


def proxy_or_reverse_upstream(fakes, client: str):
    return fakes["ws"] if client == "codex" else fakes["http"]


MODES = ["proxy", "reverse"]


# -- Claude Code -----------------------------------------------------------------------------------

def claude_newcomer_env(me: Newcomer, mode: str) -> dict:
    """Claude Code's environment after the README's lines: the user's own key, no telemetry."""
    base = claude_env(me.home, ca_file=Path("/nonexistent"), extra={
        "ANTHROPIC_API_KEY": CLIENT_ANTHROPIC_KEY, "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"})
    base.pop("NODE_EXTRA_CA_CERTS")  # the README's lines set it
    return me.env(f"Claude Code, {mode} mode", base)


@pytest.mark.parametrize("mode,inject", [("proxy", False), ("reverse", False), ("reverse", True)])
def test_claude_code(tmp_path, newcomer, fakes, mode, inject):
    claude_bin()
    gw, me = newcomer(mode, fakes["http"], inject=inject)
    env = claude_newcomer_env(me, mode)
    if mode == "proxy":
        env["ANTHROPIC_BASE_URL"] = fakes["http"].base_url  # stands in for https://api.anthropic.com
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(claude_print(PROMPT), env=env, cwd=work, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + gw.log_text()[-4000:]
    assert FINAL in proc.stdout, proc.stdout[-3000:]

    turns = fakes["claude"].agent_requests()
    assert len(turns) >= 2 and any(TOOL_MARK in json.dumps(ScriptedClaude.tool_results(t)) for t in turns), turns
    msgs = [ex for ex in fakes["http"].exchanges if ex.path == "/v1/messages"]
    assert msgs
    for ex in msgs:
        assert_upstream_headers(ex.headers, token=me.token, key_header="x-api-key",
                                key=GATEWAY_KEY if inject else CLIENT_ANTHROPIC_KEY)
    assert gw.stop() == 0
    check_record(gw, agent="claude-code", texts=[PROMPT, "Bash", TOOL_MARK, FINAL])


# -- Codex CLI -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_codex(tmp_path, newcomer, fakes, mode):
    codex_bin()
    ws = fakes["ws"]
    gw, me = newcomer(mode, ws, inject=False)
    base = codex_env(me.home, ca_file=Path("/nonexistent"), extra={"OPENAI_API_KEY": CLIENT_OPENAI_KEY})
    base.pop("SSL_CERT_FILE")  # the README's lines set it
    env = me.env(f"Codex CLI, {mode} mode", base)
    args = []
    if mode == "proxy":
        env["CODEX_API_KEY"] = CLIENT_OPENAI_KEY
        args = ["-c", f'openai_base_url="https://127.0.0.1:{ws.port}/v1"']  # stands in for api.openai.com
    work = tmp_path / "work"
    work.mkdir()
    proc = subprocess.run(codex_exec(work, PROMPT, *args), env=env, cwd=work, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + gw.log_text()[-4000:]
    assert FINAL in proc.stdout, proc.stdout[-3000:]

    asked = [r for r in fakes["responses"].requests if r.get("generate") is not False]
    seen = [(r.get("generate"), [i.get("type") for i in r.get("input") or () if isinstance(i, dict)],
             [t.get("name") or t.get("type") for t in r.get("tools") or () if isinstance(t, dict)])
            for r in fakes["responses"].requests]
    assert len(asked) >= 2 and any(TOOL_MARK in json.dumps(ScriptedModel.tool_outputs(r)) for r in asked), (
        seen, [(c.path, c.http and c.http[0]) for c in ws.connections], proc.stdout[-2000:], gw.log_text()[-3000:])
    conns = [c for c in ws.connections if c.path.startswith("/v1/responses")]
    assert conns
    for c in conns:
        assert_upstream_headers(c.headers, token=me.token, key_header="authorization",
                                key=f"Bearer {CLIENT_OPENAI_KEY}")
    assert gw.stop() == 0
    check_record(gw, agent="codex", texts=[PROMPT, TOOL_MARK, FINAL])


# -- the Python SDKs -------------------------------------------------------------------------------

@pytest.mark.parametrize("sdk", ["openai", "anthropic"])
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("stream", [False, True], ids=["json", "stream"])
def test_python_sdk(tmp_path, newcomer, fakes, sdk, mode, stream):
    python = sdk_python()
    gw, me = newcomer(mode, fakes["http"], inject=False)
    base = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")
            and not k.upper().startswith(("OPENAI_", "ANTHROPIC_", "SSL_CERT"))}
    base.update(HOME=str(me.home), OPENAI_API_KEY=CLIENT_OPENAI_KEY, ANTHROPIC_API_KEY=CLIENT_ANTHROPIC_KEY)
    env = me.env(f"Python SDKs (openai, anthropic), {mode} mode", base, keep_last_line=True)
    setup = tmp_path / "setup.py"
    if mode == "proxy":
        setup.write_text(f"import {sdk}\nclient = {sdk}.{'OpenAI' if sdk == 'openai' else 'Anthropic'}()\n")
        env["OPENAI_BASE_URL" if sdk == "openai" else "ANTHROPIC_BASE_URL"] = (
            fakes["http"].base_url + ("/v1" if sdk == "openai" else ""))  # stands in for the API
    else:
        setup.write_text(me.localize(readme_block(f"{sdk} SDK, reverse mode")))
    proc = subprocess.run([str(python), str(AGENT_SCRIPT), sdk, str(setup), PROMPT] + (["--stream"] if stream else []),
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + gw.log_text()[-4000:]
    assert FINAL in proc.stdout, proc.stdout

    path, key_header, key = (("/v1/chat/completions", "authorization", f"Bearer {CLIENT_OPENAI_KEY}")
                             if sdk == "openai" else ("/v1/messages", "authorization", f"Bearer {CLIENT_ANTHROPIC_KEY}"))
    # (anthropic 2.x sends its API key as Authorization: Bearer)
    got = [ex for ex in fakes["http"].exchanges if ex.path == path]
    assert len(got) == 2, [ex.path for ex in fakes["http"].exchanges]
    assert TOOL_MARK in got[1].body.decode()
    for ex in got:
        assert_upstream_headers(ex.headers, token=me.token, key_header=key_header, key=key)
    assert gw.stop() == 0
    check_record(gw, agent=None, texts=[PROMPT, "shell", TOOL_MARK, FINAL])


# -- curl ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_curl(tmp_path, newcomer, fakes, mode):
    gw, me = newcomer(mode, fakes["http"], inject=False)
    base = {k: v for k, v in os.environ.items() if not k.upper().endswith("_PROXY")}
    base.update(HOME=str(me.home), ANTHROPIC_API_KEY=CLIENT_ANTHROPIC_KEY, WIRETRAIL_TOKEN=me.token)
    line = me.localize(readme_block(f"curl, {mode} mode")).replace(
        "https://api.anthropic.com", fakes["http"].base_url)  # the fake stands in for the API
    proc = subprocess.run(["bash", "-c", f"set -euo pipefail\n{line}"], env=base, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr + gw.log_text()[-4000:]
    reply = json.loads(proc.stdout)
    assert reply["content"][0]["text"], reply
    got = [ex for ex in fakes["http"].exchanges if ex.path == "/v1/messages"]
    assert len(got) == 1
    assert_upstream_headers(got[0].headers, token=me.token, key_header="x-api-key", key=CLIENT_ANTHROPIC_KEY)
    # Still running: the session is "open", not "crash?", in ls, show and verify alike.
    listed = subprocess.run([str(WIRETRAIL), "ls", "--json", str(gw.store_dir)], capture_output=True, text=True,
                            timeout=60)
    assert [json.loads(line)["state"] for line in listed.stdout.splitlines()] == ["open"], listed.stdout
    path = json.loads(listed.stdout)["path"]
    shown = subprocess.run([str(WIRETRAIL), "show", path, "--color", "never"], capture_output=True, text=True,
                           timeout=60)
    assert "state     open" in shown.stdout and "crash" not in shown.stdout, shown.stdout[:2000]
    verified = subprocess.run([str(WIRETRAIL), "verify", path], capture_output=True, text=True, timeout=60)
    assert ": open:" in verified.stdout and "crash" not in verified.stdout, verified.stdout
    assert gw.stop() == 0
    check_record(gw, agent=None, texts=["Hello", reply["content"][0]["text"]])


# -- refusals that say what to do ------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_an_api_key_where_the_token_belongs_is_told_what_to_do(tmp_path, newcomer, fakes, mode):
    gw, me = newcomer(mode, fakes["http"], inject=False)
    ca = me.home / ".mitmproxy" / "mitmproxy-ca-cert.pem"
    body = '{"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": "Hi"}]}'
    if mode == "proxy":  # the API key in the proxy URL, where the token goes
        conn = http.client.HTTPConnection("127.0.0.1", gw.proxy_port, timeout=30)
        auth = base64.b64encode(f"me:{CLIENT_ANTHROPIC_KEY}".encode()).decode()
        conn.request("CONNECT", f"127.0.0.1:{fakes['http'].port}", headers={"Proxy-Authorization": f"Basic {auth}"})
        reply = conn.getresponse()
        out = reply.read().decode()
        assert reply.status == 407, out
        assert "looks like an API key" in out and "HTTPS_PROXY=http://<user>:<token>@" in out, out
        assert CLIENT_ANTHROPIC_KEY not in out
        conn.close()
    else:  # the token forgotten: the API key alone, where SDKs put it
        res = subprocess.run(["curl", "-sS", "--cacert", str(ca), f"https://127.0.0.1:{gw.reverse_port}/v1/messages",
                              "-H", f"x-api-key: {CLIENT_ANTHROPIC_KEY}", "-H", "content-type: application/json",
                              "-d", body, "-w", "\n%{http_code}"], capture_output=True, text=True, timeout=60)
        out, _, status = res.stdout.rpartition("\n")
        assert status == "401", res.stdout
        error = json.loads(out)
        assert error["type"] == "error" and "x-wiretrail-token" in error["error"]["message"], error  # Anthropic's shape
        assert "not a JWT" not in out and CLIENT_ANTHROPIC_KEY not in out
    assert not [ex for ex in fakes["http"].exchanges if ex.path == "/v1/messages"]  # nothing went upstream
    log = gw.log_text()
    assert CLIENT_ANTHROPIC_KEY not in log


def test_start_installs_only_when_needed_and_quietly():
    """scripts/start.sh runs scripts/setup.sh first: on an installed checkout it must neither
    reinstall nor print anything, so the gateway's own lines are the first a user sees."""
    setup = REPO_ROOT / "scripts" / "setup.sh"
    subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=600, check=True)
    again = subprocess.run(["bash", str(setup)], capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and again.stdout == "" and again.stderr == "", again.stdout + again.stderr


def test_two_claude_code_runs_are_two_sessions(tmp_path, newcomer, fakes):
    """Runs from one machine and one identity do not merge: each Claude Code run is a session of
    its own, named by its run id, and the second run's prompt is its own first message."""
    claude_bin()
    gw, me = newcomer("reverse", fakes["http"], inject=False)
    env = claude_newcomer_env(me, "reverse")
    work = tmp_path / "work"
    work.mkdir()
    prompts = [PROMPT, "Second run: " + PROMPT]
    for prompt in prompts:
        proc = subprocess.run(claude_print(prompt), env=env, cwd=work, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0 and FINAL in proc.stdout, proc.stdout[-2000:] + proc.stderr[-2000:]
    listed = subprocess.run([str(WIRETRAIL), "ls", "--json", str(gw.store_dir)], capture_output=True, text=True,
                            timeout=60)
    rows = [json.loads(line) for line in listed.stdout.splitlines()]
    runs = [r for r in rows if r["agent"]]
    assert len(runs) == 2 and {r["agent"]["name"] for r in runs} == {"claude-code"}, rows
    assert runs[0]["agent"]["run"] != runs[1]["agent"]["run"]
    table = subprocess.run([str(WIRETRAIL), "ls", str(gw.store_dir)], capture_output=True, text=True, timeout=60)
    assert all(r["agent"]["run"] in table.stdout for r in runs), table.stdout
    assert gw.stop() == 0
    for row, prompt in zip(runs, prompts):
        shown = subprocess.run([str(WIRETRAIL), "show", row["path"], "--color", "never", "--full"],
                               capture_output=True, text=True, timeout=60).stdout
        assert f"user: {prompt}" in shown, shown[-4000:]
        other = prompts[1 - prompts.index(prompt)]
        assert f"user: {other}" not in shown
