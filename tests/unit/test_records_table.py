"""The one table of record types (recorder/store/records.py): the reader checks against it,
Session.record refuses a type it does not hold, and docs/format.md's field tables are generated
from it."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from recorder.forensics.reader import _check_fields
from recorder.store import records
from recorder.store.sessions import Session

DOC = Path(__file__).resolve().parents[2] / "docs" / "format.md"

SAMPLE = {"string": "x", "int": 1, "number": 1.5, "bool": True, "object": {}, "list": [],
          "body": {"text": "hi", "size": 2}, "dest": {"host": "h", "port": 1, "address": None}}
WRONG = {"string": 1, "int": "1", "number": "1", "bool": 1, "object": [], "list": {}, "body": "x", "dest": "x"}


def full_record(spec: records.RecordType) -> dict:
    rec = {"v": 1, "seq": 1, "t": spec.name, "ts": 1.0, "prev": "0" * 64}
    for f in spec.fields:
        for name in f.names:
            rec[name] = f.values[0] if f.values else SAMPLE[f.type]
    return rec


def test_docs_field_tables_are_generated_from_the_table():
    doc = DOC.read_text()
    assert doc == records.render_doc(doc), "regenerate: python -m recorder.store.records"
    documented = records.documented_types(doc)
    # Every record type but the pg.* ones (their own table) and seal (it shares checkpoint's) has a table.
    want = {t for t, spec in records.RECORDS.items() if spec.documented} - {records.SEAL}
    assert set(documented) == want
    assert records.RECORDS[records.SEAL].fields == records.RECORDS[records.CHECKPOINT].fields
    for t in records.RECORDS:
        if not records.RECORDS[t].documented:
            assert f"`{t}`" in doc, f"{t} is not described in docs/format.md"


@pytest.mark.parametrize("rtype", sorted(records.RECORDS))
def test_reader_accepts_a_record_the_table_describes(rtype):
    assert _check_fields(1, full_record(records.RECORDS[rtype])) == []


@pytest.mark.parametrize("rtype", sorted(records.RECORDS))
def test_reader_reports_each_missing_required_field(rtype):
    spec = records.RECORDS[rtype]
    for name in spec.required:
        rec = full_record(spec)
        del rec[name]
        problems = [p.message for p in _check_fields(1, rec)]
        assert problems == [f"{rtype}: missing field \"{name}\""], (name, problems)


@pytest.mark.parametrize("rtype", sorted(records.RECORDS))
def test_reader_reports_a_field_of_the_wrong_type(rtype):
    spec = records.RECORDS[rtype]
    for f in spec.fields:
        rec = full_record(spec)
        rec[f.names[0]] = WRONG[f.type]
        problems = [p.message for p in _check_fields(1, rec)]
        assert len(problems) == 1 and f.names[0] in problems[0], (f.names[0], problems)


def test_the_drifts_found_in_issue_16_are_closed():
    # auth.refused and tunnel had documented required fields the reader never checked.
    refused = full_record(records.RECORDS[records.AUTH_REFUSED])
    del refused["status"]
    assert [p.message for p in _check_fields(1, refused)] == ['auth.refused: missing field "status"']
    tunnel = full_record(records.RECORDS[records.TUNNEL])
    del tunnel["port"]
    assert [p.message for p in _check_fields(1, tunnel)] == ['tunnel: missing field "port"']
    # identity.name is written and documented; remasked_from is in the format, not only in masking.md.
    doc = DOC.read_text()
    assert re.search(r"`identity` \| object \| \*required\*: [^|]*`name`", doc)
    assert "| `remasked_from` | object |" in doc


def test_a_closed_value_set_is_checked():
    rec = full_record(records.RECORDS[records.HTTP_CHUNK])
    rec["dir"] = "sideways"
    assert [p.message for p in _check_fields(1, rec)] == ["http.chunk: dir 'sideways' is not \"request\" or \"response\""]


class _Writer:
    def __init__(self):
        self.got = []

    def record(self, sid, rtype, ts, fields, ack):
        self.got.append(rtype)


def test_session_record_refuses_a_type_outside_the_table(tmp_path):
    w = _Writer()
    s = Session(id="S", key=("k",), path=tmp_path / "s", opened=0.0, last_activity=0.0, identity={}, writer=w)
    s.record(records.HTTP_ERROR, {"flow": "f", "phase": "request", "message": "m"})
    with pytest.raises(ValueError, match="not a record type"):
        s.record("http.requets", {})
    assert w.got == [records.HTTP_ERROR] and s.records == 1 and s.errors == 1


def test_session_open_carries_what_the_table_and_the_vector_say(tmp_path):
    from recorder.store.sessions import SessionRegistry

    opened = []

    class W(_Writer):
        def open_session(self, sid, path, ts, fields, ack=None):
            opened.append(fields)

    reg = SessionRegistry(W(), tmp_path, idle_timeout=60, max_duration=3600)
    reg.begin_flow("alice", {"sub": "alice"}, ("127.0.0.1", 1))
    spec = records.RECORDS[records.SESSION_OPEN]
    assert set(opened[0]) <= set(spec.required) | set(spec.optional)
    assert set(spec.required) <= set(opened[0]) and isinstance(opened[0]["opened"], float)
