"""open_store: the writer (thread or process) and the session registry a gateway config describes."""
from pathlib import Path

import pytest

from recorder.config import parse_config
from recorder.forensics.reader import iter_session_files, read_session
from recorder.store import signing
from recorder.store.open_store import open_store
from recorder.store.writer import RecordWriter
from recorder.store.writer_process import ProcessRecordWriter


@pytest.mark.parametrize("kind, writer_class", [("thread", RecordWriter), ("process", ProcessRecordWriter)])
def test_open_store_starts_the_configured_writer_and_a_registry_that_records_into_the_gateways_folder(
        tmp_path, kind, writer_class):
    _, _, key_id = signing.generate(tmp_path / "keys")
    signer = signing.load_signer(tmp_path / "keys" / signing.PRIVATE_NAME)
    cfg = parse_config(f'[storage]\ndir = "store"\nwriter = "{kind}"\nsigning_key = "keys/{signing.PRIVATE_NAME}"\n'
                       '[identity]\nmode = "none"\n[gateway]\nid = "gw-a"\n', source="gw.toml", base_dir=tmp_path)
    errors, events = [], []
    writer, registry = open_store(cfg, signer, on_error=errors.append, on_event=events.append)
    try:
        assert type(writer) is writer_class
        session = registry.begin_flow("alice", {"sub": "alice"}, ("127.0.0.1", 5000))
        session.record("http.error", {"flow": "f1", "phase": "request", "message": "test"})
        registry.end_flow(session)
        registry.close_all("shutdown")
    finally:
        assert writer.stop(timeout=30)
    files = list(iter_session_files(cfg.store_dir))
    assert cfg.store_dir != Path(tmp_path / "store") and len(files) == 1  # the gateway's own folder
    records = read_session(files[0]).records
    opened = records[0]
    assert opened["t"] == "session.open" and opened["gateway"]["id"] == "gw-a" and opened["key"] == key_id
    assert [r["t"] for r in records][-1] == "seal"  # signed with the signer it was given
    assert errors == []
