"""End to end, issue 23 (no new-session penalty): sessions whose files are spares renamed into
place survive a kill -9 right after their first requests were answered: every request the upstream
got is on the record, every file is in the ledger, the store verifies, and the next start
recovers every session."""
from __future__ import annotations

import json
import signal
import subprocess
import threading
from pathlib import Path

import httpx
import pytest

from tests.support.artifacts import Artifacts
from tests.support.checks import assert_every_upstream_request_recorded, wait_until
from tests.support.clients import new_test_id
from tests.support.gateway import WIRETRAIL

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

CLIENTS = 24


def run(*args) -> subprocess.CompletedProcess:
    return subprocess.run([str(WIRETRAIL), *map(str, args)], capture_output=True, text=True, timeout=60)


def ledger_entries(store: Path) -> list[dict]:
    return [json.loads(x) for x in (store / "ledger.jsonl").read_bytes().split(b"\n") if x]


def test_kill_9_right_after_new_sessions_first_requests(start_gateway, upstream, tmp_path):
    assert run("keygen", tmp_path / "keys").returncode == 0
    priv, pub = tmp_path / "keys" / "gateway.key", tmp_path / "keys" / "gateway.pub"
    store = tmp_path / "store"
    config = {"storage": {"dir": store, "signing_key": priv}}
    gw = start_gateway(config=config)
    go = threading.Barrier(CLIENTS)
    statuses: list[int] = []

    def client(k: int) -> None:
        # Its own address: its own session, opening at the same moment as the others.
        transport = httpx.HTTPTransport(local_address=f"127.0.0.{2 + k}")
        with httpx.Client(base_url=gw.reverse_url, transport=transport, trust_env=False, timeout=30) as c:
            go.wait(10)
            r = c.post("/v1/chat/completions", content=b'{"model":"m"}',
                       headers={"x-test-id": new_test_id(), "content-type": "application/json"})
            statuses.append(r.status_code)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses == [200] * CLIENTS
    assert gw.stop(signal.SIGKILL) == -signal.SIGKILL  # at once: no close, no seal, no final fsync

    # Every request the upstream got is on the record, in a file the ledger names.
    assert len(upstream.exchanges) == CLIENTS
    assert_every_upstream_request_recorded(upstream, Artifacts(store))
    files = sorted(store.rglob("*.jsonl.zst"))
    opened = {e["session"]: e["path"] for e in ledger_entries(store) if e["t"] == "session.open"}
    assert len(files) == CLIENTS
    assert {f.relative_to(store).as_posix() for f in files} == set(opened.values())
    res = run("verify", "--key", pub, store)
    assert res.returncode == 0, res.stdout
    assert res.stdout.count("open in the ledger") >= 1 and ".spare" not in res.stdout

    gw2 = start_gateway(config=config)
    assert wait_until(lambda: sum(e["t"] == "session.recovered" for e in ledger_entries(store)) == CLIENTS)
    assert gw2.stop() == 0
    res = run("verify", "--key", pub, store)
    assert res.returncode == 0, res.stdout
    assert res.stdout.count("unsealed (crash): ") == CLIENTS, res.stdout
    # The spares the gateways left are empty files out of every reader's sight.
    spares = list((store / ".spare").iterdir())
    assert spares and all(p.stat().st_size == 0 and not p.name.endswith(".jsonl.zst") for p in spares)
    assert ".spare" not in run("ls", store).stdout
