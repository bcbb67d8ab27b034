"""The review page's web application (tornado, Jinja2 templates shipped in this package).

Read-only. Every response carries a strict Content-Security-Policy (scripts and styles from
this server's /static only: no inline script, no inline style, no frames, forms post only
here), no-store caching and no referrer. Pages and downloads need a reviewer (auth.py); only
the login form and the static files are served to anyone.

Building a page reads and verifies a session file: that runs on worker threads, so a large
session does not stall the server's event loop.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import orjson
import tornado.web
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from recorder.commands.common import human_duration
from recorder.forensics.export_har import export_har
from recorder.forensics.export_mitm import export_mitm
from recorder.review.auth import COOKIE, ReviewAuth, Reviewer, ReviewRefused
from recorder.review.index import SessionIndex
from recorder.review.integrity import STATES, integrity_of
from recorder.review.listing import FilterError, Filters
from recorder.review.session_view import iso, session_view

STATIC_DIR = Path(__file__).with_name("static")
PAGE_SIZE = 50
STEM = r"[A-Za-z0-9_-]{1,80}"
PART = r"[A-Za-z0-9_][A-Za-z0-9._-]{0,140}"  # a part of a fleet's root (recorder/store/fleet.py)

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), clipboard-read=()",
}


@dataclass
class ReviewContext:
    """What every handler needs."""

    store: Path
    index: SessionIndex
    auth: ReviewAuth
    key_ids: list[str]
    label: str | None = None  # what the list calls the store (an s3:// URL read from a local copy)
    snapshot: str | None = None  # when the store is a copy: when it was taken, said on every list
    secure_cookies: bool = False  # set the cookie's Secure flag (the page is served over https)
    executor: concurrent.futures.Executor | None = None
    log = None  # callable(str) for the access log; default stderr


def make_templates() -> Environment:
    env = Environment(
        loader=PackageLoader("recorder.review", "templates"),
        autoescape=select_autoescape(enabled_extensions=("html",), default_for_string=True, default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["STATES"] = STATES
    env.filters["iso"] = iso
    env.filters["duration"] = human_duration
    return env


def _local_path(target: str | None) -> str:
    """A redirect target that stays on this server: a path, never //host or a scheme."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    if any(ord(c) < 0x21 for c in target):
        return "/"
    return target


class Base(tornado.web.RequestHandler):
    ctx: ReviewContext
    templates: Environment
    reviewer: Reviewer | None = None
    needs_reviewer = True

    def initialize(self, ctx: ReviewContext, templates: Environment):
        self.ctx, self.templates = ctx, templates

    def set_default_headers(self):
        for k, v in SECURITY_HEADERS.items():
            self.set_header(k, v)
        self.set_header("Cache-Control", "no-store")
        self.clear_header("Server")

    def token(self) -> str | None:
        auth = self.request.headers.get("Authorization", "")
        scheme, _, rest = auth.strip().partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            return rest.strip()
        return self.get_cookie(COOKIE) or None

    async def prepare(self):
        if not self.needs_reviewer:
            return
        token = self.token()
        try:
            if token and self.ctx.auth.cached(token) is not None:
                self.reviewer = self.ctx.auth.check(token)  # no I/O: the verifier's cache answers
            else:
                self.reviewer = await self.run(self.ctx.auth.check, token)
        except ReviewRefused as e:
            self.refuse(e)

    def refuse(self, e: ReviewRefused):
        self.set_status(e.status)
        if e.status == 401:
            self.set_header("WWW-Authenticate", 'Bearer realm="wiretrail review"')
        # A link followed from another site arrives without the SameSite=Strict cookie: one
        # reload from this page (same-site) sends it. A second miss shows the login form.
        retry = (self.get_cookie(COOKIE) is None and self.request.method == "GET"
                 and self.request.headers.get("Sec-Fetch-Site") == "cross-site")
        self.page("login.html", message=e.message, status=e.status, next=self.request.uri, retry=retry)
        raise tornado.web.Finish()

    async def run(self, fn, *args):
        """fn(*args) on a worker thread; the index's background pass gives way meanwhile."""
        def job():
            with self.ctx.index.serving():
                return fn(*args)
        return await asyncio.get_running_loop().run_in_executor(self.ctx.executor, job)

    def page(self, name: str, **values):
        values.setdefault("reviewer", self.reviewer)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(self.templates.get_template(name).render(**values))

    def write_error(self, status_code: int, **kwargs):
        # Never a traceback: the page says what failed, the server's log has the rest.
        reason = self._reason if status_code != 500 else "the page could not be built; the server log says why"
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(self.templates.get_template("error.html").render(
            status=status_code, message=reason, reviewer=self.reviewer))

    def check_same_origin(self):
        """Forms post only from this server's own pages (besides SameSite=Strict)."""
        # Browsers send Sec-Fetch-Site; with Referrer-Policy no-referrer their Origin is "null",
        # so Origin is only the fallback (older browsers; curl sends neither).
        site = self.request.headers.get("Sec-Fetch-Site")
        origin = self.request.headers.get("Origin")
        own = f"{self.request.protocol}://{self.request.host}"
        ok = site in ("same-origin", "none") if site is not None else origin is None or origin == own
        if not ok:
            raise tornado.web.HTTPError(403, reason="a form of another site cannot post here")


