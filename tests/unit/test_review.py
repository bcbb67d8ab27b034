"""The review page's data (recorder/review): rows, badges, filters, paging, the session view, access.

Stores are written by recorder's real writer with a signing key and a ledger
(tests/support/review_store.py); the HTTP checks run the real tornado application on a loopback
port and talk to it with httpx.
"""
from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import zstandard

from recorder.auth.identity import TokenVerifier, mint_dev_token
from recorder.config import ConfigError, IdentityConfig, SecretRef, parse_config
from recorder.forensics.verify import verify_file
from recorder.review.auth import COOKIE, ReviewAuth, ReviewRefused
from recorder.review.index import SessionIndex
from recorder.review.integrity import integrity_of
from recorder.review.listing import FilterError, Filters
from recorder.review.server import ReviewContext, make_app
from recorder.review.session_view import TurnView, segments, session_view
from recorder.store.signing import load_verifier
from tests.support.checks import wait_until as wait_until_true
from tests.support.disk import fill
from tests.support.review_store import Store
from tests.unit.test_integrity import IDENTITY as INTEGRITY_IDENTITY
from tests.unit.test_integrity import keys, tiny_tmpfs  # noqa: F401 (fixtures)
from tests.unit.test_integrity import writer as integrity_writer

SECRET = "s" * 48
TOOLS = [{"type": "function", "function": {"name": "read_file", "description": "Read a file", "parameters": {}}}]
HOSTILE = ('<script>window.__pwned=1</script> <img src=x onerror="window.__pwned=2"> '
           '<a href="javascript:window.__pwned=3">click</a>')


def build(tmp_path: Path) -> tuple[Store, dict]:
    st = Store(tmp_path)
    a = st.session("alice")
    msgs = [{"role": "system", "content": "You are a coding agent."}, {"role": "user", "content": "fix " + HOSTILE}]
    a.chat(msgs, tool_calls=[{"id": "call_1", "name": "read_file", "arguments": {"path": "a.py"}}], tools=TOOLS)
    msgs2 = [{"role": "system", "content": "You are a coding agent.\nNever ask."}, msgs[1],
             {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function",
              "function": {"name": "read_file", "arguments": "{\"path\": \"a.py\"}"}}]},
             {"role": "tool", "tool_call_id": "call_1", "content": "key [MASKED:openai-key:0123abcd] " + HOSTILE}]
    tools2 = TOOLS + [{"type": "function", "function": {"name": "shell", "parameters": {}}}]
    a.chat(msgs2, reply_text="done", tools=tools2, usage=(300, 7))
    a.mcp_call("search", {"q": "x"}, "found it")
    a.refused()
    a.raw("smtp.message", {"sql": "select 1", "rows": {"odd": ["shape"]}})
    a.close()
    b = st.session("bob", ip="10.0.0.10")
    b.chat([{"role": "user", "content": "hi"}], reply_text="hello", status=429)
    b.close()
    c = st.session("carol", ip="10.0.0.11")
    c.chat([{"role": "user", "content": "still going"}], reply_text="ok")
    c.leave_open()
    st.writer.stop()
    return st, {"alice": a, "bob": b, "carol": c}


@pytest.fixture
def store(tmp_path):
    return build(tmp_path)


def index_of(st: Store, keyed: bool = True) -> SessionIndex:
    return SessionIndex(st.dir, [load_verifier(st.public_key)] if keyed else None)


def rows_by_sub(page) -> dict:
    return {r.sub: r for r in page.rows}


# -- rows and badges -----------------------------------------------------------------------------


