"""The review page in a real browser: sessions recorded by a real gateway run (mitmdump, TLS
upstream, httpx through the proxy with identity tokens), served by a real `wiretrail serve`, read
in Debian's headless Chromium driven by Playwright.

The main journey also writes the screenshots docs/review-list.png and docs/review-session.png,
so the README's pictures are of the page as it is.
"""
from __future__ import annotations

import json
import secrets
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import zstandard

from recorder.auth.identity import mint_dev_token
from tests.support.clients import trust
from tests.support.review_browser import NO_SCRIPT_RAN, Serve, chromium

pytestmark = [pytest.mark.e2e, pytest.mark.browser, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
WIRETRAIL = Path(sys.executable).parent / "wiretrail"
ISSUER, AUDIENCE = "wiretrail-dev", "wiretrail"
SECRET_KEY = "sk-proj-" + "Q7x9Lm2Pz8Rt4Vb6Nc3Hk5Jd1Fg0Sa" * 2  # an OpenAI-shaped key: masked before writing
LONG_LINE = "A" * 30_000  # one line, no spaces: the page must wrap it, not widen
HOSTILE_PROMPT = ('please fix <script>window.__pwned=1</script> and <img src=x onerror="window.__pwned=2"> '
                  '<a href="javascript:window.__pwned=3">this link</a> key ' + SECRET_KEY + " " + LONG_LINE)
HOSTILE_RESULT = ('<svg onload="window.__pwned=5"></svg><iframe src="javascript:window.__pwned=6"></iframe>'
                  '<b onmouseover="window.__pwned=7">bold?</b> javascript:window.__pwned=8')


def keygen(d: Path) -> tuple[Path, Path]:
    r = subprocess.run([str(WIRETRAIL), "keygen", str(d)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return d / "gateway.key", d / "gateway.pub"


@pytest.fixture
def setup(start_gateway, upstream, tmp_path):
    """A gateway with the development identity, signing, and the review settings of the same file."""
    key, pub = keygen(tmp_path / "keys")
    secret_file = tmp_path / "dev.secret"
    secret_file.write_text(secrets.token_urlsafe(48))
    config = {
        "storage": {"signing_key": key, "checkpoint_interval": 0.5},
        "identity": {"mode": "jwt", "issuer": ISSUER, "audience": AUDIENCE, "hs256_secret": f"file:{secret_file}",
                     "review_groups": ["reviewers"]},
        "review": {"verify_keys": [pub]},
    }
    gw = start_gateway(config=config)

    def token(sub: str, groups=("engineering",)) -> str:
        return mint_dev_token(secret_file.read_text(), sub=sub, groups=list(groups), issuer=ISSUER,
                              audience=AUDIENCE, ttl=3600)

    def client(sub: str) -> httpx.Client:
        return httpx.Client(base_url=upstream.base_url, proxy=f"http://{sub}:{token(sub)}@127.0.0.1:{gw.proxy_port}",
                            verify=trust(gw), trust_env=False, timeout=30)

    return gw, client, token, pub


def chat(c: httpx.Client, messages: list, tools: list | None = None) -> None:
    body = {"model": "gpt-test", "messages": messages}
    if tools:
        body["tools"] = tools
    r = c.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text


def wait_js(page, expression: str, timeout: float = 20.0):
    """Poll `expression` in the page until it is truthy. (Playwright's wait_for_function evaluates
    a string, which the page's CSP forbids: no 'unsafe-eval'.)"""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = page.evaluate(f"() => {expression}")
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {expression}")


def tool_messages(first_user: str) -> list:
    return [
        {"role": "system", "content": "You are a careful coding agent."},
        {"role": "user", "content": first_user},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_evil", "type": "function", "function": {
            "name": "fetch_url", "arguments": json.dumps({"url": "javascript:window.__pwned=4",
                                                          "note": "<script>window.__pwned=9</script>"})}}]},
        {"role": "tool", "tool_call_id": "call_evil", "content": HOSTILE_RESULT},
    ]


TOOLS = [{"type": "function", "function": {"name": "fetch_url", "description": "Fetch a URL",
                                           "parameters": {"type": "object"}}}]


