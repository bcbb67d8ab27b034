"""Assertions shared by the end-to-end tests."""
from __future__ import annotations

import signal
import time

from tests.support.artifacts import TEST_ID_HEADER, Artifacts, FlowRecords, header, independent_chain
from tests.support.upstream import Exchange, FakeUpstream

# The streaming check: the client must see the events spread over at least this share
# of the time the upstream took to send them (a buffering proxy delivers them at once).
SPACING_SHARE = 0.7


def assert_streamed_spacing(arrivals: list[float], sent: list[float]) -> None:
    """Events reached the client spaced as the upstream sent them, not all at the end."""
    assert len(arrivals) >= 2 and len(sent) >= 2, (arrivals, sent)
    sent_span = sent[-1] - sent[0]
    got_span = arrivals[-1] - arrivals[0]
    assert arrivals[0] < sent[-1], (
        f"the first event reached the client {arrivals[0] - sent[-1]:.3f} s after the upstream sent the last one: "
        "the stream was buffered"
    )
    assert got_span >= SPACING_SHARE * sent_span, (
        f"the client got the events within {got_span:.3f} s; the upstream spread them over {sent_span:.3f} s: "
        "the stream was buffered"
    )


def assert_exchange_recorded(upstream: FakeUpstream, art: Artifacts, test_id: str) -> tuple[Exchange, FlowRecords]:
    """The upstream got the request exactly once, its http.request record exists, was
    made before the request reached the upstream, and holds the exact body the upstream got."""
    ex = upstream.exchange(test_id)  # exactly once
    flow = art.flow(test_id)
    req = flow.request
    assert req is not None, f"no http.request record for {test_id}:\n{flow.describe()}"
    assert req["ts"] <= ex.started_at, (
        f"http.request of {test_id} was recorded at {req['ts']}, after the upstream had the request ({ex.started_at})"
    )
    assert req["method"] == ex.method
    assert req["url"] == upstream.base_url + ex.target, (req["url"], upstream.base_url + ex.target)
    assert flow.body("request") == ex.body, "the recorded request body differs from what the upstream received"
    return ex, flow


def assert_record_fields(flow: FlowRecords, *, mode: str, streamed_response: bool, streamed_request: bool = False):
    """The http.request / http.response / http.end records carry the fields of PLAN.md."""
    req, resp, end = flow.request, flow.response, flow.end
    assert req is not None and resp is not None and end is not None, flow.describe()
    for key in ("flow", "conn", "connection", "method", "url", "http_version", "headers", "body", "streamed", "mode"):
        assert key in req, f"http.request lacks {key!r}: {sorted(req)}"
    assert isinstance(req["conn"], str) and req["conn"]
    assert req["mode"] == mode
    assert req["http_version"].startswith("HTTP/")
    assert all(isinstance(h, list) and len(h) == 2 for h in req["headers"]), req["headers"]
    assert req["streamed"] is streamed_request
    assert (req["body"] is None) is streamed_request, req["body"]
    for key in ("flow", "status", "reason", "http_version", "headers", "body", "streamed"):
        assert key in resp, f"http.response lacks {key!r}: {sorted(resp)}"
    assert resp["streamed"] is streamed_response
    assert (resp["body"] is None) is streamed_response, resp["body"]
    for key in ("flow", "size", "duration_ms", "ttfb_ms"):
        assert key in end, f"http.end lacks {key!r}: {sorted(end)}"
    assert set(end["size"]) >= {"request", "response"}
    # Without Content-Encoding, decoded and wire sizes agree. wire_size and the decoded
    # meaning of size are checked by test_http_end_sizes_are_decoded_and_wire_sizes_are_wire.
    assert end["size"]["request"] == len(flow.body("request")), (end, len(flow.body("request")))
    assert end["size"]["response"] == len(flow.body("response")), (end, len(flow.body("response")))
    assert end["duration_ms"] >= 0 and end["ttfb_ms"] is not None and 0 <= end["ttfb_ms"] <= end["duration_ms"]
    # Records of a flow come in order: request, (request chunks), response, chunks, end.
    types = [r["t"] for r in flow.records]
    assert types[0] == "http.request" and types[-1] == "http.end", types
    for direction in ("request", "response"):
        chunks = flow.chunks(direction)
        assert [c["n"] for c in chunks] == list(range(len(chunks))), f"{direction} chunk numbers: {[c['n'] for c in chunks]}"


