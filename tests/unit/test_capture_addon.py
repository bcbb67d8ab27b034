"""The config and capture addons, driven by mitmproxy's taddons/tflow.

The end-to-end tests run a real mitmdump; these pin down hook-level behaviour that is
hard to provoke from outside (the stream callable, fail closed, error phases).
"""
import asyncio
import json
import threading
import time
from pathlib import Path

import pytest
from mitmproxy import exceptions, http
from mitmproxy.flow import Error
from mitmproxy.test import taddons, tflow, tutils

from addons.capture import Capture
from addons.config import WiretrailConfig
from addons.masking import Masking
from recorder.forensics.reader import iter_session_files, read_session
from recorder.store.writer import RecordWriter
from tests.support.artifacts import recorded_body


def write_config(tmp_path: Path, extra: str = "", storage: str = "") -> Path:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f"""
[storage]
dir = "store"
{storage}
[identity]
mode = "none"
[policy]
unregistered = "record"
{extra}
"""
    )
    return cfg


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize(
    "toml, message",
    [
        ("fsync = 'sometimes'\n", "storage.fsync"),
        ("dirr = 'x'\n", "storage.dirr"),
        ("[capture]\nchunk_interval = 'soon'\n", "capture.chunk_interval"),
        ("[[connections]]\nname = 'x'\nhosts = ['a.example']\ncredential = 'env:WIRETRAIL_TEST_UNSET'\n",
         "connections[0].credential"),
    ],
)
def test_bad_config_stops_startup_naming_the_key(tmp_path, toml, message):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[identity]\nmode = 'none'\n[storage]\ndir = 'store'\n" + toml)

    async def main():
        addon = WiretrailConfig()
        with taddons.context(addon) as tctx:
            with pytest.raises(exceptions.OptionsError, match=message.replace("[", r"\[").replace("]", r"\]")):
                tctx.configure(addon, wiretrail_config=str(cfg))

    run(main())


def test_missing_config_file_is_an_options_error(tmp_path):
    async def main():
        addon = WiretrailConfig()
        with taddons.context(addon) as tctx:
            with pytest.raises(exceptions.OptionsError, match="nope.toml"):
                tctx.configure(addon, wiretrail_config=str(tmp_path / "nope.toml"))

    run(main())


class Gateway:
    """The config and capture addons in a taddons context, with helpers to drive a flow."""

    def __init__(self, tctx, cfg_addon, capture):
        self.tctx, self.cfg, self.capture = tctx, cfg_addon, capture

    async def exchange(self, flow: http.HTTPFlow, response: http.Response, chunks: list[bytes] | None = None):
        await self.capture.requestheaders(flow)
        await self.capture.request(flow)
        flow.response = response  # what the upstream answered
        self.capture.responseheaders(flow)
        if chunks is not None:
            assert callable(flow.response.stream), "a streamed reply must get the tee"
            forwarded = [flow.response.stream(c) for c in chunks] + [flow.response.stream(b"")]
            assert forwarded[:-1] == chunks, "the tee forwards every chunk untouched"
            flow.response.content = None
        self.capture.response(flow)

    async def sse_reply_coming(self, flow: http.HTTPFlow) -> None:
        """The request recorded and sent; its SSE reply's headers in, `responseheaders` not yet run."""
        await self.capture.requestheaders(flow)
        await self.capture.request(flow)
        flow.response = tutils.tresp()
        flow.response.headers["content-type"] = "text/event-stream"
        del flow.response.headers["content-length"]

    def stop(self):
        self.capture.done()
        return [read_session(p) for p in iter_session_files(self.store)]


def gateway(tmp_path, extra="", storage=""):
    cfg_path = write_config(tmp_path, extra, storage)

    class Ctx:
        async def __aenter__(self):
            self.cfg = WiretrailConfig()
            masking = Masking(self.cfg)
            self.capture = Capture(self.cfg, masking)
            self.ctx = taddons.context(self.cfg, masking, self.capture)
            tctx = self.ctx.__enter__()
            tctx.configure(self.cfg, wiretrail_config=str(cfg_path))
            self.cfg.running()
            masking.running()
            self.capture.running()
            g = Gateway(tctx, self.cfg, self.capture)
            g.store = tmp_path / "store"
            return g

        async def __aexit__(self, *exc):
            self.capture.done()
            self.ctx.__exit__(*exc)

    return Ctx()