class ListHandler(Base):
    async def get(self):
        try:
            filters = Filters.from_query(lambda n: self.get_query_argument(n, ""))
        except FilterError as e:
            filters, error = Filters(), str(e)
        else:
            error = None
        try:
            page = max(1, min(1_000_000, int(self.get_query_argument("page", "1"))))
        except ValueError:
            page = 1
        result = await self.run(self.ctx.index.page, filters, page, PAGE_SIZE)

        def link(p: int) -> str:
            return "/?" + urlencode({**filters.query(), "page": str(p)})

        self.page("list.html", result=result, filters=filters, error=error, link=link, keys=self.ctx.key_ids,
                  store=self.ctx.label or str(self.ctx.store), snapshot=self.ctx.snapshot)


class SessionBase(Base):
    async def entry(self, part: str, stem: str):
        entry = await self.run(self.ctx.index.find, stem, part)
        if entry is None:
            where = f"in the store of {part}" if part else "in the store"
            raise tornado.web.HTTPError(404, reason=f"no session {stem} {where}")
        return entry


class SessionHandler(SessionBase):
    async def get(self, stem: str, part: str = ""):
        entry = await self.entry(part, stem)
        query = self.get_query_argument("q", "").strip()[:200]
        view, version = await self.run(self._build, entry, query)
        self.page("session.html", s=view, version=version)

    def _build(self, entry, query):
        index = self.ctx.index
        v = index.verdict(entry)
        integrity = integrity_of(v, bool(index.verifiers))
        part_name = index.part_name(entry.part) if entry.part else ""
        return (session_view(entry.stem, entry.rel, v, integrity, self.ctx.key_ids, query, part=entry.part,
                             part_name=part_name), _version(entry.path))


def _version(path: Path) -> str:
    """Changes whenever the file does (for live updates)."""
    try:
        st = os.stat(path)
    except OSError:
        return "gone"
    return f"{st.st_size}-{st.st_mtime_ns}-{st.st_ctime_ns}"


class PollHandler(SessionBase):
    async def get(self, stem: str, part: str = ""):
        entry = await self.entry(part, stem)
        self.set_header("Content-Type", "application/json")
        self.finish(orjson.dumps({"version": _version(entry.path)}))


class DownloadHandler(SessionBase):
    async def get(self, stem: str, kind: str, part: str = ""):
        entry = await self.entry(part, stem)
        data, ctype, name = await self.run(self._make, entry.path, stem, kind)
        self.set_header("Content-Type", ctype)
        self.set_header("Content-Disposition", f'attachment; filename="{name}"')
        self.finish(data)

    @staticmethod
    def _make(path: Path, stem: str, kind: str) -> tuple[bytes, str, str]:
        from recorder.forensics.reader import read_session

        if kind == "artifact":
            return path.read_bytes(), "application/zstd", f"{stem}.jsonl.zst"
        read = read_session(path)
        if kind == "har":
            return orjson.dumps(export_har(read), option=orjson.OPT_INDENT_2), "application/json", f"{stem}.har"
        with tempfile.TemporaryDirectory(prefix="wiretrail-review-") as d:
            out = Path(d) / "flows"
            export_mitm(read, out)
            return out.read_bytes(), "application/octet-stream", f"{stem}.mitm"