def test_review_journey(setup, tmp_path):
    gw, client, token, pub = setup
    alice, bob = client("alice"), client("bob")
    chat(alice, tool_messages(HOSTILE_PROMPT), TOOLS)
    chat(bob, [{"role": "user", "content": "hello from bob"}])
    serve = Serve(gw.config_path, tmp_path).start()
    try:
        with chromium(tmp_path / "profile") as ctx:
            page = ctx.new_page()
            errors: list[str] = []
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))

            # Nothing without logging in.
            r = page.goto(serve.base + "/")
            assert r.status == 401 and page.locator("#sessions").count() == 0
            assert "Reviewers only" in page.inner_text("main")

            # The printed one-time link logs in, and leaves no token in the address bar.
            link = serve.login_link
            page.goto(link)
            assert page.url == serve.base + "/"
            assert page.locator("#sessions tr.row").count() == 2
            cookie = [c for c in ctx.cookies() if c["name"] == "wiretrail_review"][0]
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"

            # Filter the list.
            page.fill("input[name=user]", "alice")
            page.click("#filters button[type=submit]")
            rows = page.locator("#sessions tr.row")
            assert rows.count() == 1 and "alice" in rows.inner_text()
            assert "open" in rows.locator(".badge").first.inner_text()

            # Open the session: hostile content is text, and nothing ran.
            rows.locator("a.open").click()
            page.wait_for_selector("#integrity")
            text = page.inner_text("main")
            assert "<script>window.__pwned=1</script>" in text
            assert '<img src=x onerror="window.__pwned=2">' in text
            state = page.evaluate(NO_SCRIPT_RAN)
            assert state == {"pwned": None, "scripts": ["/static/review.js"], "handlers": 0, "jsLinks": 0,
                             "foreign": 0}, state
            assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth + 1"), \
                "a very long recorded line widened the page"
            masked = page.locator(".masked").first.inner_text()
            assert masked.startswith("[MASKED:openai:") and SECRET_KEY not in page.content()

            # Expand a tool call.
            call = page.locator("details.tool-call", has_text="tool call fetch_url [call_evil]").first
            assert not call.evaluate("d => d.open")
            call.locator("summary").click()
            assert call.evaluate("d => d.open")
            assert "javascript:window.__pwned=4" in call.locator("pre").inner_text()
            result = page.locator("details.tool-result", has_text="tool result fetch_url [call_evil]").first
            result.locator("summary").click()
            assert '<svg onload="window.__pwned=5"></svg>' in result.inner_text()
            assert page.evaluate(NO_SCRIPT_RAN)["pwned"] is None

            # Follow a permalink: the raw drawer around the record opens.
            perma = page.locator(".turn .facts a[href^='#seq-']").first
            target = perma.get_attribute("href")[1:]
            assert not page.locator(f"#{target}").is_visible()
            perma.click()
            assert page.url.endswith("#" + target)
            wait_js(page, f"document.getElementById('{target}').closest('details').open")
            assert page.locator(f"#{target}").is_visible()
            # ... and from a fresh load of the URL too.
            fresh = ctx.new_page()
            fresh.goto(page.url)
            wait_js(fresh, f"document.getElementById('{target}').closest('details').open")
            fresh.close()

            # Search within the session.
            page.fill("#search input[name=q]", "hello from the fake")
            page.click("#search button")
            assert "record(s) contain" in page.inner_text("#hits") and page.locator("#hits mark").count() >= 1

            # Live: the open session grows while it is on screen.
            page.goto(page.url.split("?")[0])
            assert page.get_attribute("body", "data-live") == "1"
            chat(alice, [{"role": "user", "content": "LIVE-MARKER-42 second prompt"}])
            wait_js(page, "document.body.innerText.includes('LIVE-MARKER-42')")

            # The gateway stops: the sessions are sealed; the page says verified.
            alice.close()
            bob.close()
            assert gw.stop() == 0
            page.reload()
            assert page.inner_text("h1 .badge") == "sealed · verified"
            assert "signed by key" in page.inner_text("#integrity")
            page.screenshot(path=str(DOCS / "review-session.png"))

            # Download the original artifact: copied out of its store, it verifies with the public key alone.
            with page.expect_download() as dl:
                page.click("#dl-artifact")
            saved = tmp_path / dl.value.suggested_filename
            dl.value.save_as(saved)
            v = subprocess.run([str(WIRETRAIL), "verify", "--no-ledger", "--key", str(pub), str(saved)], capture_output=True,
                               text=True, timeout=60)
            assert v.returncode == 0 and "sealed" in v.stdout, v.stdout + v.stderr
            with page.expect_download() as dl:
                page.click("#dl-har")
            har = json.loads(Path(dl.value.path()).read_text())
            assert len(har["log"]["entries"]) == 2

            page.goto(serve.base + "/")
            assert page.locator("#sessions .badge", has_text="sealed · verified").count() == 2
            page.screenshot(path=str(DOCS / "review-list.png"))

            # Tampering: one edited record, and the list and the page say so.
            bob_file = [p for p in gw.store_dir.rglob("*.jsonl.zst")
                        if b"hello from bob" in zstandard.ZstdDecompressor().decompressobj().decompress(p.read_bytes())]
            [bob_file] = bob_file
            data = zstandard.ZstdDecompressor().decompressobj().decompress(bob_file.read_bytes())
            bob_file.write_bytes(zstandard.ZstdCompressor().compress(data.replace(b"hello from bob", b"hello from eve")))
            page.reload()
            tampered = page.locator("#sessions tr.row", has_text="bob")
            assert tampered.locator(".badge").inner_text() == "tampered"
            tampered.locator("a.open").click()
            page.wait_for_selector("#integrity")
            assert page.inner_text("h1 .badge") == "tampered"
            assert page.inner_text("#integrity").startswith("chain broken at record ")
            assert not [e for e in errors if "Content Security Policy" in e or "Refused" in e], errors
    finally:
        serve.stop()


def test_refusals_in_the_browser(setup, tmp_path):
    gw, client, token, pub = setup
    with client("alice") as c:
        chat(c, [{"role": "user", "content": "secret plans of alice"}])
    serve = Serve(gw.config_path, tmp_path).start()
    try:
        with chromium(tmp_path / "profile") as ctx:
            page = ctx.new_page()

            def login_with(tok: str) -> str:
                page.goto(serve.base + "/login")
                page.fill("#token", tok)
                page.click("form[action='/login'] button")
                return page.inner_text("main")

            r = page.goto(serve.base + "/")  # no token
            assert r.status == 401 and "secret plans" not in page.content()
            text = login_with("eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl")  # a bad token
            assert "was not accepted" in text and page.locator("#sessions").count() == 0
            text = login_with(token("alice", groups=("engineering",)))  # no review group
            assert "alice is not a reviewer" in text and "reviewers" in text
            for path in ("/", "/s/" + next(gw.store_dir.rglob("*.jsonl.zst")).name.split(".")[0]):
                r = page.goto(serve.base + path)
                assert r.status in (401, 403) and "secret plans" not in page.content()
            assert not [c for c in ctx.cookies() if c["name"] == "wiretrail_review"]
            login_with(token("rita", groups=("reviewers",)))
            assert page.url == serve.base + "/" and page.locator("#sessions tr.row").count() == 1
    finally:
        serve.stop()
