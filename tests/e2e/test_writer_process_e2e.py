"""storage.writer = "process": the same records, masked and chained, from a writer process."""
from __future__ import annotations

import json
import os
import signal

import httpx
import pytest

from tests.e2e.test_masking_e2e import GITHUB_TOKEN, delta_text, stream_chat
from tests.support.artifacts import TEST_ID_HEADER, store_bytes
from tests.support.checks import finish, wait_for_records
from tests.support.clients import TIMEOUT, new_test_id

pytestmark = pytest.mark.e2e


def test_the_writer_process_records_streams_and_bodies(start_gateway, upstream):
    gw = start_gateway(config={"storage": {"writer": "process"}})
    stream_id, json_id = new_test_id(), new_test_id()
    text = f"token {GITHUB_TOKEN} end"
    got = stream_chat(gw, upstream, text, stream_id)
    assert delta_text(got.events) == text
    r = httpx.post(gw.reverse_url + "/v1/chat/completions", json={"model": "m", "messages": [
        {"role": "user", "content": f"my token is {GITHUB_TOKEN}"}]},
        headers={TEST_ID_HEADER: json_id}, trust_env=False, timeout=TIMEOUT)
    assert r.status_code == 200
    art = wait_for_records(gw, lambda a: len([x for x in a.records if x["t"] == "http.end"]) >= 2)
    assert art.flow(stream_id).body("response")  # the stream was recorded chunk by chunk
    recorded = json.loads(art.flow(json_id).body("request"))
    assert "[MASKED:github-pat" in recorded["messages"][0]["content"]
    assert GITHUB_TOKEN.encode() not in store_bytes(gw.store_dir)
    assert "Traceback" not in gw.log_text()
    gw.upstream = None  # the recorded bodies are masked, so they differ from what the upstream got
    art = finish(gw)  # SIGTERM: every session closed, its frame ended, the chain verifies
    assert len([r for r in art.records if r["t"] == "http.request"]) == 2


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_process_group_still_seals_every_session(start_gateway, upstream, sig):
    """Ctrl-C in a terminal signals the whole foreground process group, and systemd's stop the
    whole cgroup: the writer process must leave the shutdown to the gateway, which seals every
    session through it (before, it died at once and every session was left unsealed)."""
    gw = start_gateway(config={"storage": {"writer": "process"}})
    test_id = new_test_id()
    r = httpx.post(gw.reverse_url + "/v1/chat/completions", json={"model": "m", "messages": []},
                   headers={TEST_ID_HEADER: test_id}, trust_env=False, timeout=TIMEOUT)
    assert r.status_code == 200
    wait_for_records(gw, lambda a: any(x["t"] == "http.end" for x in a.records))
    children = [int(p) for p in open(f"/proc/{gw.proc.pid}/task/{gw.proc.pid}/children").read().split()]
    assert children, "the writer process runs"
    for pid in {os.getpgid(gw.proc.pid), *(os.getpgid(c) for c in children)}:
        os.killpg(pid, sig)  # every process of the gateway, as a terminal or systemd would
    gw.proc.wait(30)
    art = finish(gw, sig)  # exited already: each session closed, sealed, and verifies
    assert [x for x in art.records if x["t"] == "http.request"]


def test_a_killed_writer_process_fails_closed(start_gateway, upstream):
    """The writer process is the default; the OOM killer (or anyone) may kill it. From then on
    nothing reaches the upstream unrecorded: the upstream's own log is the truth."""
    from tests.support.gateway import child_pids
    from tests.support.checks import wait_until

    gw = start_gateway()  # the default writer: a process
    before = new_test_id()
    with httpx.Client(base_url=gw.reverse_url, trust_env=False, timeout=TIMEOUT) as c:
        assert c.post("/echo", content=b"a", headers={TEST_ID_HEADER: before}).status_code == 200
        writers = child_pids(gw.proc.pid)
        assert len(writers) == 1, writers
        os.kill(writers[0], signal.SIGKILL)
        assert wait_until(lambda: "writer process gone" in gw.log_text(), 10), gw.log_text()
        after = new_test_id()
        for body in (b"b", b"c" * 200_000):  # a small body and one large enough to stream
            r = c.post("/echo", content=body, headers={TEST_ID_HEADER: after})
            assert r.status_code == 503, (r.status_code, r.text)
    assert len(upstream.received(before)) == 1
    assert upstream.received(after) == [], "a request reached the upstream with no writer to record it"
    assert "refusing traffic with 503" in gw.log_text()
    gw.upstream = None
    gw.stop()
