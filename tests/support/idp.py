"""A local identity provider for tests: a real HTTP server on 127.0.0.1 (ephemeral port) that
serves a JWKS, and signs tokens with the matching private keys.

    idp = LocalIdP().start()
    idp.jwks_url                      # http://127.0.0.1:PORT/jwks.json
    token = idp.token(sub="alice", groups=["engineering"])
    kid = idp.add_key()               # rotation: a new key appears in the JWKS
    idp.token(sub="alice", kid=kid)
    idp.hits                          # JWKS requests served so far
    idp.stop()                        # the IdP is down: connections are refused

`idp.write_jwks_file(path)` writes the same key set to a file, for identity.jwks_file.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

ISSUER = "https://idp.test.example/"
AUDIENCE = "wiretrail-test"

_DEFAULT_ALG = {"RSA": "RS256", "EC": "ES256", "OKP": "EdDSA"}


def new_private_key(kty: str = "RSA"):
    if kty == "RSA":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if kty == "EC":
        return ec.generate_private_key(ec.SECP256R1())
    if kty == "OKP":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(kty)


def public_jwk(private_key, kid: str | None, *, alg: str | None = None, use: str | None = "sig") -> dict:
    public = private_key.public_key()
    if isinstance(public, rsa.RSAPublicKey):
        jwk = RSAAlgorithm.to_jwk(public, as_dict=True)
    elif isinstance(public, ec.EllipticCurvePublicKey):
        jwk = ECAlgorithm.to_jwk(public, as_dict=True)
    else:
        jwk = OKPAlgorithm.to_jwk(public, as_dict=True)
    if kid is not None:
        jwk["kid"] = kid
    if alg is not None:
        jwk["alg"] = alg
    if use is not None:
        jwk["use"] = use
    return jwk


class LocalIdP:
    def __init__(self, *, issuer: str = ISSUER, audience: str = AUDIENCE, kty: str = "RSA"):
        self.issuer, self.audience = issuer, audience
        self._lock = threading.Lock()
        self._keys: dict[str, Any] = {}  # kid -> private key, in publication order
        self.published: list[str] = []  # kids served in the JWKS
        self.extra_jwks: list[dict] = []  # served as well (e.g. an encryption key)
        self.status = 200  # what the JWKS endpoint answers; set 503 to simulate a failing IdP
        self.hits = 0
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._port: int | None = None
        self.first_kid = self.add_key(kty=kty)

    # -- keys --------------------------------------------------------------------------------

    def add_key(self, kid: str | None = None, *, kty: str = "RSA", publish: bool = True) -> str:
        kid = kid or f"key-{uuid.uuid4().hex[:12]}"
        with self._lock:
            self._keys[kid] = new_private_key(kty)
            if publish:
                self.published.append(kid)
        return kid

    def withdraw(self, kid: str) -> None:
        with self._lock:
            self.published.remove(kid)

    def private_key(self, kid: str | None = None):
        return self._keys[kid or self.first_kid]

    def jwks(self) -> dict:
        with self._lock:
            keys = [public_jwk(self._keys[kid], kid) for kid in self.published]
        return {"keys": keys + list(self.extra_jwks)}

    def write_jwks_file(self, path: Path) -> Path:
        path.write_text(json.dumps(self.jwks()), encoding="utf-8")
        return path

    # -- tokens ------------------------------------------------------------------------------

    def claims(self, sub: str | None = "alice", *, ttl: float = 3600, now: float | None = None, **extra) -> dict:
        now = time.time() if now is None else now
        claims: dict[str, Any] = {"iss": self.issuer, "aud": self.audience, "iat": int(now), "nbf": int(now),
                                  "exp": int(now + ttl)}
        if sub is not None:
            claims["sub"] = sub
        claims.update(extra)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, sub: str | None = "alice", *, kid: str | None = None, alg: str | None = None,
              headers: dict | None = None, ttl: float = 3600, now: float | None = None, **extra) -> str:
        """A token signed by one of this IdP's keys. Claims given as None are left out."""
        kid = kid or self.first_kid
        key = self._keys[kid]
        if isinstance(key, rsa.RSAPrivateKey):
            kty = "RSA"
        else:
            kty = "EC" if isinstance(key, ec.EllipticCurvePrivateKey) else "OKP"
        return jwt.encode(self.claims(sub, ttl=ttl, now=now, **extra), key, algorithm=alg or _DEFAULT_ALG[kty],
                          headers={"kid": kid, **(headers or {})})

    # -- the server --------------------------------------------------------------------------

    @property
    def port(self) -> int:
        assert self._port is not None, "start() the IdP first"
        return self._port  # kept after stop(): the URL the gateway was given still names it

    @property
    def jwks_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/jwks.json"

    def start(self) -> "LocalIdP":
        idp = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                if self.path.split("?")[0] != "/jwks.json":
                    self._send(404, b'{"error":"not found"}')
                    return
                with idp._lock:
                    idp.hits += 1
                    status = idp.status
                body = json.dumps(idp.jwks()).encode() if status == 200 else b'{"error":"unavailable"}'
                self._send(status, body)

            def _send(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format, *args):  # keep test output clean
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="local-idp", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Down for good: the listening socket is closed, so connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "LocalIdP":
        return self.start() if self._server is None else self

    def __exit__(self, *exc) -> None:
        self.stop()
