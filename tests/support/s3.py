"""moto's standalone S3 server (`moto_server`), the stand-in bucket of the object storage tests:
no real S3 server installs from the registries reachable here."""
from __future__ import annotations

import subprocess
from pathlib import Path

from tests.support.checks import wait_until
from tests.support.gateway import BIN_DIR, _accepts, free_port

CREDS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}


class MotoS3:
    def __init__(self, workdir: Path):
        self.port = free_port()
        self.log_path = Path(workdir) / "moto.log"
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a gateway or the CLI needs to reach it (boto3 reads AWS_ENDPOINT_URL itself)."""
        return {**CREDS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self) -> "MotoS3":
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([str(BIN_DIR / "moto_server"), "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        if not wait_until(lambda: _accepts(self.port), 30):
            self.stop()
            raise RuntimeError(f"moto_server did not listen: {self.log_path.read_text()[-2000:]}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