def test_rows_newest_first_with_counts_and_badges(store):
    st, s = store
    page = index_of(st).page(Filters())
    assert [r.sub for r in page.rows] == ["carol", "bob", "alice"]
    assert page.matched == 3 and not page.has_next and page.ledger_problems == []
    alice = rows_by_sub(page)["alice"]
    assert alice.session_id == s["alice"].id
    assert alice.integrity.state == "verified" and alice.integrity.label == "sealed · verified"
    assert alice.hosts == ("api.openai.com", "mcp.example.com") and alice.models == ("gpt-4o",)
    assert (alice.tokens_in, alice.tokens_out) == (400, 27)
    assert alice.tool_calls == 2  # the model's read_file call and the MCP tools/call (not the echoed one)
    assert (alice.exchanges, alice.errors, alice.refusals) == (3, 0, 1)
    assert alice.agent.name == "claude-cli"
    assert rows_by_sub(page)["bob"].errors == 1  # the 429
    assert rows_by_sub(page)["carol"].integrity.state == "unsealed"  # the writer stopped with it open: not "open"


def test_without_a_key_sealed_is_not_called_verified(store):
    st, _ = store
    alice = rows_by_sub(index_of(st, keyed=False).page(Filters()))["alice"]
    assert alice.integrity.state == "sealed" and "NOT checked" in alice.integrity.detail


def test_an_edit_that_keeps_size_and_mtime_is_still_seen(store):
    """The row cache is keyed by ctime too: `touch -r` cannot hide an edit."""
    st, s = store
    idx = index_of(st)
    assert rows_by_sub(idx.page(Filters()))["bob"].integrity.state == "verified"
    path = s["bob"].path
    st_before = os.stat(path)
    data = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    edited = data.replace(b'content\\": \\"hi', b'content\\": \\"hx')
    assert edited != data
    raw = zstandard.ZstdCompressor().compress(edited)
    path.write_bytes(raw.ljust(st_before.st_size, b"\0")[: max(len(raw), st_before.st_size)])
    os.utime(path, ns=(st_before.st_atime_ns, st_before.st_mtime_ns))
    bob = rows_by_sub(idx.page(Filters()))["bob"]
    assert bob.integrity.state == "tampered"


def test_tampered_names_the_record(store):
    st, s = store
    path = s["bob"].path
    data = zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    path.write_bytes(zstandard.ZstdCompressor().compress(data.replace(b'content\\": \\"hi', b'content\\": \\"hx')))
    v = verify_file(path, [load_verifier(st.public_key)])
    badge = integrity_of(v, True)
    assert badge.state == "tampered"
    assert re.match(r"chain broken at record \d+: prev does not match", badge.detail), badge.detail


def test_a_crashed_session_is_unsealed_after_a_crash(store):
    st, s = store
    from recorder.store.writer import RecordWriter

    w = RecordWriter(fsync="never", storage_dir=st.dir, signer=st.signer)  # the next start recovers carol's
    w.start()
    assert w.stop()
    carol = rows_by_sub(index_of(st).page(Filters()))["carol"]
    assert carol.integrity.state == "crashed"


def test_a_deleted_session_file_shows_on_the_list(store):
    st, s = store
    s["bob"].path.unlink()
    page = index_of(st).page(Filters())
    assert any("session file deleted or moved" in p and s["bob"].id in p for p in page.ledger_problems)


# -- filters and paging ----------------------------------------------------------------------------


@pytest.mark.parametrize("query, subs", [
    ({"user": "ALICE"}, ["alice"]),
    ({"user": "bob@example.com"}, ["bob"]),
    ({"host": "example.com"}, ["alice"]),
    ({"host": "openai.com"}, ["carol", "bob", "alice"]),
    ({"agent": "claude"}, ["carol", "bob", "alice"]),
    ({"agent": "cursor"}, []),
    ({"errors": "1"}, ["bob", "alice"]),
    ({"integrity": "unsealed"}, ["carol"]),
    ({"integrity": "verified"}, ["bob", "alice"]),
    ({"until": "2025-12-31"}, []),
    ({"since": "2026-01-01"}, ["carol", "bob", "alice"]),
])
def test_filters(store, query, subs):
    st, _ = store
    f = Filters.from_query(lambda n: query.get(n, ""))
    assert [r.sub for r in index_of(st).page(f).rows] == subs


@pytest.mark.parametrize("query, message", [
    ({"since": "yesterday-ish"}, "is not a time"),
    ({"integrity": "fine"}, "integrity must be one of"),
])
def test_bad_filters_say_what_to_give(query, message):
    with pytest.raises(FilterError, match=message):
        Filters.from_query(lambda n: query.get(n, ""))