class LoginHandler(Base):
    needs_reviewer = False

    def get(self):
        self.page("login.html", message=None, status=200, next=_local_path(self.get_query_argument("next", "/")),
                  retry=False)

    async def post(self):
        self.check_same_origin()
        token = self.get_body_argument("token", "").strip()
        target = _local_path(self.get_body_argument("next", "/"))
        try:
            reviewer = await self.run(self.ctx.auth.check, token)
        except ReviewRefused as e:
            self.set_status(e.status)
            self.page("login.html", message=e.message, status=e.status, next=target, retry=False)
            return
        self.login(token, reviewer, target)

    def login(self, token: str, reviewer: Reviewer, target: str):
        expires = reviewer.identity.expires
        max_age = max(1, int(expires - time.time())) if expires else 8 * 3600
        self.set_cookie(COOKIE, token, path="/", max_age=max_age, httponly=True, samesite="Strict",
                        secure=self.ctx.secure_cookies)
        self.redirect(target, status=303)


class LoginOnceHandler(LoginHandler):
    async def get(self, nonce: str):
        token = self.ctx.auth.redeem(nonce)
        if token is None:
            self.set_status(401)
            self.page("login.html", status=401, next="/", retry=False,
                      message="this login link was used already or has expired (each link works once); "
                              "run `wiretrail serve` again for a new one, or paste a token below")
            return
        try:
            reviewer = await self.run(self.ctx.auth.check, token)
        except ReviewRefused as e:
            self.set_status(e.status)
            self.page("login.html", message=e.message, status=e.status, next="/", retry=False)
            return
        self.login(token, reviewer, "/")


class LogoutHandler(Base):
    needs_reviewer = False

    def post(self):
        self.check_same_origin()
        self.clear_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=self.ctx.secure_cookies)
        self.redirect("/login", status=303)


class NotFoundPage(Base):
    def prepare(self):  # unknown paths: 404 without asking who it is
        raise tornado.web.HTTPError(404)


class Static(tornado.web.StaticFileHandler):
    def set_default_headers(self):
        for k, v in SECURITY_HEADERS.items():
            self.set_header(k, v)
        self.set_header("Cache-Control", "no-cache")


def _access_log(ctx: ReviewContext):
    def log(handler: tornado.web.RequestHandler):
        path = handler.request.path
        if path.startswith("/login/once/"):
            path = "/login/once/…"  # the nonce is a credential until it is used
        who = getattr(handler, "reviewer", None)
        line = (f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} {handler.get_status()} "
                f"{handler.request.method} {path} {1000 * handler.request.request_time():.0f}ms "
                f"{who.identity.sub if who else '-'}")
        (ctx.log or (lambda s: print(s, file=sys.stderr, flush=True)))(line)
    return log


def make_app(ctx: ReviewContext) -> tornado.web.Application:
    if ctx.executor is None:
        ctx.executor = concurrent.futures.ThreadPoolExecutor(max_workers=2, thread_name_prefix="wiretrail-review")
    templates = make_templates()
    kw = {"ctx": ctx, "templates": templates}
    return tornado.web.Application(
        [
            (r"/", ListHandler, kw),
            (rf"/s/(?P<stem>{STEM})", SessionHandler, kw),
            (rf"/s/(?P<stem>{STEM})/poll", PollHandler, kw),
            (rf"/s/(?P<stem>{STEM})/(?P<kind>artifact|har|mitm)", DownloadHandler, kw),
            (rf"/g/(?P<part>{PART})/s/(?P<stem>{STEM})", SessionHandler, kw),
            (rf"/g/(?P<part>{PART})/s/(?P<stem>{STEM})/poll", PollHandler, kw),
            (rf"/g/(?P<part>{PART})/s/(?P<stem>{STEM})/(?P<kind>artifact|har|mitm)", DownloadHandler, kw),
            (r"/login", LoginHandler, kw),
            (r"/login/once/([A-Za-z0-9_-]{20,100})", LoginOnceHandler, kw),
            (r"/logout", LogoutHandler, kw),
            (r"/static/(review\.css|review\.js|favicon\.svg)", Static, {"path": str(STATIC_DIR)}),
        ],
        default_handler_class=NotFoundPage,
        default_handler_args=kw,
        log_function=_access_log(ctx),
        xheaders=False,
        compress_response=True,
    )
