"""The review page over several gateways' store (issue 23), end to end: two real gateways
(mitmdump processes with different `[gateway] id`) write one root, a real client (httpx through
each, with identity tokens) makes sessions, and a real `wiretrail serve ROOT` shows them, read
over HTTP and in Debian's headless Chromium. The badges come from each part's own ledger: what
`wiretrail verify ROOT` says of a file, the page says of its row. Then `wiretrail serve
s3://BUCKET/PREFIX` over moto's standalone S3 server (the stand-in bucket of the object storage
tests): ground truth is the bucket's own request log, which shows the page reads a copy taken
at start and never fetches an object per click, and no credential of the S3 config reaches a page."""
from __future__ import annotations

import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import httpx
import pytest
import zstandard

from recorder.auth.identity import mint_dev_token
from recorder.store import fleet
from tests.support.artifacts import Artifacts
from tests.support.checks import wait_until
from tests.support.clients import trust
from tests.support.review_browser import NO_SCRIPT_RAN, Serve, chromium
from tests.support.s3 import MotoS3

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

WIRETRAIL = Path(sys.executable).parent / "wiretrail"
ISSUER, AUDIENCE = "wiretrail-dev", "wiretrail"
HOSTILE = '<script>window.__pwned=1</script><img src=x onerror="window.__pwned=2">'
ROW = re.compile(r'<tr class="row" data-session="([0-9A-Z]+)" data-gateway="([^"]*)">\s*<td><span class="badge '
                 r'b-(\w+)"')


def run(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(WIRETRAIL), *map(str, args)], capture_output=True, text=True, timeout=120, **kw)


@pytest.fixture
def fleet_setup(start_gateway, upstream, tmp_path):
    """Config for gateways gw1 and gw2 writing one root, with the development identity, signing,
    and the review settings; `start(gid, **sections)` starts one."""
    assert run("keygen", tmp_path / "keys").returncode == 0
    key, pub = tmp_path / "keys" / "gateway.key", tmp_path / "keys" / "gateway.pub"
    secret_file = tmp_path / "dev.secret"
    secret_file.write_text(secrets.token_urlsafe(48))
    root = tmp_path / "fleet"

    def config(gid: str, **sections) -> dict:
        return {"storage": {"dir": root, "signing_key": key, "checkpoint_interval": 0.5}, "gateway": {"id": gid},
                "identity": {"mode": "jwt", "issuer": ISSUER, "audience": AUDIENCE,
                             "hs256_secret": f"file:{secret_file}", "review_groups": ["reviewers"]},
                "review": {"verify_keys": [pub]}, **sections}

    def token(sub: str, groups=("engineering",)) -> str:
        return mint_dev_token(secret_file.read_text(), sub=sub, groups=list(groups), issuer=ISSUER,
                              audience=AUDIENCE, ttl=3600)

    def chat(gw, sub: str, text: str) -> None:
        with httpx.Client(base_url=upstream.base_url, proxy=f"http://{sub}:{token(sub)}@127.0.0.1:{gw.proxy_port}",
                          verify=trust(gw), trust_env=False, timeout=30) as c:
            r = c.post("/v1/chat/completions", json={"model": "gpt-test",
                                                     "messages": [{"role": "user", "content": text}]})
            assert r.status_code == 200, r.text

    def start(gid: str, **sections):
        return start_gateway(config=config(gid, **sections))

    return root, pub, start, chat, token


def rows(html: str) -> dict[tuple[str, str], str]:
    """(gateway, session id) -> badge state, of the list page."""
    return {(gid, sid): state for sid, gid, state in ROW.findall(html)}


def session_id_of(path: Path) -> str:
    return path.name.split(".")[0]