def small_sessions(tmp_path, n: int) -> Store:
    st = Store(tmp_path)
    for i in range(n):
        w = st.session(f"u{i}")
        w.chat([{"role": "user", "content": str(i)}], reply_text="ok")
        w.close()
    st.writer.stop()
    return st


def test_paging(tmp_path):
    idx = index_of(small_sessions(tmp_path, 7))
    p1, p2, p3 = (idx.page(Filters(), page, 3) for page in (1, 2, 3))
    assert [r.sub for r in p1.rows] == ["u6", "u5", "u4"] and p1.has_next
    assert [r.sub for r in p2.rows] == ["u3", "u2", "u1"] and p2.has_next
    assert [r.sub for r in p3.rows] == ["u0"] and not p3.has_next


def test_the_first_page_reads_only_what_it_shows(tmp_path):
    idx = index_of(small_sessions(tmp_path, 12))
    page = idx.page(Filters(), 1, 5)
    assert page.has_next and page.matched is None and page.indexed == 6  # 5 shown + 1 that proves a next page
    assert idx.warm() == 12
    assert idx.page(Filters(), 1, 5).matched == 12


# -- the session view -------------------------------------------------------------------------------


def view_of(st: Store, w, query: str = ""):
    v = verify_file(w.path, [load_verifier(st.public_key)])
    return session_view(w.id, "rel", v, integrity_of(v, True), ["k"], query)


def test_segments_keep_tags_and_marks_apart():
    segs = segments("a [MASKED:openai-key:0123abcd] b [credential:llm] c <b>", "b")
    assert [(s.kind, s.text) for s in segs] == [
        ("text", "a "), ("masked", "[MASKED:openai-key:0123abcd]"), ("text", " "), ("mark", "b"), ("text", " "),
        ("credential", "[credential:llm]"), ("text", " c <"), ("mark", "b"), ("text", ">")]


def test_turns_diffs_tool_calls_and_unknown_records(store):
    st, s = store
    view = view_of(st, s["alice"])
    turns = [it for it in view.items if isinstance(it, TurnView)]
    assert [t.kind for t in turns] == ["http", "http", "http", "auth.refused"]
    t1, t2, t3, refused = turns
    assert t1.system.first and "".join(x.text for x in t1.system.full) == "You are a coding agent."
    assert t1.tools.first and t1.tools.added == ["read_file"]
    assert not t2.system.first and ("+", "Never ask.") in t2.system.lines
    assert t2.tools.added == ["shell"] and t2.tools.removed == [] and t2.tools.changed == []
    call = t1.reply[0].parts[0]
    assert call.kind == "tool_call" and call.label == "tool call read_file [call_1]" and call.collapsible
    result = [p for m in t2.messages for p in m.parts if p.kind == "tool_result"][0]
    assert result.label == "tool result read_file [call_1]"  # named from the call it answers
    assert ("masked", "[MASKED:openai-key:0123abcd]") in [(x.kind, x.text) for x in result.text]
    assert t3.protocol == "mcp" and t3.messages[0].parts[0].label == "tool call search [1]"
    assert refused.refusal == "forbidden: not in group"
    assert [t.tool_calls for t in turns] == [1, 0, 1, 0]  # the model's call counts where it was made, not where echoed
    assert t1.duration == "420 ms" and t1.ttfb == "250 ms" and t1.usage == "tokens 100 in, 20 out"
    assert [r.t for r in t1.records] == ["http.request", "http.response", "http.end"]
    assert t1.records[0].anchor == f"seq-{t1.first_seq}"
    unknown = [it for it in view.items if not isinstance(it, TurnView)]
    assert [(r.t, r.known) for r in unknown] == [("smtp.message", False)]
    assert ("rows", '{\n "odd": [\n  "shape"\n ]\n}') in [(k, "".join(x.text for x in v)) for k, v in unknown[0].fields]
    assert [r.t for r in view.session_records] == ["session.open", "session.close", "seal"]
    assert view.identity["sub"] == "alice" and view.integrity.state == "verified" and view.tool_calls == 2


