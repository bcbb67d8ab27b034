"""Object storage: sealed sessions and the ledger, uploaded to an S3-compatible bucket.

The bucket mirrors the gateway's store, key for key under the bucket's prefix:
`<prefix>/gateways/<id>/YYYY/MM/DD/<session>.jsonl.zst` (keyed by gateway, date and session)
and `<prefix>/gateways/<id>/ledger.jsonl` (the ledger with its signed heads, uploaded after
the sessions it names). So the readers check a bucket exactly as they check a directory:
`mirror()` copies it to a local folder first.

The uploader (a thread of the gateway, never the event loop) uploads a session once its
ledger entry says it ended (closed, failed, recovered), with its SHA-256 sent as the object's
checksum (the server refuses a body that does not match it). It keeps nothing in memory that
a crash would lose: each pass asks the bucket which files it already holds (with the same
checksum), so a crash mid-upload is resumed by the next start. A local file is deleted only
after its upload is confirmed, and only with `keep_local = false`.

With `require_object_lock`, the gateway checks at start that the bucket has Object Lock with a
COMPLIANCE default retention, so that nobody (an admin included) can delete or overwrite an
uploaded version before it expires; otherwise it does not start.
"""
from __future__ import annotations

import base64
import hashlib
import logging
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from recorder.store import format_v1
from recorder.store.ledger import ENDINGS, LEDGER_NAME, read_ledger

log = logging.getLogger(__name__)

SCHEME = "s3://"


class ObjectStorageError(Exception):
    pass


@dataclass(frozen=True)
class BucketUrl:
    bucket: str
    prefix: str  # "" or "a/b" (no leading or trailing slash)

    @classmethod
    def parse(cls, url: str) -> "BucketUrl":
        if not url.startswith(SCHEME):
            raise ValueError(f"not an s3:// URL: {url}")
        bucket, _, prefix = url[len(SCHEME):].partition("/")
        if not bucket:
            raise ValueError(f"no bucket in {url}")
        return cls(bucket, prefix.strip("/"))

    def key(self, rel: str) -> str:
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def __str__(self) -> str:
        return SCHEME + self.bucket + (f"/{self.prefix}" if self.prefix else "")


def is_url(text: str) -> bool:
    return str(text).startswith(SCHEME)


def client(endpoint_url: str | None = None, region: str | None = None):
    """A boto3 S3 client; credentials come from boto3's own chain (environment, profile, role)."""
    import boto3
    from botocore.config import Config

    return boto3.client("s3", endpoint_url=endpoint_url, region_name=region,
                        config=Config(retries={"max_attempts": 5, "mode": "standard"}))


