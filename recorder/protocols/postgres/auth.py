"""How the gateway proves the database's password it holds: SCRAM-SHA-256 (RFC 5802, 7677,
with tls-server-end-point channel binding when the server offers SCRAM-SHA-256-PLUS over
TLS) and md5. The password never crosses the wire with SCRAM; with md5 a salted hash does.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes

SCRAM = "SCRAM-SHA-256"
SCRAM_PLUS = "SCRAM-SHA-256-PLUS"


class AuthFailed(Exception):
    """The server's side of an exchange does not check out (or asks for what we cannot do)."""


def md5_password(user: str, password: str, salt: bytes) -> bytes:
    """The PasswordMessage payload for AuthenticationMD5Password."""
    inner = hashlib.md5(password.encode("utf-8") + user.encode("utf-8")).hexdigest()
    return b"md5" + hashlib.md5(inner.encode("ascii") + salt).hexdigest().encode("ascii") + b"\0"


def tls_server_end_point(cert_der: bytes) -> bytes:
    """RFC 5929 channel binding data: the hash of the server's certificate (SHA-256 for
    certificates signed with MD5 or SHA-1, else the signature's own hash)."""
    cert = x509.load_der_x509_certificate(cert_der)
    algo = cert.signature_hash_algorithm
    if algo is None or isinstance(algo, (hashes.MD5, hashes.SHA1)):
        algo = hashes.SHA256()
    h = hashes.Hash(algo)
    h.update(cert_der)
    return h.finalize()


def _hi(password: bytes, salt: bytes, iterations: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", password, salt, iterations)


def _hmac(key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, hashlib.sha256).digest()


def _saslprep(password: str) -> bytes:
    # PostgreSQL falls back to the raw bytes when SASLprep fails; ASCII passwords are unchanged.
    return password.encode("utf-8")


class ScramClient:
    """One SCRAM-SHA-256 exchange. `first()` -> client-first; `final(server_first)` ->
    client-final; `verify(server_final)` checks the server's signature (a server that does not
    know the password cannot forge it)."""

    def __init__(self, password: str, mechanisms: list[str], cert_der: bytes | None = None):
        self.password = _saslprep(password)
        if SCRAM_PLUS in mechanisms and cert_der is not None:
            self.mechanism = SCRAM_PLUS
            self.gs2 = b"p=tls-server-end-point,,"
            self.binding = tls_server_end_point(cert_der)
        elif SCRAM in mechanisms:
            self.mechanism = SCRAM
            # "y": we could bind but the server did not offer it over TLS; "n": no TLS to bind to.
            self.gs2 = b"y,," if cert_der is not None else b"n,,"
            self.binding = b""
        else:
            raise AuthFailed(f"the database offers SASL mechanisms {', '.join(mechanisms) or '(none)'}; "
                             f"the gateway speaks {SCRAM}")
        self.nonce = base64.b64encode(os.urandom(18)).decode("ascii")
        self.first_bare = f"n=,r={self.nonce}".encode()
        self.server_signature: bytes | None = None

    def first(self) -> bytes:
        return self.gs2 + self.first_bare

    def final(self, server_first: bytes) -> bytes:
        try:
            attrs = dict(part.split("=", 1) for part in server_first.decode("ascii").split(","))
            nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        except (ValueError, KeyError, UnicodeDecodeError):
            raise AuthFailed("the database sent a malformed SCRAM server-first message") from None
        if not nonce.startswith(self.nonce) or len(nonce) <= len(self.nonce):
            raise AuthFailed("the database's SCRAM nonce does not extend the gateway's")
        if iterations < 1 or iterations > 10_000_000:
            raise AuthFailed(f"the database asks for {iterations} SCRAM iterations")
        channel = base64.b64encode(self.gs2 + self.binding).decode("ascii")
        final_bare = f"c={channel},r={nonce}".encode()
        salted = _hi(self.password, salt, iterations)
        client_key = _hmac(salted, b"Client Key")
        stored = hashlib.sha256(client_key).digest()
        auth_message = self.first_bare + b"," + server_first + b"," + final_bare
        signature = _hmac(stored, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, signature))
        self.server_signature = _hmac(_hmac(salted, b"Server Key"), auth_message)
        return final_bare + b",p=" + base64.b64encode(proof)

    def verify(self, server_final: bytes) -> None:
        text = server_final.decode("ascii", "replace")
        if text.startswith("e="):
            raise AuthFailed(f"the database ended SCRAM with an error: {text[2:]}")
        if not text.startswith("v=") or self.server_signature is None:
            raise AuthFailed("the database sent a malformed SCRAM server-final message")
        try:
            got = base64.b64decode(text[2:].split(",")[0])
        except ValueError:
            raise AuthFailed("the database sent a malformed SCRAM server signature") from None
        if not hmac.compare_digest(got, self.server_signature):
            raise AuthFailed("the database's SCRAM server signature is wrong: it does not know the password "
                             "(a server in the middle?)")
