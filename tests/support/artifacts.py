"""Reading what the gateway recorded, for assertions.

Sessions are read with recorder.forensics.reader (the code under test). `independent_chain`
re-checks a file with nothing but zstandard and hashlib, so a reader bug cannot make
a chain assertion pass on its own.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import zstandard

from recorder.forensics.exchange import exchanges
from recorder.forensics.reader import SessionRead, iter_session_files, read_session

TEST_ID_HEADER = "x-test-id"


def header(headers: list, name: str) -> str | None:
    name = name.lower()
    for k, v in headers or ():
        if k.lower() == name:
            return v
    return None


def recorded_body(records: list[dict], flow: str, direction: str) -> bytes:
    """One direction's recorded body of a flow, as the exchange model (replay, exports) rebuilds it."""
    ex = next((e for e in exchanges(records) if e.flow == flow), None)
    if ex is None:
        raise KeyError(f"no records for flow {flow}")
    return {"request": ex.request_body, "response": ex.response_body}[direction]


@dataclass
class FlowRecords:
    """The records of one flow, grouped by type."""

    flow: str
    session: SessionRead
    records: list[dict] = field(default_factory=list)

    def of(self, t: str) -> list[dict]:
        return [r for r in self.records if r["t"] == t]

    @property
    def request(self) -> dict | None:
        found = self.of("http.request")
        assert len(found) <= 1, f"flow {self.flow} has {len(found)} http.request records"
        return found[0] if found else None

    @property
    def response(self) -> dict | None:
        found = self.of("http.response")
        assert len(found) <= 1, f"flow {self.flow} has {len(found)} http.response records"
        return found[0] if found else None

    @property
    def end(self) -> dict | None:
        found = self.of("http.end")
        assert len(found) <= 1, f"flow {self.flow} has {len(found)} http.end records"
        return found[0] if found else None

    @property
    def errors(self) -> list[dict]:
        return self.of("http.error")

    def chunks(self, direction: str) -> list[dict]:
        return [r for r in self.of("http.chunk") if r["dir"] == direction]

    def body(self, direction: str) -> bytes:
        return recorded_body(self.session.records, self.flow, direction)

    def describe(self) -> str:
        """The flow's records, short, for assertion messages."""
        out = []
        for r in self.records:
            r = dict(r)
            body = r.get("body")
            if isinstance(body, dict):
                r["body"] = {k: (v[:80] + "..." if isinstance(v, str) and len(v) > 80 else v) for k, v in body.items()}
            r.pop("headers", None)
            r.pop("prev", None)
            out.append(json.dumps(r, ensure_ascii=False))
        return "\n".join(out)


class Artifacts:
    """Every session file under a store directory."""

    def __init__(self, store_dir: Path):
        self.store_dir = Path(store_dir)
        self.paths = list(iter_session_files(self.store_dir)) if self.store_dir.exists() else []
        self.sessions = [read_session(p) for p in self.paths]

    @property
    def records(self) -> list[dict]:
        return [r for s in self.sessions for r in s.records]

    def flows(self) -> list[FlowRecords]:
        out: dict[tuple[str, str], FlowRecords] = {}
        for s in self.sessions:
            for r in s.records:
                if isinstance(r.get("flow"), str):
                    key = (str(s.path), r["flow"])
                    out.setdefault(key, FlowRecords(r["flow"], s)).records.append(r)
        return list(out.values())

    def flows_with_test_id(self, test_id: str) -> list[FlowRecords]:
        return [
            f for f in self.flows() if f.request is not None and header(f.request["headers"], TEST_ID_HEADER) == test_id
        ]

    def flow(self, test_id: str) -> FlowRecords:
        """The one flow whose request carried `x-test-id: <test_id>`."""
        found = self.flows_with_test_id(test_id)
        assert len(found) == 1, f"expected one recorded flow for {test_id}, found {len(found)}\n{self.summary()}"
        return found[0]

    def summary(self) -> str:
        lines = []
        for s in self.sessions:
            lines.append(f"{s.path.name}: state={s.state} records={len(s.records)} problems={[str(p) for p in s.problems]}")
            for r in s.records:
                extra = r.get("url") or r.get("reason") or r.get("phase") or r.get("dir") or ""
                lines.append(f"  {r.get('seq')} {r.get('t')} {r.get('flow', '')} {extra}")
        return "\n".join(lines) or f"(no session files under {self.store_dir})"


def independent_chain(path: Path) -> tuple[list[dict], bool]:
    """Decode a session file with zstandard alone and check seq and prev by hand.

    Returns (records, frame_ended). Raises AssertionError on a broken chain.
    """
    d = zstandard.ZstdDecompressor().decompressobj()
    data = d.decompress(Path(path).read_bytes())
    assert data.endswith(b"\n"), f"{path}: the content does not end with a newline"
    prev = "0" * 64
    records = []
    for seq, line in enumerate(data[:-1].split(b"\n")):
        rec = json.loads(line)
        assert rec["v"] == 1 and rec["seq"] == seq, f"{path}: line {seq} has v={rec.get('v')} seq={rec.get('seq')}"
        assert rec["prev"] == prev, f"{path}: seq {seq} prev does not match the previous line's hash"
        prev = hashlib.sha256(line).hexdigest()
        records.append(rec)
    return records, d.eof


def store_bytes(store_dir: Path) -> bytes:
    """Every session file's decompressed content, as stored (an unended frame included):
    for asserting that a secret or token appears nowhere in the store."""
    out = b""
    for path in sorted(Path(store_dir).rglob("*.jsonl.zst")):
        out += zstandard.ZstdDecompressor().decompressobj().decompress(path.read_bytes())
    return out