def test_buffered_exchange_is_recorded_and_credentials_masked(tmp_path):
    async def main():
        async with gateway(tmp_path) as g:
            f = tflow.tflow()
            f.request.content = b'{"model": "gpt", "messages": []}'
            f.request.headers["authorization"] = "Bearer sk-live-very-secret"
            await g.exchange(f, tutils.tresp(content=b'{"id": "r1"}'))
            assert f.response.status_code == 200
            return g.stop(), f.id

    (s,), fid = run(main())
    assert s.state == "closed", s.problems
    types = [r["t"] for r in s.records]
    assert types == ["session.open", "http.request", "http.response", "http.end", "session.close"]
    req = s.records[1]
    assert recorded_body(s.records, fid, "request") == b'{"model": "gpt", "messages": []}'
    assert recorded_body(s.records, fid, "response") == b'{"id": "r1"}'
    auth = dict(req["headers"])["authorization"]
    assert auth.startswith("[MASKED:authorization:") and "sk-live" not in json.dumps(s.records)
    assert s.records[0]["identity"]["authenticated"] is False


def test_sse_reply_is_teed_and_rebuilds_exactly(tmp_path):
    events = [f"data: {{\"i\": {i}}}\n\n".encode() for i in range(5)]

    async def main():
        async with gateway(tmp_path) as g:
            f = tflow.tflow()
            resp = tutils.tresp()
            resp.headers["content-type"] = "text/event-stream"
            del resp.headers["content-length"]
            await g.exchange(f, resp, chunks=events)
            return g.stop(), f.id

    (s,), fid = run(main())
    resp = next(r for r in s.records if r["t"] == "http.response")
    assert resp["streamed"] is True and resp["body"] is None
    assert recorded_body(s.records, fid, "response") == b"".join(events)


@pytest.mark.parametrize("then", ["stream ends", "client gone", "shutdown"])
def test_a_streamed_reply_head_is_recorded_with_its_first_batch_not_before_its_first_chunk(tmp_path, then):
    # The first event goes out before the reply's http.response record is made (header
    # masking, the writer's queue); the record keeps the time the headers came, and however
    # the stream ends it is there, before the reply's chunks and the flow's end or error.
    async def main():
        async with gateway(tmp_path) as g:
            f = tflow.tflow()
            await g.sse_reply_coming(f)
            session = g.capture.flows[f.id].session
            before, made = time.time(), session.records
            g.capture.responseheaders(f)
            came = time.time()
            assert f.response.stream(b"data: one\n\n") == b"data: one\n\n"
            assert session.records == made, "nothing is recorded before the first chunk is forwarded"
            if then == "stream ends":
                f.response.stream(b"")
                g.capture.response(f)
                await asyncio.sleep(0)
            elif then == "client gone":
                f.error = Error("Client disconnected.")
                g.capture.error(f)
            return g.stop(), f.id, before, came

    (s,), fid, before, came = run(main())
    assert s.state == "closed", s.problems
    mine = [r for r in s.records if r.get("flow") == fid]
    assert [r["t"] for r in mine][:3] == ["http.request", "http.response", "http.chunk"], [r["t"] for r in mine]
    assert [r["t"] for r in mine][-1] == {"stream ends": "http.end", "client gone": "http.end", "shutdown": "http.error"}[then]
    head = mine[1]
    assert head["streamed"] is True and head["status"] == 200
    assert before <= head["ts"] <= came <= mine[2]["ts"], "the record keeps when the headers came"
    assert recorded_body(s.records, fid, "response") == b"data: one\n\n"


def test_large_request_body_streams_through_the_tee(tmp_path):
    async def main():
        async with gateway(tmp_path, "[capture]\nstream_threshold = 10\n") as g:
            f = tflow.tflow()
            f.request.headers["content-length"] = "100"
            await g.capture.requestheaders(f)
            assert callable(f.request.stream)
            parts = [b"a" * 40, b"b" * 60]
            assert [f.request.stream(p) for p in parts] == parts
            f.request.stream(b"")
            await g.capture.request(f)
            f.response = tutils.tresp()
            g.capture.responseheaders(f)
            g.capture.response(f)
            return g.stop(), f.id

    (s,), fid = run(main())
    req = next(r for r in s.records if r["t"] == "http.request")
    assert req["streamed"] is True and req["body"] is None
    assert recorded_body(s.records, fid, "request") == b"a" * 40 + b"b" * 60