def sha256_b64(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return base64.b64encode(h.digest()).decode("ascii")


def lock_problem(s3, url: BucketUrl) -> str | None:
    """Why the bucket does not protect uploads with a COMPLIANCE default retention, or None."""
    try:
        conf = s3.get_object_lock_configuration(Bucket=url.bucket).get("ObjectLockConfiguration", {})
    except Exception as e:  # noqa: BLE001 - botocore raises per-code classes; the message is what matters
        return f"the bucket {url.bucket} has no Object Lock configuration ({_error(e)})"
    if conf.get("ObjectLockEnabled") != "Enabled":
        return f"Object Lock is not enabled on the bucket {url.bucket}"
    retention = conf.get("Rule", {}).get("DefaultRetention", {})
    if retention.get("Mode") != "COMPLIANCE":
        return (f"the bucket {url.bucket} has no COMPLIANCE default retention (it has "
                f"{retention.get('Mode') or 'none'}): in GOVERNANCE mode an admin can delete uploads")
    return None


def _error(e: Exception) -> str:
    code = getattr(e, "response", {}).get("Error", {}).get("Code") if hasattr(e, "response") else None
    return f"{code}: {e}" if code else str(e)


def _remote_checksum(s3, url: BucketUrl, key: str) -> str | None:
    try:
        head = s3.head_object(Bucket=url.bucket, Key=url.key(key), ChecksumMode="ENABLED")
    except Exception as e:  # noqa: BLE001
        if getattr(e, "response", {}).get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return head.get("ChecksumSHA256")


def upload(s3, url: BucketUrl, path: Path, key: str) -> str:
    """Put one file with its SHA-256 as the checksum the server checks; returns the checksum."""
    digest = sha256_b64(path)
    with open(path, "rb") as f:
        s3.put_object(Bucket=url.bucket, Key=url.key(key), Body=f, ChecksumAlgorithm="SHA256", ChecksumSHA256=digest,
                      ContentType="application/zstd" if key.endswith(".zst") else "application/jsonl")
    if _remote_checksum(s3, url, key) != digest:
        raise ObjectStorageError(f"{url.key(key)}: the bucket does not hold the checksum just uploaded")
    return digest


class Uploader:
    """Uploads the ended sessions of one gateway's store, then its ledger, every `interval` s."""

    def __init__(self, store: Path, url: BucketUrl, s3, *, interval: float, keep_local: bool,
                 on_event: Callable[[str], None] | None = None):
        self.store = Path(store)
        self.url = url
        self.s3 = s3
        self.interval = interval
        self.keep_local = keep_local
        self.on_event = on_event or log.info
        self.rel = ""  # the store's path under the bucket prefix (gateways/<id> or "")
        self._done: dict[str, str] = {}  # rel path -> checksum confirmed in the bucket
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.uploaded = 0
        self.last_error: str | None = None

    def start(self, rel: str = "") -> None:
        self.rel = rel
        self._thread = threading.Thread(target=self._run, name="wiretrail-upload", daemon=True)
        self._thread.start()

    def stop(self, timeout: float) -> None:
        """One last pass (sessions sealed at shutdown), bounded by `timeout`."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                self.on_event(f"object storage: the last upload pass did not finish within {timeout:.0f} s; "
                              "what is left is uploaded at the next start")

    def _run(self) -> None:
        while True:
            stopping = self._stop.wait(self.interval)
            try:
                self.upload_pass()
                self.last_error = None
            except Exception as e:  # noqa: BLE001 - keep the local files, say why, retry next pass
                msg = _error(e)
                if msg != self.last_error:
                    self.on_event(f"object storage: upload to {self.url} failed: {msg}; the local files are "
                                  "kept and the upload is retried")
                self.last_error = msg
            if stopping:
                return

    def _key(self, rel: str) -> str:
        return f"{self.rel}/{rel}" if self.rel else rel

    def upload_pass(self) -> int:
        """Upload what ended and is not in the bucket yet; then the ledger. Returns the count."""
        lpath = self.store / LEDGER_NAME
        if not lpath.exists():
            return 0
        # One snapshot of the ledger (up to its last whole line) decides what is uploaded, and is
        # the ledger uploaded after those sessions: every ended session it names is in the bucket.
        data = lpath.read_bytes()
        with tempfile.NamedTemporaryFile(prefix="wiretrail-ledger-", suffix=".jsonl") as snap:
            snap.write(data[: data.rfind(b"\n") + 1])
            snap.flush()
            return self._upload_from(Path(snap.name))

    def _upload_from(self, snapshot: Path) -> int:
        state = read_ledger(snapshot, None).state
        count = 0
        for entry in state.sessions.values():
            if entry.end is None or entry.end.get("t") not in ENDINGS or entry.path in self._done:
                continue
            path = self.store / entry.path
            if not path.is_file():
                continue
            key = self._key(entry.path)
            digest = sha256_b64(path)
            if _remote_checksum(self.s3, self.url, key) != digest:
                upload(self.s3, self.url, path, key)
                count += 1
            self._done[entry.path] = digest
            if not self.keep_local:
                path.unlink()
        if count or not self._done.get(LEDGER_NAME):
            upload(self.s3, self.url, snapshot, self._key(LEDGER_NAME))
            self._done[LEDGER_NAME] = "1"
        self.uploaded += count
        if count:
            self.on_event(f"object storage: uploaded {count} session(s) and the ledger to {self.url}")
        return count


def mirror(url_text: str, dest: Path, endpoint_url: str | None = None, region: str | None = None) -> Path:
    """Copy every object under the URL's prefix to `dest`, keeping the layout; returns dest."""
    url = BucketUrl.parse(url_text)
    s3 = client(endpoint_url, region)
    prefix = url.prefix + "/" if url.prefix else ""
    n = 0
    skipped: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=url.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            target = safe_target(dest, rel)
            if target is None:
                skipped.append(obj["Key"])
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(url.bucket, obj["Key"], str(target))
            n += 1
    if skipped:
        log.warning(f"{url}: {len(skipped)} object(s) that are not a session file or a ledger were not read, "
                    f"e.g. {skipped[0]!r}")
    if n == 0:
        raise FileNotFoundError(f"no session files or ledgers under {url}")
    return dest


def safe_target(dest: Path, rel: str) -> Path | None:
    """Where an object's key (below the prefix) goes in the local copy, or None: only session
    files and ledgers, and never outside `dest` (a key is whatever its writer chose)."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or any(p in ("", ".", "..") for p in parts) or "\\" in rel:
        return None
    if not (parts[-1].endswith(format_v1.FILE_SUFFIX) or parts[-1] == LEDGER_NAME):
        return None
    target = dest / Path(*parts)
    return target if Path(dest) in target.parents else None


def local_copy(path_text: str) -> tuple[str, tempfile.TemporaryDirectory | None]:
    """A reader's path as a local one: an s3:// URL is mirrored into a temporary folder (the
    endpoint and region come from AWS_ENDPOINT_URL / AWS_REGION, as for the AWS CLI)."""
    if not is_url(path_text):
        return path_text, None
    import os

    tmp = tempfile.TemporaryDirectory(prefix="wiretrail-s3-")
    mirror(path_text, Path(tmp.name), os.environ.get("AWS_ENDPOINT_URL"), os.environ.get("AWS_REGION"))
    return tmp.name, tmp
