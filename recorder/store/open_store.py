"""The gateway's store as its config describes it: the record writer and the session registry
over it, built and started."""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from recorder.store.anchors import AnchorSpec
from recorder.store.sessions import SessionRegistry
from recorder.store.signing import Signer
from recorder.store.writer import RecordWriter, StorageError
from recorder.store.writer_process import ProcessRecordWriter

if TYPE_CHECKING:
    from recorder.config import GatewayConfig


def open_store(
    cfg: GatewayConfig,
    signer: Signer | None,
    *,
    on_error: Callable[[StorageError], None],
    on_event: Callable[[str], None],
) -> tuple[RecordWriter | ProcessRecordWriter, SessionRegistry]:
    """Build the writer and the registry and start the writer, which first recovers the sessions
    a crash left open (ledger), then records. Writing (masking, hashing, compression, disk,
    signing) runs on a thread of the gateway, or with storage.writer = "process" in a process of
    its own, outside the proxy's GIL. `on_error` and `on_event` are called on the writer's thread."""
    writer_class = ProcessRecordWriter if cfg.storage.writer == "process" else RecordWriter
    writer = writer_class(
        fsync=cfg.storage.fsync,
        fsync_interval=cfg.storage.fsync_interval,
        on_error=on_error,
        storage_dir=cfg.store_dir,
        signer=signer,
        checkpoint_interval=cfg.storage.checkpoint_interval,
        retention_days=cfg.storage.retention_days,
        on_event=on_event,
        anchors=AnchorSpec.from_config(cfg.anchors),
        queue_limit=cfg.storage.queue_limit,
    )
    registry = SessionRegistry(
        writer,
        cfg.store_dir,
        idle_timeout=cfg.sessions.idle_timeout,
        max_duration=cfg.sessions.max_duration,
        signing_key_id=signer.key_id if signer else None,
        gateway_id=cfg.gateway.id,
    )
    writer.start()
    return writer, registry