def test_unwritable_storage_fails_closed_with_503(tmp_path):
    (tmp_path / "store").write_text("a file where the store directory should be")

    async def main():
        async with gateway(tmp_path) as g:
            f = tflow.tflow()
            await g.capture.requestheaders(f)
            await g.capture.request(f)
            return f

    f = run(main())
    assert f.response is not None and f.response.status_code == 503
    assert "could not record" in json.loads(f.response.content)["error"]["message"]


def test_a_write_stuck_past_write_timeout_is_refused_then_recorded_late_with_its_503(tmp_path, monkeypatch):
    stuck, release = threading.Event(), threading.Event()
    write_all = RecordWriter._write_all

    def hung_write_all(self, sf, data):  # a write that does not return, as on a hung NFS mount
        if stuck.is_set():
            release.wait(30)
        return write_all(self, sf, data)

    monkeypatch.setattr(RecordWriter, "_write_all", hung_write_all)

    async def main():
        async with gateway(tmp_path, "[capture]\nstream_threshold = 10\n", storage="write_timeout = 0.2") as g:
            await g.exchange(tflow.tflow(), tutils.tresp())
            stuck.set()
            refused = []
            for i in range(2):  # the first waits write_timeout; the second is refused at once
                f = tflow.tflow()
                if i == 0:  # a streamed body: recorded (and refused) in requestheaders
                    f.request.headers["content-length"] = "100"
                await g.capture.requestheaders(f)
                await g.capture.request(f)
                assert f.response is not None and f.response.status_code == 503
                g.capture.response(f)
                refused.append(f)
            assert not release.is_set() and g.capture.storage_failing == {"storage not responding"}
            stuck.clear()
            release.set()
            for _ in range(250):  # the late records' acks end the refusals
                if not g.capture.storage_failing:
                    break
                await asyncio.sleep(0.02)
            f = tflow.tflow()
            await g.capture.requestheaders(f)
            await g.capture.request(f)
            assert f.response is None and not g.capture.storage_failing
            return refused, g.stop()

    refused, sessions = run(main())
    records = [r for s in sessions for r in s.records]
    for f in refused:
        mine = [r["t"] for r in records if r.get("flow") == f.id]
        assert mine[:2] == ["http.request", "http.response"] and mine.count("http.request") == 1, mine
        assert next(r for r in records if r.get("flow") == f.id and r["t"] == "http.response")["status"] == 503


def test_fail_open_lets_traffic_pass_when_configured(tmp_path):
    (tmp_path / "store").write_text("not a directory")

    cfg = tmp_path / "gateway.toml"

    async def main_open():
        cfg_addon = WiretrailConfig()
        masking = Masking(cfg_addon)
        capture = Capture(cfg_addon, masking)
        with taddons.context(cfg_addon, capture) as tctx:
            cfg.write_text('[storage]\ndir = "store"\nfail_closed = false\n[identity]\nmode = "none"\n')
            tctx.configure(cfg_addon, wiretrail_config=str(cfg))
            cfg_addon.running()
            masking.running()
            capture.running()
            f = tflow.tflow()
            await capture.requestheaders(f)
            await capture.request(f)
            capture.done()
            return f

    f = run(main_open())
    assert f.response is None, "fail_closed = false forwards the request unrecorded"


@pytest.mark.parametrize(
    "make, phase",
    [
        (lambda f: setattr(f.server_conn, "timestamp_tcp_setup", None), "connect"),
        (lambda f: None, "response"),
    ],
)
def test_upstream_errors_are_recorded_with_their_phase(tmp_path, make, phase):
    async def main():
        async with gateway(tmp_path) as g:
            f = tflow.tflow()
            f.server_conn.timestamp_tcp_setup = 1.0
            make(f)
            await g.capture.requestheaders(f)
            await g.capture.request(f)
            f.error = Error("Server disconnected.")
            g.capture.error(f)
            return g.stop()

    (s,) = run(main())
    err = next(r for r in s.records if r["t"] == "http.error")
    assert err["phase"] == phase and err["message"]


def test_client_gone_mid_stream_keeps_what_arrived(tmp_path):
    async def main():
        async with gateway(tmp_path) as g:
            f = tflow.tflow()
            await g.sse_reply_coming(f)
            g.capture.responseheaders(f)
            f.response.stream(b"data: one\n\n")
            f.error = Error("Client disconnected.")
            g.capture.error(f)
            return g.stop(), f.id

    (s,), fid = run(main())
    assert recorded_body(s.records, fid, "response") == b"data: one\n\n"
    err = next(r for r in s.records if r["t"] == "http.error")
    assert err["phase"] == "client"


