"""A real PostgreSQL server for tests: initdb into a temporary directory, scram-sha-256
authentication, TLS on (the test CA's server certificate), loopback only, a free port.

PostgreSQL refuses to run as root, so as root it runs as the `postgres` user (the Debian
package makes it). `log_statement = 'all'` and `log_connections` make the server's own log the
ground truth of what reached the database.

    pg = PgServer(test_ca).start()
    pg.superuser()                      # a psycopg connection as the superuser (Unix socket)
    pg.log_since(mark)                  # what the server logged after pg.log_mark()
    pg.restart(); pg.stop()
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg

from tests.support.gateway import free_port
from tests.support.tls import TestCA

APP_USER, APP_DB = "app", "app"
MD5_USER = "app_md5"
CERT_USER = "app_cert"  # logs in with a client certificate (hba "cert")


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary (Debian keeps them out of PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql)")
    return path


def available() -> bool:
    try:
        pg_bin("initdb")
    except RuntimeError:
        return False
    return os.geteuid() != 0 or _postgres_user() is not None


def _postgres_user():
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return None


class PgServer:
    def __init__(self, ca: TestCA, *, app_password: str | None = None):
        self.ca = ca
        self.app_password = app_password or ("pw-" + os.urandom(12).hex())
        self.md5_password = "md5pw-" + os.urandom(8).hex()
        self.super_password = "super-" + os.urandom(8).hex()
        self.root: Path | None = None
        self.port = 0
        self.as_root = os.geteuid() == 0

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "server.log"

    def _run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        if self.as_root:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=check, cwd="/")

    def _own(self, path: Path, mode: int) -> None:
        path.chmod(mode)
        if self.as_root:
            user = _postgres_user()
            os.chown(path, user.pw_uid, user.pw_gid)

    def start(self) -> "PgServer":
        self.root = Path(tempfile.mkdtemp(prefix="wiretrail-pg-"))
        self._own(self.root, 0o700)
        pwfile = self.root / "pw"
        pwfile.write_text(self.super_password + "\n")
        self._own(pwfile, 0o600)
        self._run(pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=scram-sha-256",
                  f"--pwfile={pwfile}", "-E", "UTF8", "--no-locale", "--no-sync")
        client_ca = self._make_client_certs()
        for src, name in ((self.ca.server_cert_path, "server.crt"), (self.ca.server_key_path, "server.key"),
                          (client_ca, "client-ca.crt")):
            dst = self.data / name
            shutil.copy(src, dst)
            self._own(dst, 0o600)
        self.port = free_port()
        with open(self.data / "postgresql.conf", "a") as f:
            f.write(f"""
listen_addresses = '127.0.0.1'
port = {self.port}
unix_socket_directories = '{self.root}'
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
ssl_ca_file = 'client-ca.crt'
password_encryption = 'scram-sha-256'
log_connections = on
log_disconnections = on
log_statement = 'all'
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 60
""")
        (self.data / "pg_hba.conf").write_text(
            "local all all trust\n"
            f"hostssl all {CERT_USER} 127.0.0.1/32 cert\n"
            f"host all {MD5_USER} 127.0.0.1/32 md5\n"
            "hostssl all all 127.0.0.1/32 scram-sha-256\n"
            "host all all 127.0.0.1/32 scram-sha-256\n")
        self._start_server()
        with self.superuser() as c:
            c.autocommit = True
            c.execute(f"CREATE ROLE {APP_USER} LOGIN PASSWORD '{self.app_password}'")
            c.execute(f"CREATE DATABASE {APP_DB} OWNER {APP_USER}")
            c.execute("CREATE DATABASE sandbox OWNER app")
            c.execute("SET password_encryption = 'md5'")
            c.execute(f"CREATE ROLE {MD5_USER} LOGIN PASSWORD '{self.md5_password}'")
            c.execute(f"GRANT ALL ON DATABASE {APP_DB} TO {MD5_USER}")
            c.execute(f"CREATE ROLE {CERT_USER} LOGIN")
        return self

    def _make_client_certs(self) -> Path:
        """A CA the server trusts for client certificates, and a certificate for CERT_USER
        (self.client_cert, self.client_key). Returns the CA certificate's path."""
        import datetime

        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        now = datetime.datetime.now(datetime.timezone.utc)

        def name(cn):
            return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

        ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
        ca = (x509.CertificateBuilder().subject_name(name("client CA")).issuer_name(name("client CA"))
              .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
              .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
              .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
              .sign(ca_key, hashes.SHA256()))
        cert = (x509.CertificateBuilder().subject_name(name(CERT_USER)).issuer_name(ca.subject)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
                .sign(ca_key, hashes.SHA256()))
        certs = self.root / "client"
        certs.mkdir()
        self.client_cert, self.client_key = certs / "client.crt", certs / "client.key"
        self.client_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.client_key.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption()))
        self.client_key.chmod(0o600)
        ca_path = certs / "ca.crt"
        ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
        return ca_path

    def _start_server(self) -> None:
        r = self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.log_path), "-w", "-t", "60", "start",
                      check=False)
        if r.returncode != 0:
            raise RuntimeError(f"PostgreSQL did not start: {r.stdout}{r.stderr}\n{self.log_text()[-3000:]}")

    def superuser(self, dbname: str = "postgres") -> psycopg.Connection:
        return psycopg.connect(host=str(self.root), port=self.port, user="postgres", dbname=dbname, autocommit=True)

    def app(self, dbname: str = APP_DB) -> psycopg.Connection:
        """The gateway's role, directly (to set up tables and to check what the database holds)."""
        return psycopg.connect(host=str(self.root), port=self.port, user=APP_USER, dbname=dbname, autocommit=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_mark(self) -> int:
        try:
            return self.log_path.stat().st_size
        except OSError:
            return 0

    def log_since(self, mark: int) -> str:
        return self.log_text().encode()[mark:].decode(errors="replace")

    def wait_log(self, mark: int, text: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            got = self.log_since(mark)
            if text in got:
                return got
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in the database log within {timeout} s:\n{self.log_since(mark)[-3000:]}")

    def restart(self) -> None:
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "60", "stop")
        self._start_server()

    def stop(self) -> None:
        if self.root is None:
            return
        self._run(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop", check=False)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None