def assert_in_order(text: str, *needles: str) -> None:
    """Each needle occurs in `text`, after the one before it."""
    pos = 0
    for n in needles:
        at = text.find(n, pos)
        assert at >= 0, f"{n!r} not found after position {pos} in:\n{text}"
        pos = at + len(n)


def wait_until(predicate, timeout: float = 10.0) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; its last answer."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def wait_for_records(gw, predicate, timeout: float = 10.0) -> Artifacts:
    """Read the store until `predicate(artifacts)` holds (the writer works in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        art = gw.artifacts()
        if predicate(art) or time.monotonic() > deadline:
            return art
        time.sleep(0.1)


def assert_every_upstream_request_recorded(upstream: FakeUpstream, art: Artifacts) -> None:
    """No request reached the upstream without its http.request record, made before it
    arrived, with the body the upstream got; and none reached it twice."""
    recorded = [f for f in art.flows() if f.request is not None]
    unmatched = list(recorded)
    for ex in upstream.exchanges:
        ex.done.wait(10)
        url = upstream.base_url + ex.target
        match = None
        for f in unmatched:
            req = f.request
            if req["method"] == ex.method and req["url"] == url and header(req["headers"], TEST_ID_HEADER) == ex.test_id:
                match = f
                break
        assert match is not None, f"{ex.method} {ex.target} (x-test-id {ex.test_id}) reached the upstream unrecorded\n{art.summary()}"
        unmatched.remove(match)
        assert match.request["ts"] <= ex.started_at, f"{ex.target}: recorded after it reached the upstream"
        if ex.received_at:  # the whole body arrived
            assert match.body("request") == ex.body, f"{ex.target}: recorded request body differs from the upstream's"
    if ex_ids := [ex.test_id for ex in upstream.exchanges if ex.test_id]:
        assert len(ex_ids) == len(set(ex_ids)), f"a request reached the upstream twice: {sorted(ex_ids)}"


def finish(gw, sig: int = signal.SIGTERM) -> Artifacts:
    """Stop the gateway with `sig` and check that every session closed cleanly and verifies,
    and (when the gateway has an `upstream`) that every request the upstream got is recorded."""
    code = gw.stop(sig)
    assert code == 0, f"mitmdump exited with {code} on {signal.Signals(sig).name}"
    art = gw.artifacts()
    assert art.sessions, f"no session file under {gw.store_dir}"
    for s in art.sessions:
        assert not s.problems, f"{s.path}: {[str(p) for p in s.problems]}"
        assert s.state == "closed", f"{s.path}: state {s.state}\n{art.summary()}"
        assert s.frame_ended, f"{s.path}: the zstd frame is not ended"
        last = s.records[-1]
        assert last["t"] == "session.close" and last["reason"] == "shutdown", last
        records, ended = independent_chain(s.path)
        assert ended and len(records) == len(s.records)
        flows = {r["flow"] for r in s.records if "flow" in r}
        counts = last["counts"]
        assert counts["records"] == len(s.records), (counts, len(s.records))
        assert counts["flows"] == len(flows), (counts, len(flows))
        assert counts["errors"] == sum(1 for r in s.records if r["t"] == "http.error"), counts
        opened = s.records[0]
        assert opened["t"] == "session.open" and opened["session"] == s.session_id
        assert opened["identity"]["authenticated"] is False
    if getattr(gw, "upstream", None) is not None:
        assert_every_upstream_request_recorded(gw.upstream, art)
    res = gw.verify_cli()
    assert res.returncode == 0, f"wiretrail verify exited {res.returncode}:\n{res.stdout}\n{res.stderr}"
    return art
