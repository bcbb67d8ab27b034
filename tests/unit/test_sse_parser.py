"""recorder/http/sse.py's SSEParser: a stream fed in pieces (MCP's recorded chunks, replay's live
stream) gives each event once, in the piece that completed it, whatever the cuts."""
from __future__ import annotations

import pytest

from recorder.http.sse import SSEParser, parse_sse

STREAM = ("id: 7\r\nevent: message\r\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\"}\r\n\r\n"
          ": a comment\r\n\r\n"
          "data: héllo\r\ndata: wörld\r\r"
          "id: 8\nevent: endpoint\ndata: /messages?session_id=abc\n\n"
          "data: no id of its own\n\n").encode()
EVENTS = [("message", '{"jsonrpc":"2.0","method":"notifications/progress"}', "7"),
          ("message", "héllo\nwörld", None),
          ("endpoint", "/messages?session_id=abc", "8"),
          ("message", "no id of its own", None)]  # not the id an earlier event named


def fed(pieces: list[bytes]) -> list[tuple[str, str, str | None, int]]:
    parser, out = SSEParser(), []
    for k, piece in enumerate(pieces):
        out += [(e.event, e.data, e.id, k) for e in parser.feed(piece, final=k == len(pieces) - 1)]
    return out


def test_each_event_once_with_its_own_id_whole_or_byte_by_byte():
    assert [ev[:3] for ev in fed([STREAM])] == EVENTS
    assert [ev[:3] for ev in fed([STREAM[i:i + 1] for i in range(len(STREAM))])] == EVENTS


@pytest.mark.parametrize("cut", range(1, len(STREAM)))
def test_a_cut_anywhere_changes_nothing_but_which_piece_completes_an_event(cut):
    got = fed([STREAM[:cut], STREAM[cut:]])
    assert [ev[:3] for ev in got] == EVENTS
    # An event is complete in the piece that holds its blank line (a CR may be half a CRLF).
    first_end = STREAM.index(b"\r\n\r\n") + 4
    assert got[0][3] == (0 if cut >= first_end else 1)


def test_a_stream_cut_before_its_blank_line_still_has_its_last_event():
    parser = SSEParser()
    assert parser.feed(b"data: a\n\ndata: b") == parse_sse(b"data: a\n\n")
    assert [e.data for e in parser.feed(b"", final=True)] == ["b"]


def test_an_event_waits_for_its_blank_line():
    parser = SSEParser()
    assert parser.feed(b"data: a\n") == []
    assert parser.feed(b"\r") == []  # a CR at the end may be half of a CRLF
    assert [e.data for e in parser.feed(b"\ndata: b")] == ["a"]