def test_odd_records_render_generically_without_crashing(tmp_path):
    st = Store(tmp_path)
    w = st.session("x")
    w.raw("ws.message", {"flow": "wsflow", "dir": "client", "body": {"text": "<b>hi</b>", "size": 9}})
    w.raw("http.request", {"flow": "odd", "conn": 1, "connection": None, "method": "GET", "url": "x://",
                           "http_version": "1", "headers": [["only-one"], 5], "body": None})
    w.raw("mcp.call", {"tool": {"nested": [1, 2, {"deep": None}]}})
    w.close()
    st.writer.stop()
    view = view_of(st, w)
    kinds = {it.title if isinstance(it, TurnView) else it.t for it in view.items}
    assert "records of flow wsflow: ws.message" in kinds and "mcp.call" in kinds


def test_search_finds_records_with_snippets(store):
    st, s = store
    view = view_of(st, s["alice"], "ONERROR")
    assert view.hit_total == 2 and {h.t for h in view.hits} == {"http.request"}
    assert any(x.kind == "mark" and x.text == "onerror" for h in view.hits for x in h.snippet)


# -- access -----------------------------------------------------------------------------------------


def dev_identity(tmp_path, groups=("reviewers",)) -> IdentityConfig:
    (tmp_path / "secret").write_text(SECRET)
    return IdentityConfig(mode="jwt", issuer="dev", audience="wiretrail",
                          hs256_secret=SecretRef("identity.hs256_secret", f"file:{tmp_path / 'secret'}"),
                          review_groups=tuple(groups))


def token(groups=("reviewers",), sub="rev", ttl=600, secret=SECRET) -> str:
    return mint_dev_token(secret, sub=sub, groups=list(groups), issuer="dev", audience="wiretrail", ttl=ttl)


@pytest.mark.parametrize("tok, status, reason", [
    (None, 401, "missing"),
    ("not-a-jwt", 401, "malformed"),
    ({"secret": "x" * 48}, 401, "bad_signature"),
    ({"groups": ("engineering",)}, 403, "forbidden"),
])
def test_refusals(tmp_path, tok, status, reason):
    if isinstance(tok, dict):
        tok = token(**tok)  # minted now: a token minted at collection expires in a long run
    ident = dev_identity(tmp_path)
    auth = ReviewAuth(ident, TokenVerifier(ident))
    with pytest.raises(ReviewRefused) as e:
        auth.check(tok)
    assert (e.value.status, e.value.reason) == (status, reason)
    assert tok is None or tok not in e.value.message


def test_login_links_work_once(tmp_path):
    ident = dev_identity(tmp_path)
    clock = [1000.0]
    auth = ReviewAuth(ident, TokenVerifier(ident), clock=lambda: clock[0])
    n1, n2 = auth.login_link("t1", ttl=10), auth.login_link("t2", ttl=10)
    assert auth.redeem(n1) == "t1" and auth.redeem(n1) is None
    clock[0] += 11
    assert auth.redeem(n2) is None


def test_review_groups_in_the_config():
    base = '[storage]\ndir = "s"\n[identity]\nmode = "none"\n'
    config = parse_config(base.replace('"none"', '"none"\nreview_groups = ["sec"]') + '[review]\nverify_keys = ["k.pub"]',
                          source="gw.toml", base_dir=Path("/cfg"))
    assert config.identity.review_groups == ("sec",) and config.review.verify_keys == (Path("/cfg/k.pub"),)
    assert config.review.listen == "127.0.0.1:8090"
    for text, msg in [(base.replace('"none"', '"none"\nreview_groups = "sec"'), "identity.review_groups: expected an array"),
                      (base + '[review]\nlisten = "8090"', "review.listen: expected an address"),
                      (base + '[review]\nverify_key = []', 'review.verify_key: unknown key; did you mean "verify_keys"?')]:
        with pytest.raises(ConfigError, match=re.escape(msg)):
            parse_config(text, source="gw.toml", base_dir=Path("/cfg"))


# -- the application over HTTP ------------------------------------------------------------------------