def test_serve_over_two_gateways_root(fleet_setup, tmp_path):
    root, pub, start, chat, token = fleet_setup
    gw1, gw2 = start("gw1"), start("gw2")
    chat(gw1, "alice", "hello from alice on gw1")
    chat(gw2, "bob", "fix " + HOSTILE)
    chat(gw2, "carol", "hello from carol on gw2")
    assert gw2.stop() == 0  # gw2's sessions are sealed; gw1 keeps alice's open
    parts = {gid: Artifacts(root / fleet.GATEWAYS / gid) for gid in ("gw1", "gw2")}
    assert len(parts["gw1"].sessions) == 1 and len(parts["gw2"].sessions) == 2
    serve = Serve(gw1.config_path, tmp_path, str(root)).start()
    try:
        auth = {"Authorization": f"Bearer {token('rita', groups=('reviewers',))}"}
        with httpx.Client(base_url=serve.base, trust_env=False, headers=auth, timeout=30) as c:
            assert c.get("/", headers={"Authorization": ""}).status_code == 401
            listing = c.get("/")
            assert listing.status_code == 200, listing.text
            want = {("gw1", s.session_id): "open" for s in parts["gw1"].sessions}
            want |= {("gw2", s.session_id): "verified" for s in parts["gw2"].sessions}
            assert rows(listing.text) == want, listing.text
            for (gid, sid) in want:
                page = c.get(f"/g/{gid}/s/{sid}")
                assert page.status_code == 200 and f"{gid} · " in page.text and sid in page.text
                assert c.get(f"/g/{'gw2' if gid == 'gw1' else 'gw1'}/s/{sid}").status_code == 404
                assert c.get(f"/g/{gid}/s/{sid}/artifact").content == \
                    next(p for p in parts[gid].paths if session_id_of(p) == sid).read_bytes()
            bob = next(s for s in parts["gw2"].sessions if b"window.__pwned" in _plain(s.path))
            page = c.get(f"/g/gw2/s/{bob.session_id}").text
            assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page and "<script>window.__pwned" not in page

            # Tampering with one file of gw2's part: verify and the page say the same of every file.
            victim = next(p for p in parts["gw2"].paths if b"carol" in _plain(p))
            _rewrite(victim, b"hello from carol on gw2", b"hello from eve!! on gw2")
            verified = run("verify", "--key", pub, root)
            assert verified.returncode == 1, verified.stdout
            failed = {session_id_of(Path(line.split()[1])) for line in verified.stdout.splitlines()
                      if line.startswith("FAILED") and ".jsonl.zst" in line}
            assert failed == {session_id_of(victim)}, verified.stdout
            after = rows(c.get("/").text)
            assert after == {**want, ("gw2", session_id_of(victim)): "tampered"}, after
            page = c.get(f"/g/gw2/s/{session_id_of(victim)}").text
            assert "chain broken at record" in page

        # The same in a browser: both gateways' rows, each link opens its own session, nothing ran.
        with chromium(tmp_path / "profile") as ctx:
            page = ctx.new_page()
            page.goto(serve.login_link)
            assert page.url == serve.base + "/"
            assert page.locator("#sessions tr.row").count() == 3
            assert sorted(page.locator("#sessions td.gateway").all_inner_texts()) == ["gw1", "gw2", "gw2"]
            bob_row = page.locator("#sessions tr.row", has_text="bob")
            assert bob_row.locator(".badge").inner_text() == "sealed · verified"
            bob_row.locator("a.open").click()
            page.wait_for_selector("#integrity")
            assert page.url == f"{serve.base}/g/gw2/s/{bob.session_id}"
            assert page.inner_text("h1 .badge") == "sealed · verified"
            assert "<script>window.__pwned=1</script>" in page.inner_text("main")
            assert page.evaluate(NO_SCRIPT_RAN)["pwned"] is None
            page.goto(serve.base + "/")
            eve = page.locator("#sessions tr.row", has_text="carol")
            assert eve.locator(".badge").inner_text() == "tampered"
            alice = page.locator("#sessions tr.row", has_text="alice")
            assert alice.locator(".badge").inner_text() == "open" and alice.locator("td.gateway").inner_text() == "gw1"
    finally:
        serve.stop()


def _plain(path: Path) -> bytes:
    return zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())


def _rewrite(path: Path, old: bytes, new: bytes) -> None:
    data = _plain(path)
    assert old in data and len(old) == len(new)
    path.write_bytes(zstandard.ZstdCompressor().compress(data.replace(old, new)))


