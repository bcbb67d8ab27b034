"""End to end: no record is dropped. A body or SSE event too deeply nested to mask as JSON
(300 levels, with a rule keyword and a secret at the bottom) is recorded as text, masked by
the text rules, with a marker saying why; the session verifies; and `show`, `export`, `ls`
and the replay tool read it without reaching a recursion limit.
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.support import upstream as fake
from tests.support.artifacts import store_bytes
from tests.support.clients import httpx_client, new_test_id
from tests.support.gateway import REPO_ROOT, WIRETRAIL

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

SECRET = fake.NESTED_SECRET


def run(*args, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def assert_masked_as_text(body: dict) -> None:
    assert body["masked_as"] == "text" and "nested deeper than" in body["note"], body


@pytest.mark.parametrize("depth", [300, 5000])
def test_deep_json_is_recorded_as_text_both_ways_and_every_tool_reads_it(gateway, upstream, depth, tmp_path):
    ids = {"reply": new_test_id(), "sse": new_test_id(), "request": new_test_id()}
    deep = fake.nested_json(depth)
    with httpx_client(gateway, "reverse") as client:
        r = client.post(f"/nested?depth={depth}", content=b"{}", headers={"x-test-id": ids["reply"]})
        assert r.status_code == 200 and r.content == deep  # the client gets it untouched
        r = client.post(f"/nested-sse?depth={depth}", content=b"{}", headers={"x-test-id": ids["sse"]})
        assert r.status_code == 200 and r.text.count("data: ") == 5
        sse_reply = r.content
        # The request side: recorded (as text), not refused.
        r = client.post("/echo", content=deep, headers={"x-test-id": ids["request"],
                                                         "content-type": "application/json"})
        assert r.status_code == 200 and r.content == deep
    assert upstream.exchange(ids["request"]).body == deep
    assert gateway.stop() == 0
    art = gateway.artifacts()  # (finish() would compare the masked request body with the upstream's)
    assert [s.state for s in art.sessions] == ["closed"] and not art.sessions[0].problems

    reply = art.flow(ids["reply"])
    assert_masked_as_text(reply.response["body"])
    assert reply.body("response").count(b'{"a": ') == depth  # all of it, masked in place
    sse = art.flow(ids["sse"])
    marked = [c for c in sse.chunks("response") if c["body"].get("masked_as")]
    assert marked and all("event's JSON" in c["body"]["note"] for c in marked), sse.describe()
    assert sse.body("response").count(b"data: ") == 5
    assert sse.body("response").replace(b"[MASKED", b"").count(b'"i"') == sse_reply.count(b'"i"')
    request = art.flow(ids["request"])
    assert_masked_as_text(request.request["body"])
    assert not request.errors and request.response["status"] == 200
    assert SECRET.encode() not in store_bytes(gateway.store_dir)

    # Every tool reads the session without a recursion error.
    session = art.sessions[0].path
    for args in (["show", session], ["show", "--json", session], ["show", "--records", session],
                 ["ls", gateway.store_dir], ["ls", "--json", gateway.store_dir], ["export", "--har", tmp_path / "s.har", session],
                 ["export", "--mitm", tmp_path / "s.mitm", session], ["verify", gateway.store_dir]):
        res = run(WIRETRAIL, *args)
        assert res.returncode == 0 and "Recursion" not in res.stderr + res.stdout, (args, res.stderr[-2000:])
    har = json.loads((tmp_path / "s.har").read_text())
    assert len(har["log"]["entries"]) == 3
    # Replayed against the upstream: each reply is compared with the recorded one.
    res = run(sys.executable, REPO_ROOT / "scripts" / "replay.py", session, "--target", upstream.base_url,
              "--ca", upstream.ca.cert_path, "--json")
    assert "Recursion" not in res.stderr + res.stdout, res.stderr[-2000:]
    flows = json.loads(res.stdout)["flows"]
    assert len(flows) == 3 and all(f["sandbox"]["status"] == 200 for f in flows), res.stdout[-2000:]
    nested = [f for f in flows if "nested" in f["url"]]
    # The recorded reply's masked secret is not compared with the live one: counted, not a difference.
    assert nested and all(not f["first_difference"] and f.get("masked_spans", 0) >= 1 for f in nested), nested