class Running:
    """The tornado application on a loopback port, in a thread of its own."""

    def __init__(self, ctx: ReviewContext):
        self.ctx, self.port, self.ready = ctx, 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        async def main():
            self.loop = asyncio.get_running_loop()
            self.stop = asyncio.Event()
            server = make_app(self.ctx).listen(0, address="127.0.0.1")
            self.port = next(iter(server._sockets.values())).getsockname()[1]
            self.ready.set()
            await self.stop.wait()
            server.stop()
        asyncio.run(main())

    def __enter__(self):
        self.thread.start()
        assert self.ready.wait(10)
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)


@pytest.fixture
def served(store, tmp_path):
    st, s = store
    ident = dev_identity(tmp_path)
    logs = []
    ctx = ReviewContext(store=st.dir, index=index_of(st), auth=ReviewAuth(ident, TokenVerifier(ident)), key_ids=["k"])
    ctx.log = logs.append
    with Running(ctx) as base:
        yield base, s, ctx, logs


def test_nothing_is_served_to_anonymous_callers(served):
    base, s, _, _ = served
    with httpx.Client(base_url=base, trust_env=False) as c:
        for path in ("/", f"/s/{s['alice'].id}", f"/s/{s['alice'].id}/artifact", f"/s/{s['alice'].id}/har",
                     f"/s/{s['alice'].id}/mitm", f"/s/{s['alice'].id}/poll"):
            for headers in ({}, {"Authorization": "Bearer junk"}, {"Authorization": f"Bearer {token(groups=('x',))}"},
                            {"Cookie": f"{COOKIE}=junk"}):
                r = c.get(path, headers=headers)
                assert r.status_code in (401, 403), (path, headers, r.status_code)
                for recorded in ("alice@example.com", "coding agent", "claude-cli", "api.openai.com", "carol"):
                    assert recorded not in r.text, (path, recorded)  # (the login form echoes only the path asked for)
                assert r.headers["content-security-policy"].startswith("default-src 'none'; script-src 'self'")


def test_pages_escape_recorded_content_and_carry_the_csp(served):
    base, s, _, _ = served
    with httpx.Client(base_url=base, trust_env=False, headers={"Authorization": f"Bearer {token()}"}) as c:
        r = c.get(f"/s/{s['alice'].id}")
        assert r.status_code == 200
        assert "<script>window.__pwned" not in r.text and "onerror=\"window" not in r.text
        assert 'href="javascript:' not in r.text
        assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in r.text
        assert len(re.findall(r"<script\b", r.text)) == 1  # ours, from /static
        assert "style=" not in r.text  # no inline style anywhere (CSP style-src 'self')
        h = r.headers
        assert "'unsafe-inline'" not in h["content-security-policy"] and h["x-content-type-options"] == "nosniff"
        assert h["cache-control"] == "no-store" and h["referrer-policy"] == "no-referrer"
        r = c.get("/")
        assert r.status_code == 200 and r.text.count('<tr class="row"') == 3


def test_downloads(served):
    base, s, _, _ = served
    with httpx.Client(base_url=base, trust_env=False, headers={"Authorization": f"Bearer {token()}"}) as c:
        r = c.get(f"/s/{s['alice'].id}/artifact")
        assert r.content == s["alice"].path.read_bytes()
        assert r.headers["content-disposition"] == f'attachment; filename="{s["alice"].id}.jsonl.zst"'
        har = c.get(f"/s/{s['alice'].id}/har").json()
        assert len(har["log"]["entries"]) == 3
        flows = c.get(f"/s/{s['alice'].id}/mitm").content
        assert flows.startswith(b"") and len(flows) > 100 and b"api.openai.com" in flows
        assert c.get("/s/NOSUCHSESSION/artifact").status_code == 404


