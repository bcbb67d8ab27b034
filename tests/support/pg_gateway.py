"""A real gateway (mitmdump -s addons/gateway.py) with a database connection of kind "postgres"
in front of a real PostgreSQL (tests/support/postgres.py), and the clients a new user runs:
psql, psycopg 3 and asyncpg, with the identity token as the password, over TLS.
"""
from __future__ import annotations

import os
import secrets
import socket
import subprocess
import time
from pathlib import Path

import psycopg

from recorder.auth.identity import mint_dev_token
from tests.support.artifacts import Artifacts, store_bytes
from tests.support.gateway import free_port
from tests.support.postgres import APP_DB, APP_USER, PgServer

ISSUER, AUDIENCE = "wiretrail-pg-test", "wiretrail"
GROUP = "engineering"


def identity_config(secret_file: Path) -> dict:
    return {"identity": {"mode": "jwt", "issuer": ISSUER, "audience": AUDIENCE,
                         "hs256_secret": f"file:{secret_file}"}}


def connection_toml(pg: PgServer, port: int, password_file: Path, **over) -> str:
    keys = {"name": "appdb", "kind": "postgres", "listen": f"127.0.0.1:{port}", "upstream": f"127.0.0.1:{pg.port}",
            "user": APP_USER, "credential": f"file:{password_file}", "upstream_tls": "verify-full",
            "upstream_ca": str(pg.ca.cert_path), "allow_groups": [GROUP]}
    keys.update(over)
    out = ["", "[[connections]]"]
    for k, v in keys.items():
        if v is None:
            continue
        if isinstance(v, bool):
            out.append(f"{k} = {'true' if v else 'false'}")
        elif isinstance(v, int):
            out.append(f"{k} = {v}")
        elif isinstance(v, (list, tuple)):
            out.append(f"{k} = [" + ", ".join(f'"{x}"' for x in v) + "]")
        else:
            out.append(f'{k} = "{v}"')
    return "\n".join(out) + "\n"


def wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


class PgGateway:
    def __init__(self, start_gateway, pg: PgServer, workdir: Path, *, config: dict | None = None, **conn):
        workdir.mkdir(parents=True, exist_ok=True)
        self.pg = pg
        self.secret = secrets.token_urlsafe(48)
        secret_file = workdir / "dev-identity.secret"
        secret_file.write_text(self.secret)
        self.password_file = workdir / "db-password"
        self.password_file.write_text(conn.pop("password", pg.app_password) + "\n")
        self.port = free_port()
        sections = identity_config(secret_file)
        for name, keys in (config or {}).items():
            sections.setdefault(name, {}).update(keys)
        self.gw = start_gateway(config=sections, extra_toml=connection_toml(pg, self.port, self.password_file, **conn))
        wait_listening(self.port)

    # -- identity -------------------------------------------------------------------------

    def token(self, sub: str = "alice", groups=(GROUP,), ttl: float = 3600, **kw) -> str:
        return mint_dev_token(self.secret, sub=sub, groups=groups, ttl=ttl, issuer=ISSUER, audience=AUDIENCE, **kw)

    # -- clients --------------------------------------------------------------------------

    def conninfo(self, token: str | None = "", *, sslmode: str = "require", dbname: str = APP_DB,
                 user: str = "alice", **kw) -> str:
        parts = {"host": "127.0.0.1", "port": self.port, "dbname": dbname, "user": user, "sslmode": sslmode,
                 "connect_timeout": 10, **kw}
        if token:
            parts["password"] = token
        return " ".join(f"{k}={v}" for k, v in parts.items())

    def connect(self, token: str | None = "", **kw) -> psycopg.Connection:
        """psycopg 3, autocommit, with a fresh valid token unless one is given (None: no password)."""
        autocommit = kw.pop("autocommit", True)
        return psycopg.connect(self.conninfo(self.token() if token == "" else token, **kw), autocommit=autocommit)

    def psql(self, *args: str, token: str | None = "", input: str | None = None, **kw) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        if token == "":
            token = self.token()
        if token is not None:
            env["PGPASSWORD"] = token
        return subprocess.run(["psql", "-X", "-w", "-v", "ON_ERROR_STOP=0", self.conninfo(None, **kw), *args],
                              input=input, capture_output=True, text=True, env=env, timeout=60)

    async def asyncpg(self, token: str | None = "", **kw):
        import ssl as ssl_mod

        import asyncpg

        ctx = ssl_mod.create_default_context(cafile=str(self.gw.ca_path))
        return await asyncpg.connect(host="127.0.0.1", port=self.port, user="alice", database=APP_DB,
                                     password=self.token() if token == "" else token, ssl=ctx, **kw)

    # -- what was recorded ----------------------------------------------------------------

    def records(self, prefix: str = "pg.") -> list[dict]:
        return [r for r in Artifacts(self.gw.store_dir).records if str(r.get("t", "")).startswith(prefix)]

    def wait_records(self, pred, timeout: float = 10.0, what: str = "records") -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            recs = self.records()
            if pred(recs):
                return recs
            if time.monotonic() > deadline:
                raise AssertionError(f"{what} not recorded within {timeout} s:\n" +
                                     "\n".join(str({k: v for k, v in r.items() if k != "prev"}) for r in recs))
            time.sleep(0.05)

    def store_text(self) -> bytes:
        return store_bytes(self.gw.store_dir)
