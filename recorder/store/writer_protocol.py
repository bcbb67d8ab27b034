"""What every record writer offers, and the messages between the gateway and its writer process.

`RecordWriter` (a thread, recorder/store/writer.py) and `ProcessRecordWriter` (a child process,
recorder/store/writer_process.py) are used the same way by sessions, capture and the tests:
`Writer` names that interface, and `check_settings` the checks both make of their settings.

The process writer's frames (a 4-byte length and a pickle) each hold one of the messages below:
named tuples, so that both ends read fields by name and a new field is added in one place.
Bodies inside `fields` travel as calls of writer_child's body/chunk functions (their maskers are
rebuilt in the child from `MaskerSpec`).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, NamedTuple, Protocol

FSYNC_POLICIES = ("batch", "always", "never")

Ack = Callable[[Any], None]  # called once with None (written) or a StorageError


@dataclass(frozen=True)
class WriterSettings:
    """How a writer writes; both writers take these as keyword arguments, checked here.

    `storage_dir` given: keep `<storage_dir>/ledger.jsonl` (recovery at start, retention).
    `anchors` (with a storage dir): send each durable ledger head to those sinks (AnchorSpec).
    `queue_limit`: body bytes queued beyond which the feeding side is slowed (0: none)."""

    fsync: str = "batch"
    fsync_interval: float = 0.05
    storage_dir: Path | None = None
    checkpoint_interval: float = 5.0
    retention_days: float = 0
    queue_limit: int = 0
    anchors: Any = None

    def __post_init__(self):
        if self.fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {FSYNC_POLICIES}, got {self.fsync!r}")
        if self.storage_dir is not None:
            object.__setattr__(self, "storage_dir", Path(self.storage_dir))

    def as_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Writer(Protocol):
    """A record writer: records are handed over on the event loop and written elsewhere."""

    on_error: Callable | None
    on_event: Callable | None

    def start(self) -> None: ...

    def open_session(self, session_id: str, path: Path, ts: float, fields: dict, ack: Ack | None = None) -> None: ...

    def record(self, session_id: str, rtype: str, ts: float, fields: dict, ack: Ack | None = None) -> None: ...

    def close_session(self, session_id: str, ts: float, fields: dict, ack: Ack | None = None) -> None: ...

    def barrier(self, ack: Ack) -> None: ...

    def flush_soon(self) -> None: ...

    def stop(self, timeout: float = 30.0) -> bool: ...

    def pending_bytes(self) -> int: ...

    def unwritten(self) -> str: ...

    def wait_opened(self, timeout: float) -> "StorageError | None": ...


# -- gateway -> writer process ------------------------------------------------------------------

class Init(NamedTuple):
    options: dict  # RecordWriter's keyword arguments, with "signing_key" the key id or None
    private_key: bytes | None  # the raw Ed25519 key, when signing


class Open(NamedTuple):
    session_id: str
    path: Path
    ts: float
    fields: dict
    ack_id: int | None


class Record(NamedTuple):
    session_id: str
    rtype: str
    ts: float
    fields: dict
    ack_id: int | None


class Close(NamedTuple):
    session_id: str
    ts: float
    fields: dict
    ack_id: int | None


class Barrier(NamedTuple):
    ack_id: int | None


class Flush(NamedTuple):
    ack_id: None = None


class MaskerSpec(NamedTuple):
    spec: Any  # Masker.spec: (masking config, key, known secrets); the child builds its Masker from it


class Stop(NamedTuple):
    timeout: float


# Sent without waiting for company: someone waits on them, or they end something.
URGENT = (Close, Barrier, Flush)

# -- writer process -> gateway ------------------------------------------------------------------


class Acked(NamedTuple):
    ack_id: int
    error: tuple[str, str] | None  # (cause, detail) of a StorageError, or None when written


class Failed(NamedTuple):
    cause: str
    detail: str
    flow: str | None


class Opened(NamedTuple):
    """The store's first opening is done: its ledger open (error None) or not."""
    error: tuple[str, str] | None


class Event(NamedTuple):
    text: str


class Stopped(NamedTuple):
    ok: bool = True
