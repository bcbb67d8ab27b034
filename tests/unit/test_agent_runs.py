"""One session per agent run (recorder/store/agent_runs.py, recorder/store/sessions.py), the API-key
mistake's message (recorder/auth/identity.py) and the open/stopped marker (recorder/store/live.py)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from recorder.store import sessions as sessions_module
from recorder.auth.identity import IdentityError, api_token_and_header, check_api_token, looks_like_api_key
from recorder.forensics.reader import iter_session_files, read_session
from recorder.store.sessions import QUIET_IDLE, SessionRegistry
from recorder.store.agent_runs import MAX_RUN, agent_run
from recorder.store.live import LIVE_NAME, clear_live, gateway_state, mark_live, unsealed_state
from recorder.store.writer import RecordWriter

CLAUDE_UA = "claude-cli/2.1.332 (external, sdk-cli)"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


@pytest.mark.parametrize("headers,expected", [
    ({"x-claude-code-session-id": "6f1c-aa", "user-agent": CLAUDE_UA},
     {"name": "claude-code", "run": "6f1c-aa", "by": "x-claude-code-session-id"}),
    ({"session-id": "019a-77", "originator": "codex_exec", "user-agent": "codex_exec/0.171.0"},
     {"name": "codex", "run": "019a-77", "by": "session-id"}),
    ({"x-wiretrail-run": "nightly-42", "x-wiretrail-agent": "my-bot", "user-agent": "OpenAI/Python 3.60.0"},
     {"name": "my-bot", "run": "nightly-42", "by": "x-wiretrail-run"}),
    ({"x-wiretrail-run": "r1", "user-agent": "OpenAI/Python 3.60.0"},
     {"name": "openai-python", "run": "r1", "by": "x-wiretrail-run"}),
    ({"session-id": "not-codex", "user-agent": "curl/8.5"}, None),  # only Codex's session-id names a run
    ({"user-agent": "curl/8.5"}, None),
    ({"x-wiretrail-run": "   "}, None),
])
def test_agent_run_from_headers(headers, expected):
    assert agent_run(headers) == expected


def test_declared_run_is_sanitised_and_bounded():
    got = agent_run({"x-wiretrail-run": "a\x1b[31m\nb/../" + "x" * 500, "x-wiretrail-agent": "<script>"})
    assert got["run"].startswith("a_") and len(got["run"]) == MAX_RUN
    assert set(got["run"]) <= set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@+-_")
    assert got["name"] == "_script_"


class Clock:
    def __init__(self):
        self.now = 1_800_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def registry(tmp_path):
    w = RecordWriter(fsync="never")
    w.start()
    clock = Clock()
    reg = SessionRegistry(w, tmp_path / "store", idle_timeout=600, max_duration=3600, clock=clock)
    yield reg, clock
    reg.close_all()
    assert w.stop()


def run(name, rid):
    return {"name": name, "run": rid, "by": "test"}


def test_one_session_per_run_and_the_identity_stays_in_the_key(registry):
    reg, _ = registry
    a1 = reg.begin_flow("alice", {"sub": "alice"}, ("10.0.0.1", 1), run("codex", "r1"))
    a2 = reg.begin_flow("alice", {"sub": "alice"}, ("10.0.0.1", 2), run("codex", "r2"))
    a1_again = reg.begin_flow("alice", {"sub": "alice"}, ("10.0.0.1", 3), run("codex", "r1"))
    plain = reg.begin_flow("alice", {"sub": "alice"}, ("10.0.0.1", 4))
    mallory = reg.begin_flow("mallory", {"sub": "mallory"}, ("10.0.0.1", 5), run("codex", "r1"))
    assert a1 is a1_again
    assert len({id(a1), id(a2), id(plain), id(mallory)}) == 4  # a run id never joins another identity's session
    assert a1.agent == run("codex", "r1") and plain.agent is None


def test_a_tunnel_or_refusal_joins_the_latest_run_and_a_quiet_session_closes_soon(registry):
    reg, clock = registry
    r = reg.begin_flow("alice", {"sub": "alice"}, ("10.0.0.1", 1), run("claude-code", "r1"))
    reg.end_flow(r)
    clock.now += 1
    tunnel = reg.begin_flow("alice", {"sub": "alice"}, ("10.0.0.1", 2), exchange=False)
    assert tunnel is r  # the run's telemetry tunnel is on the run's record, not a session of its own
    reg.end_flow(tunnel)
    lone = reg.begin_flow("bob", {"sub": "bob"}, ("10.0.0.2", 1), exchange=False)
    reg.end_flow(lone)
    clock.now += QUIET_IDLE + 1
    reg.expire()
    assert lone not in reg.sessions() and r in reg.sessions()  # no ever-growing empty session


def test_a_client_that_makes_up_run_ids_holds_at_most_max_runs_open(registry, monkeypatch):
    monkeypatch.setattr(sessions_module, "MAX_RUNS", 3)
    reg, clock = registry
    for i in range(5):
        clock.now += 1
        reg.end_flow(reg.begin_flow("alice", {"sub": "alice"}, ("10.0.0.1", i), run("x", f"r{i}")))
    assert sorted(s.agent["run"] for s in reg.sessions() if s in reg._open.values()) == ["r2", "r3", "r4"]


def test_the_run_is_in_session_open(tmp_path):
    w = RecordWriter(fsync="never")
    w.start()
    reg = SessionRegistry(w, tmp_path / "store", idle_timeout=600, max_duration=3600)
    reg.end_flow(reg.begin_flow("alice", {"sub": "alice"}, ("10.0.0.1", 1), run("codex", "r9")))
    reg.close_all()
    assert w.stop()
    [path] = list(iter_session_files(tmp_path / "store"))
    assert read_session(path).open_record["agent"] == {"name": "codex", "run": "r9", "by": "test"}


# -- an API key where the token belongs -------------------------------------------------------------

@pytest.mark.parametrize("value", ["sk-ant-api03-" + "A" * 40, "sk-proj-" + "b" * 40, "AIza" + "c" * 35,
                                   "0123456789abcdef0123456789abcdef"])
def test_an_api_key_is_told_apart_from_a_token(value):
    assert looks_like_api_key(value)
    with pytest.raises(IdentityError) as e:
        check_api_token(*api_token_and_header({"authorization": f"Bearer {value}"}))
    assert "x-wiretrail-token" in e.value.message and "wiretrail token" in e.value.message
    assert value not in e.value.message


def test_the_identity_header_wins_over_the_api_key():
    token, where = api_token_and_header({"x-api-key": "sk-ant-api03-" + "A" * 40, "x-wiretrail-token": JWT})
    assert (token, where) == (JWT, "x-wiretrail-token")
    check_api_token(token, where)
    assert not looks_like_api_key(JWT)


# -- open or stopped --------------------------------------------------------------------------------

def test_live_marker_tells_open_from_stopped(tmp_path):
    assert unsealed_state("open", tmp_path) == "unsealed (gateway stopped)"  # no marker
    mark_live(tmp_path)
    assert gateway_state(tmp_path) == "running" and unsealed_state("open", tmp_path) == "open"
    assert unsealed_state("recovered", tmp_path) == "unsealed (crash)"
    clear_live(tmp_path)
    assert not (tmp_path / LIVE_NAME).exists()
    # a marker left by a process that is gone (killed): stopped, even if its pid is reused later
    child = subprocess.run([sys.executable, "-c", "import os, sys; sys.path.insert(0, os.getcwd()); "
                            "from recorder.store.live import mark_live; mark_live(sys.argv[1])", str(tmp_path)],
                           cwd=os.getcwd(), capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert gateway_state(tmp_path) == "stopped"
    assert unsealed_state("open", tmp_path) == "unsealed (gateway stopped)"
    data = json.loads((tmp_path / LIVE_NAME).read_text())
    (tmp_path / LIVE_NAME).write_text(json.dumps(dict(data, host=socket.gethostname() + "-other")))
    assert unsealed_state("open", tmp_path) == "open (gateway on another host)"


def test_live_marker_of_a_zombie_is_stopped(tmp_path):
    """A gateway killed with -9 leaves its writer process a zombie until init reaps it: its
    marker's pid and start time still match, but nothing is writing."""
    child = subprocess.Popen([sys.executable, "-c", "import os, sys; sys.path.insert(0, os.getcwd()); "
                              "from recorder.store.live import mark_live; mark_live(sys.argv[1]); "
                              "sys.stdout.write('marked'); sys.stdout.flush(); sys.stdin.read()", str(tmp_path)],
                             cwd=os.getcwd(), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout.read(6) == b"marked"
        assert gateway_state(tmp_path) == "running"
        child.stdin.close()  # it exits; not waited for, it stays a zombie
        deadline = time.monotonic() + 30
        while Path(f"/proc/{child.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        assert gateway_state(tmp_path) == "stopped"
        assert unsealed_state("open", tmp_path) == "unsealed (gateway stopped)"
    finally:
        child.kill()
        child.wait()