def test_login_sets_a_strict_httponly_cookie_and_refuses_other_sites(served):
    base, s, ctx, logs = served
    with httpx.Client(base_url=base, trust_env=False) as c:
        r = c.post("/login", data={"token": token(), "next": "//evil.example/x"}, headers={"Origin": base})
        assert r.status_code == 303 and r.headers["location"] == "/"  # never off-site
        cookie = r.headers["set-cookie"]
        assert cookie.startswith(f"{COOKIE}=") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
        assert c.get("/").status_code == 200
        for other_site in ({"Origin": "http://evil.example"}, {"Sec-Fetch-Site": "cross-site", "Origin": "null"},
                           {"Sec-Fetch-Site": "same-site"}):
            r = c.post("/login", data={"token": token()}, headers=other_site)
            assert r.status_code == 403 and "set-cookie" not in r.headers, other_site
        r = c.post("/login", data={"token": token(groups=("eng",))}, headers={"Origin": base})
        assert r.status_code == 403 and "not a reviewer" in r.text
    nonce = ctx.auth.login_link(token())
    with httpx.Client(base_url=base, trust_env=False) as c:
        r = c.get(f"/login/once/{nonce}")
        assert r.status_code == 303 and "HttpOnly" in r.headers["set-cookie"]
        assert c.get("/").status_code == 200
        assert c.get(f"/login/once/{nonce}").status_code == 401  # spent
    assert not any(nonce in line for line in logs)  # the access log never holds a login link