def test_flows_before_running_are_refused_not_passed_unrecorded(tmp_path):
    async def main():
        cfg_addon = WiretrailConfig()
        capture = Capture(cfg_addon, Masking(cfg_addon))
        with taddons.context(cfg_addon, capture):
            f = tflow.tflow()
            await capture.requestheaders(f)  # mitmproxy may listen before `running`
            return f

    f = run(main())
    assert f.response is not None and f.response.status_code == 503


async def answered(g: Gateway, body: bytes) -> http.HTTPFlow:
    """A flow through every capture hook up to `response` (mitmproxy sends the reply after it)."""
    f = tflow.tflow()
    await g.capture.requestheaders(f)
    await g.capture.request(f)
    f.response = tutils.tresp(content=body)
    g.capture.responseheaders(f)
    g.capture.response(f)
    return f


def test_a_reply_is_recorded_on_the_next_loop_step_not_before_it_is_sent(tmp_path):
    # mitmproxy sends the reply when the response hook returns; the records follow at once.
    async def main():
        async with gateway(tmp_path) as g:
            f = await answered(g, b'{"id": "r1"}')
            fc = g.capture.flows[f.id]
            assert fc.completion is not None and not fc.ended, "nothing recorded inside the hook"
            await asyncio.sleep(0)
            assert f.id not in g.capture.flows, "recorded on the loop's next step"
            return g.stop(), f.id

    (s,), fid = run(main())
    assert [r["t"] for r in s.records if r.get("flow") == fid] == ["http.request", "http.response", "http.end"]
    assert recorded_body(s.records, fid, "response") == b'{"id": "r1"}'


@pytest.mark.parametrize("then", ["error", "shutdown"])
def test_a_reply_answered_just_before_an_error_or_shutdown_is_still_recorded(tmp_path, then):
    async def main():
        async with gateway(tmp_path) as g:
            f = await answered(g, b'{"id": "r2"}')
            if then == "error":
                f.error = Error("Client disconnected.")
                g.capture.error(f)
            return g.stop(), f.id  # stop: done() runs before the loop's next step

    (s,), fid = run(main())
    assert s.state == "closed", s.problems
    assert [r["t"] for r in s.records if r.get("flow") == fid] == ["http.request", "http.response", "http.end"]
    assert recorded_body(s.records, fid, "response") == b'{"id": "r2"}'


@pytest.mark.parametrize(
    "fields, names, expected",
    [
        ([(b"Content-Type", b"text/event-stream")], (b"content-type",), ["text/event-stream"]),
        ([(b"X-A", b"1"), (b"x-a", b"2")], (b"x-a", b"x-b"), ["1, 2", None]),  # folded, as Headers.get does
        ([(b"Host", b"h\xffx")], (b"host",), [http.Headers([(b"Host", b"h\xffx")]).get("host")]),
        ([], (b"content-length",), [None]),
    ],
)
def test_header_values_reads_like_headers_get(fields, names, expected):
    from addons.streaming import header_values
    headers = http.Headers(fields)
    assert header_values(headers, *names) == expected
    assert expected == [headers.get(n.decode()) for n in names]


def test_the_recorded_url_is_the_masked_pretty_url_and_follows_a_new_masker(tmp_path):
    from recorder.masking.engine import Masker

    class Holder:
        masker = Masker(b"k" * 32)

    capture = Capture(WiretrailConfig(), Holder())
    secret = "sk-proj-" + "A1b2C3d4" * 5
    cases = [
        tflow.treq(host="api.example", port=443, scheme=b"https", path=b"/v1/chat?x=1"),
        tflow.treq(authority=b"api.example:8443", host="api.example", port=8443, scheme=b"https", path=b"/v1/m"),
        tflow.treq(host="10.0.0.1", port=80, scheme=b"http", path=b"/p?key=" + secret.encode()),
    ]
    cases[0].headers["host"] = "front.example"
    for req in cases:
        for _ in range(2):  # the second time from the cache
            assert capture.recorded_url(req) == Holder.masker.mask_text(req.pretty_url)
    assert secret not in capture.recorded_url(cases[2])
    Holder.masker = Masker(b"j" * 32)  # a new masker (SIGHUP): another key, other tags
    assert capture.recorded_url(cases[2]) == Holder.masker.mask_text(cases[2].pretty_url)
