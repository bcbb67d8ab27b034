"""The gateway's Ed25519 signing key: make it, load it, sign and check with it.

The private key signs session checkpoints and seals and every ledger entry. The public
key is what `wiretrail verify --key` trusts; it must come from outside the store, since
whoever rewrites the store could replace a key kept there.

A key id is the first 16 hex digits of SHA-256 of the raw 32-byte public key. It names
the key in records (`session.open.key`, `checkpoint.key`, `seal.key`, ledger `key`).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

PRIVATE_NAME = "gateway.key"
PUBLIC_NAME = "gateway.pub"


class SigningKeyError(ValueError):
    """A key file is missing, unreadable or not an Ed25519 key. The message says what to do."""


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


@dataclass(frozen=True)
class Signer:
    """A loaded private key. `sign` returns the base64 signature that records carry."""

    private: Ed25519PrivateKey
    key_id: str

    @classmethod
    def from_private(cls, private: Ed25519PrivateKey) -> "Signer":
        return cls(private, key_id(private.public_key()))

    def sign(self, data: bytes) -> str:
        return base64.b64encode(self.private.sign(data)).decode("ascii")

    def derived_key(self, purpose: str) -> bytes:
        """A 32-byte key for `purpose`, derived from the private key (stable across restarts)."""
        raw = self.private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                         serialization.NoEncryption())
        return hashlib.sha256(b"wiretrail-derived-key-v1\n" + purpose.encode() + b"\n" + raw).digest()

    @property
    def verifier(self) -> "Verifier":
        return Verifier(self.private.public_key(), self.key_id)


@dataclass(frozen=True)
class Verifier:
    """A trusted public key."""

    public: Ed25519PublicKey
    key_id: str

    @classmethod
    def from_public(cls, public: Ed25519PublicKey) -> "Verifier":
        return cls(public, key_id(public))

    def verify(self, data: bytes, sig: str) -> bool:
        try:
            raw = base64.b64decode(sig.encode("ascii"), validate=True)
            self.public.verify(raw, data)
            return True
        except (InvalidSignature, binascii.Error, ValueError, UnicodeEncodeError):
            return False


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise SigningKeyError(f"{what} {path}: no such file; make a key pair with `wiretrail keygen DIR`") from None
    except IsADirectoryError:
        raise SigningKeyError(f"{what} {path}: is a directory, not a key file") from None
    except OSError as e:
        raise SigningKeyError(f"{what} {path}: cannot read it: {e.strerror or type(e).__name__}") from None


def load_signer(path: str | os.PathLike) -> Signer:
    """The private key at `path` (PKCS8 PEM, as `wiretrail keygen` writes it)."""
    path = Path(path)
    data = _read(path, "signing key")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise SigningKeyError(f"signing key {path}: the key is encrypted; wiretrail needs an unencrypted "
                              "PKCS8 PEM key (wiretrail keygen)") from None
    except (ValueError, binascii.Error) as e:
        what = "a public key, not the private key" if b"PUBLIC KEY" in data else "not a PEM private key"
        raise SigningKeyError(f"signing key {path}: {what} ({type(e).__name__})") from None
    except Exception as e:  # cryptography raises UnsupportedAlgorithm for unknown kinds
        raise SigningKeyError(f"signing key {path}: not a usable private key ({type(e).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SigningKeyError(f"signing key {path}: a {type(key).__name__.lstrip('_')}, not an Ed25519 key; "
                              "make one with `wiretrail keygen DIR`")
    return Signer.from_private(key)


def load_verifier(path: str | os.PathLike) -> Verifier:
    """The public key at `path` (PEM). A private key is accepted too (its public half is used)."""
    path = Path(path)
    data = _read(path, "public key")
    try:
        if b"PRIVATE KEY" in data:
            return load_signer(path).verifier
        key = serialization.load_pem_public_key(data)
    except SigningKeyError:
        raise
    except Exception as e:
        raise SigningKeyError(f"public key {path}: not a PEM public key ({type(e).__name__})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SigningKeyError(f"public key {path}: not an Ed25519 key")
    return Verifier.from_public(key)


def generate(directory: str | os.PathLike, *, force: bool = False) -> tuple[Path, Path, str]:
    """Write DIR/gateway.key (PKCS8 PEM, 0600) and DIR/gateway.pub. Returns (key, pub, key id).
    Raises FileExistsError if either exists and not `force`."""
    d = Path(directory)
    priv_path, pub_path = d / PRIVATE_NAME, d / PUBLIC_NAME
    if not force:
        for p in (priv_path, pub_path):
            if p.exists():
                raise FileExistsError(str(p))
    d.mkdir(parents=True, exist_ok=True, mode=0o700)
    private = Ed25519PrivateKey.generate()
    pem = private.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    pub = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    # Write to a temporary name created 0600, then rename: the key is never readable by others,
    # and a crash never leaves half a key under the real name.
    tmp = priv_path.with_name(priv_path.name + ".tmp")
    try:
        tmp.unlink()
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o600)
    os.replace(tmp, priv_path)
    pub_tmp = pub_path.with_name(pub_path.name + ".tmp")
    pub_tmp.write_bytes(pub)
    os.chmod(pub_tmp, 0o644)
    os.replace(pub_tmp, pub_path)
    return priv_path, pub_path, key_id(private.public_key())


def ensure_dev_signing_key(path: str | os.PathLike) -> Path:
    """For the embedded demo: the key at `path`, made (with its .pub beside it) if missing."""
    path = Path(path)
    if not path.exists():
        priv, pub, _ = generate(path.parent, force=False) if path.name == PRIVATE_NAME else _generate_named(path)
        return priv
    return path


def _generate_named(path: Path) -> tuple[Path, Path, str]:
    priv, pub, kid = generate(path.parent / (".keygen-" + path.name), force=True)
    os.replace(priv, path)
    os.replace(pub, path.with_suffix(".pub"))
    os.rmdir(priv.parent)
    return path, path.with_suffix(".pub"), kid