def test_serve_refuses_to_start_without_identity_or_review_groups(tmp_path):
    (tmp_path / "store").mkdir()
    cases = {
        'mode = "none"': 'identity.mode is "none"',
        'mode = "jwt"\nissuer = "i"\naudience = "a"\nhs256_secret = "env:WT_REVIEW_TEST_SECRET"':
            "identity.review_groups is empty",
    }
    for identity, message in cases.items():
        cfg = tmp_path / "gw.toml"
        cfg.write_text(f'[storage]\ndir = "store"\n[identity]\n{identity}\n')
        r = subprocess.run([str(Path(sys.executable).parent / "wiretrail"), "serve", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=60, env={**os.environ, "WT_REVIEW_TEST_SECRET": SECRET})
        assert r.returncode == 2 and message in r.stderr, r.stderr


def test_live_poll_changes_when_the_file_grows(served):
    base, s, _, _ = served
    with httpx.Client(base_url=base, trust_env=False, headers={"Authorization": f"Bearer {token()}"}) as c:
        before = c.get(f"/s/{s['carol'].id}/poll").json()["version"]
        page = c.get(f"/s/{s['carol'].id}").text
        assert 'data-live="1"' in page and f'data-version="{before}"' in page
        with open(s["carol"].path, "ab") as f:
            f.write(b"\0")
        time.sleep(0.01)
        assert c.get(f"/s/{s['carol'].id}/poll").json()["version"] != before
        assert 'data-live="0"' in c.get(f"/s/{s['alice'].id}").text


def _rechain_ledger(path: Path, edit_at: int) -> None:
    """Edit one ledger entry and re-chain the lines after it, keeping their signatures (what
    someone without the key can do)."""
    import hashlib

    import orjson

    lines = path.read_bytes().splitlines()
    out, prev = [], "0" * 64
    for i, line in enumerate(lines):
        e = orjson.loads(line)
        if i == edit_at:
            e["ts"] = e["ts"] + 1
        e["prev"] = prev
        new = orjson.dumps(e) if i >= edit_at else line
        out.append(new)
        prev = hashlib.sha256(new).hexdigest()
    path.write_bytes(b"\n".join(out) + b"\n")


@pytest.mark.parametrize("edit_at", [1, -1])
def test_a_rewritten_ledger_is_caught_with_one_signature_check_per_batch(store, edit_at):
    st, s = store
    ledger = st.dir / "ledger.jsonl"
    n = len(ledger.read_bytes().splitlines())
    _rechain_ledger(ledger, edit_at % n)
    page = index_of(st).page(Filters())
    assert any("ledger signature does not verify" in p for p in page.ledger_problems), page.ledger_problems
    assert index_of(st, keyed=False).page(Filters()).ledger_problems == []  # the chain alone cannot tell


def test_the_ledger_is_followed_as_it_grows(tmp_path):
    st = Store(tmp_path)
    w = st.session("a")
    w.chat([{"role": "user", "content": "1"}], reply_text="ok")
    w.leave_open()
    idx = index_of(st)
    deadline = time.monotonic() + 10
    while idx.page(Filters()).matched != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert idx.page(Filters()).rows[0].integrity.state == "open"
    w.close()
    st.writer.stop()
    page = idx.page(Filters())
    assert page.rows[0].integrity.state == "verified" and page.ledger_problems == []


def test_a_link_from_another_site_reloads_once_to_send_the_strict_cookie(served):
    base, s, _, _ = served
    with httpx.Client(base_url=base, trust_env=False) as c:
        r = c.get(f"/s/{s['alice'].id}", headers={"Sec-Fetch-Site": "cross-site"})
        assert r.status_code == 401 and '<meta http-equiv="refresh" content="0">' in r.text
        r = c.get(f"/s/{s['alice'].id}", headers={"Sec-Fetch-Site": "same-origin"})  # the reload: no loop
        assert r.status_code == 401 and "http-equiv" not in r.text


# -- damage (verify exit 3) and PostgreSQL sessions ----------------------------------------------------


def damaged_and_pg(tmp_path: Path) -> tuple[Store, dict]:
    st = Store(tmp_path)
    d = st.session("dora")
    d.chat([{"role": "user", "content": "hi"}], reply_text="hello")
    d.raw("http.error", {"flow": "gapflow", "phase": "record", "lost": "http.response", "by": "gateway",
                         "message": "the record could not be encoded"})
    d.close()
    p = st.session("pete")
    p.raw("pg.connect", {"conn": "c1", "connection": "app-db", "client": {"ip": "10.0.0.9", "port": 5000, "tls": None,
                                                                          "params": {}},
                         "upstream": {"host": "db.internal", "port": 5432, "user": "app", "database": "shop",
                                      "tls": None, "auth": "scram-sha-256", "backend_pid": 42},
                         "server_version": "16.4"})
    p.raw("pg.query", {"conn": "c1", "n": 0, "sql": "select *\n  from orders where id = 7"})
    p.raw("pg.result", {"conn": "c1", "n": 0, "i": 0, "tag": "SELECT 3", "rows": 3, "duration_ms": 1.5})
    p.raw("pg.parse", {"conn": "c1", "n": 1, "statement": "", "sql": "delete from t where x = $1",
                       "param_types": ["int4"]})
    p.raw("pg.bind", {"conn": "c1", "n": 2, "portal": "", "statement": "", "params": ["1"]})
    p.raw("pg.execute", {"conn": "c1", "n": 3, "portal": ""})
    p.raw("pg.result", {"conn": "c1", "n": 3, "tag": None, "rows": 0,
                        "error": {"sqlstate": "42501", "severity": "ERROR", "message": "permission denied for table t"}})
    p.raw("pg.end", {"conn": "c1", "reason": "client", "duration_s": 2.5, "statements": 2,
                     "bytes": {"client": 100, "server": 200}})
    p.raw("pg.refused", {"conn": "c2", "connection": "app-db", "reason": "forbidden", "sqlstate": "28000",
                         "message": "pete is not in a group allowed to use app-db"})
    p.close()
    st.writer.stop()
    return st, {"dora": d, "pete": p}


def test_a_damaged_session_has_its_own_badge_not_tampered(tmp_path):
    """verify's exit 3 (the gateway recorded that it could not write part of the session) is not
    tampering, and not intact either: its own state, label and sentence, the gap listed."""
    st, s = damaged_and_pg(tmp_path)
    dora = rows_by_sub(index_of(st).page(Filters()))["dora"]
    assert dora.integrity.state == "damaged" and dora.integrity.label == "damaged · storage failed"
    assert dora.integrity.detail.startswith("damaged, not tampered with") and "intact" in dora.integrity.detail
    assert any("GAP at seq" in p and "http.response" in p for p in dora.integrity.problems)
    assert rows_by_sub(index_of(st).page(Filters(integrity="damaged"))).keys() == {"dora"}
    view = view_of(st, s["dora"])
    assert view.integrity.state == "damaged"
    doc = (Path(__file__).resolve().parents[2] / "docs" / "review.md").read_text()
    from recorder.review.integrity import STATES
    assert all(f"| {label} |" in doc for label in STATES.values()), "docs/review.md: a badge is not documented"


def test_a_postgres_session_is_counted_and_summarised_like_http(tmp_path):
    st, s = damaged_and_pg(tmp_path)
    pete = rows_by_sub(index_of(st).page(Filters()))["pete"]
    assert pete.hosts == ("db.internal",)
    assert (pete.exchanges, pete.errors, pete.refusals) == (2, 1, 1)  # query + execute; the 42501; the refusal
    view = view_of(st, s["pete"])
    records = [it for it in view.items if not isinstance(it, TurnView)]
    records += [r for it in view.items if isinstance(it, TurnView) for r in it.records]
    lines = {r.t + " " + "".join(x.text for x in r.summary) for r in records if r.t.startswith("pg.")}
    assert not [r.t for r in records if r.t.startswith("pg.") and not r.known]
    for want in ("pg.connect connect app@db.internal:5432/shop [app-db] (auth scram-sha-256, server 16.4)",
                 "pg.query #0 query: select * from orders where id = 7",
                 "pg.result #0 SELECT 3, 3 rows in 1.5 ms",
                 "pg.parse #1 parse (unnamed): delete from t where x = $1",
                 "pg.bind #2 bind (unnamed) to (unnamed): 1 parameter",
                 "pg.execute #3 execute (unnamed)",
                 "pg.result #3 error 42501: permission denied for table t",
                 "pg.end end (client) after 2.5 s, 2 statements",
                 "pg.refused refused (forbidden, SQLSTATE 28000): pete is not in a group allowed to use app-db"):
        assert want in lines, (want, sorted(lines))


def test_a_session_the_gateway_could_not_write_at_all_is_listed_as_damage(tiny_tmpfs, keys, tmp_path):
    """A session whose every record met a full disk has no file (removed once its signed
    session.failed entry was written): no row, but a damage line above the list, not a ledger problem."""
    from recorder.store import signing as signing_mod
    from recorder.store.ledger import LEDGER_NAME, RESERVE
    from recorder.store.sessions import SessionRegistry

    signer = signing_mod.load_signer(keys[0])
    store = tiny_tmpfs / "store"
    w = integrity_writer(store, signer)
    reg = SessionRegistry(w, store, idle_timeout=60, max_duration=600, signing_key_id=signer.key_id)
    # The disk is filled only once the ledger holds its reserve (taken just after the file is made).
    assert wait_until_true(lambda: (store / LEDGER_NAME).exists() and (store / LEDGER_NAME).stat().st_blocks * 512 >= RESERVE)
    fill(tiny_tmpfs)
    acked = threading.Event()
    s = reg.begin_flow("u", INTEGRITY_IDENTITY, ("10.0.0.1", 1))
    s.record("http.error", {"flow": "f", "phase": "x", "message": os.urandom(8192).hex()}, ack=lambda e: acked.set())
    assert acked.wait(5)
    assert wait_until_true(lambda: not list(store.rglob("*.jsonl.zst")))
    w.stop()
    page = SessionIndex(store, [signer.verifier]).page(Filters())
    assert page.rows == [] and page.ledger_problems == []
    assert len(page.ledger_damage) == 1 and page.ledger_damage[0].startswith("damaged, not tampered with: session ")
    assert "disk full" in page.ledger_damage[0]
    ident = dev_identity(tmp_path)
    ctx = ReviewContext(store=store, index=SessionIndex(store, [signer.verifier]),
                        auth=ReviewAuth(ident, TokenVerifier(ident)), key_ids=["k"])
    ctx.log = lambda *a: None
    with Running(ctx) as base, httpx.Client(base_url=base, trust_env=False,
                                            headers={"Authorization": f"Bearer {token()}"}) as c:
        r = c.get("/")
        assert r.status_code == 200 and 'class="banner damage ledger-damage"' in r.text
        assert "ledger-problem" not in r.text