# -- s3://BUCKET/PREFIX -------------------------------------------------------------------------------

ACCESS_KEY = "AKIA" + secrets.token_hex(8).upper()
SECRET_KEY = "wtS3secret" + secrets.token_urlsafe(24)


@pytest.fixture
def bucket_server(tmp_path, monkeypatch):
    server = MotoS3(tmp_path).start()
    try:
        env = {**server.env, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
        for k, v in env.items():
            monkeypatch.setenv(k, v)  # the gateways and `wiretrail serve` inherit them
        yield server
    finally:
        server.stop()


def object_gets(server: MotoS3) -> int:
    """Session files the bucket served, by its own request log."""
    return sum(1 for line in server.log_path.read_text(errors="replace").splitlines()
               if '"GET ' in line and ".jsonl.zst" in line)


def test_serve_reads_a_bucket_once_and_shows_no_credential(fleet_setup, bucket_server, tmp_path):
    root, pub, start, chat, token = fleet_setup
    s3 = boto3.client("s3", endpoint_url=bucket_server.endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="review")
    upload = {"object_storage": {"url": "s3://review/fleet", "endpoint_url": bucket_server.endpoint,
                                 "interval": 0.3}}
    gw1, gw2 = start("gw1", **upload), start("gw2", **upload)
    chat(gw1, "alice", "hello from alice via the bucket")
    chat(gw2, "bob", "hello from bob via the bucket")
    assert gw1.stop() == 0 and gw2.stop() == 0  # the last pass uploads the sealed sessions and the ledgers
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket="review", Prefix="fleet/").get("Contents", [])}
    local = {gid: Artifacts(root / fleet.GATEWAYS / gid) for gid in ("gw1", "gw2")}
    for gid, art in local.items():
        for p in art.paths:
            assert "fleet/" + p.relative_to(root).as_posix() in keys, sorted(keys)
    want = {(gid, s.session_id): "verified" for gid, art in local.items() for s in art.sessions}
    shutil.rmtree(root)  # the page can only have it from the bucket

    serve = Serve(gw1.config_path, tmp_path, "s3://review/fleet").start()
    try:
        assert serve.wait_for("showing s3://review/fleet as it was at")
        fetched = object_gets(bucket_server)
        assert fetched == len(want), fetched  # each session file once, at start
        auth = {"Authorization": f"Bearer {token('rita', groups=('reviewers',))}"}
        with httpx.Client(base_url=serve.base, trust_env=False, headers=auth, timeout=30) as c:
            listing = c.get("/").text
            assert rows(listing) == want, listing
            assert "in s3://review/fleet" in listing and 'id="snapshot"' in listing
            pages = [listing]
            for _ in range(2):  # clicking around fetches nothing from the bucket
                for gid, sid in want:
                    pages.append(c.get(f"/g/{gid}/s/{sid}").text)
                    assert c.get(f"/g/{gid}/s/{sid}/artifact").status_code == 200
                pages.append(c.get("/").text)
            assert object_gets(bucket_server) == fetched
            # An object overwritten in the bucket after start: the page shows the copy it took.
            gid, sid = next(iter(want))
            k = next(k for k in keys if sid in k)
            s3.put_object(Bucket="review", Key=k, Body=b"overwritten")
            assert rows(c.get("/").text) == want
        for text in [*pages, "\n".join(serve.lines)]:
            assert SECRET_KEY not in text and ACCESS_KEY not in text
    finally:
        serve.stop()
    # A restart takes a new copy: the overwrite shows.
    again = Serve(gw1.config_path, tmp_path, "s3://review/fleet").start()
    try:
        auth = {"Authorization": f"Bearer {token('rita', groups=('reviewers',))}"}
        with httpx.Client(base_url=again.base, trust_env=False, headers=auth, timeout=30) as c:
            assert wait_until(lambda: rows(c.get("/").text).get((gid, sid)) == "tampered", 10)
    finally:
        again.stop()
