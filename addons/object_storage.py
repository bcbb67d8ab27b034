"""Uploads ended sessions and the ledger to a bucket ([object_storage], recorder/store/s3.py).

After capture in the chain: `running` starts the uploader once the writer runs, `done` makes
its last pass after the writer has sealed every session. Uploading runs on a thread of its own.
"""
from __future__ import annotations

import logging

from addons.config import WiretrailConfig
from recorder.store import s3

log = logging.getLogger("wiretrail")


class ObjectStorage:
    def __init__(self, config: WiretrailConfig):
        self.config_addon = config
        self.uploader: s3.Uploader | None = None

    def running(self):
        cfg = self.config_addon.current
        if self.uploader is not None or cfg is None or cfg.object_storage.url is None:
            return
        o = cfg.object_storage
        url = s3.BucketUrl.parse(o.url)
        try:
            client = s3.client(o.endpoint_url, o.region)
            problem = s3.lock_problem(client, url)
        except Exception as e:  # noqa: BLE001 - no credentials, no endpoint: say so and stop
            log.error(f"wiretrail: object_storage: cannot reach {url}: {e}")
            return
        if problem and o.require_object_lock:
            log.error(f"wiretrail: object_storage.require_object_lock = true, but {problem}; not starting "
                      "(docs/deployment.md: a bucket with Object Lock)")
            return
        if problem:
            log.warning(f"wiretrail: object_storage: {problem}: whoever holds the bucket's credentials can delete "
                        "or overwrite uploaded sessions (set require_object_lock = true to refuse this)")
        rel = cfg.store_dir.relative_to(cfg.storage.dir).as_posix() if cfg.store_dir != cfg.storage.dir else ""
        self.uploader = s3.Uploader(cfg.store_dir, url, client, interval=o.interval, keep_local=o.keep_local,
                                    on_event=lambda m: log.info(f"wiretrail: {m}"))
        self.uploader.start(rel)
        log.info(f"wiretrail: uploading ended sessions to {url}"
                 + (" (Object Lock: COMPLIANCE)" if not problem else "")
                 + ("" if o.keep_local else "; local files deleted once uploaded"))

    def done(self):
        if self.uploader is not None:
            self.uploader.stop(self.config_addon.current.storage.stop_timeout)
            self.uploader = None
