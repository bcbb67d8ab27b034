"""The IdP's signing keys (a JWKS), fetched from a URL or read from a file, and cached.

A KeyStore keeps the last good key set. A token naming a key id (kid) the store does not know
triggers a refresh, at most once per `refresh_interval`, so a stream of tokens with made-up kids
cannot hammer the IdP. When a fetch fails the old keys stay in use: an IdP outage never
invalidates tokens signed with keys already known. Keys older than `max_age` are refreshed in the
background of the next lookup (a key the IdP has withdrawn stops working then).

Only signature keys of the asymmetric types are kept (RSA, EC, OKP). Symmetric ("oct") keys are
never taken from a JWKS: a key set is public, and an HMAC secret anyone can read is no secret.
"""
from __future__ import annotations

import json
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable
from urllib.parse import urlsplit

from jwt import PyJWK
from jwt.exceptions import PyJWTError

from recorder.policy.connections import is_loopback_host

MAX_JWKS_BYTES = 1024 * 1024  # a real key set is a few KiB

# The algorithms each key type may verify. HMAC is absent on purpose (see the module doc).
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
EC_ALGORITHMS = {"P-256": "ES256", "P-384": "ES384", "P-521": "ES512"}
OKP_CURVES = frozenset({"Ed25519"})  # what pyjwt's EdDSA verifies here
ASYMMETRIC_ALGORITHMS = RSA_ALGORITHMS | frozenset(EC_ALGORITHMS.values()) | {"EdDSA"}


class JwksUnavailable(Exception):
    """The keys could not be fetched or read; str(e) says where from and why, for a person."""


@dataclass(frozen=True)
class SigningKey:
    kid: str | None
    kty: str
    algorithms: frozenset[str]  # what this key may verify
    key: Any  # a cryptography public key object


def parse_jwks(data: bytes, source: str) -> list[SigningKey]:
    """The usable signing keys of a JWKS document. Raises JwksUnavailable when there are none."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        raise JwksUnavailable(f"{source} is not JSON (expected a JWKS: {{\"keys\": [...]}})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise JwksUnavailable(f'{source} is not a JWKS: expected a JSON object with a "keys" array')
    keys: list[SigningKey] = []
    skipped: list[str] = []
    for i, jwk in enumerate(doc["keys"]):
        key, why = _signing_key(jwk)
        if key is not None:
            keys.append(key)
        else:
            skipped.append(f"key {i}: {why}")
    if not keys:
        detail = "; ".join(skipped) if skipped else "the key set is empty"
        raise JwksUnavailable(f"{source} holds no usable signing key ({detail})")
    return keys


def _signing_key(jwk: Any) -> tuple[SigningKey | None, str]:
    """(key, "") or (None, why it is skipped)."""
    if not isinstance(jwk, dict):
        return None, "not a JSON object"
    kty, use, alg = jwk.get("kty"), jwk.get("use"), jwk.get("alg")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        return None, "kid is not a string"
    if use not in (None, "sig"):
        return None, f"use is {use!r}, not a signature key"
    if kty == "RSA":
        allowed, load_as = RSA_ALGORITHMS, "RS256"
    elif kty == "EC":
        load_as = EC_ALGORITHMS.get(jwk.get("crv"))
        if load_as is None:
            return None, f"unsupported EC curve {jwk.get('crv')!r}"
        allowed = frozenset({load_as})
    elif kty == "OKP":
        if jwk.get("crv") not in OKP_CURVES:
            return None, f"unsupported OKP curve {jwk.get('crv')!r}"
        allowed, load_as = frozenset({"EdDSA"}), "EdDSA"
    elif kty == "oct":
        return None, "a symmetric (oct) key; HMAC keys are never taken from a JWKS"
    else:
        return None, f"unsupported key type {kty!r}"
    if alg is not None:
        if alg not in allowed:
            return None, f"alg {alg!r} does not fit a {kty} signature key"
        allowed = frozenset({alg})
    try:
        key = PyJWK(jwk, load_as).key
    except (PyJWTError, ValueError, TypeError) as e:
        return None, f"cannot be loaded ({type(e).__name__})"
    if hasattr(key, "private_numbers") or hasattr(key, "private_bytes"):
        key = key.public_key()  # a JWKS should never hold a private key; verify with its public half
    return SigningKey(kid=kid, kty=kty, algorithms=allowed, key=key), ""


# -- where the key set comes from -------------------------------------------------------------


def url_fetcher(url: str, timeout: float) -> Callable[[], bytes]:
    """Fetch `url` (system proxy settings apply, except for a loopback host)."""
    handlers = [urllib.request.ProxyHandler({})] if is_loopback_host(urlsplit(url).hostname) else []
    opener = urllib.request.build_opener(*handlers)

    def fetch() -> bytes:
        request = urllib.request.Request(url, headers={"Accept": "application/json",
                                                       "User-Agent": "wiretrail-jwks"})
        try:
            with opener.open(request, timeout=timeout) as response:
                data = response.read(MAX_JWKS_BYTES + 1)
        except urllib.error.HTTPError as e:
            raise JwksUnavailable(f"{url} answered HTTP {e.code}") from None
        except urllib.error.URLError as e:
            raise JwksUnavailable(f"cannot reach {url}: {_reason(e.reason)}") from None
        except (OSError, ValueError) as e:  # timeouts, resets, a bad URL
            raise JwksUnavailable(f"cannot reach {url}: {_reason(e)}") from None
        if len(data) > MAX_JWKS_BYTES:
            raise JwksUnavailable(f"{url} sent more than {MAX_JWKS_BYTES} bytes; that is not a key set")
        return data

    return fetch


def _reason(e: object) -> str:
    if isinstance(e, TimeoutError) or "timed out" in str(e):
        return "timed out"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e) or type(e).__name__


def file_fetcher(path: Path) -> Callable[[], bytes]:
    def fetch() -> bytes:
        try:
            with open(path, "rb") as f:
                data = f.read(MAX_JWKS_BYTES + 1)
        except FileNotFoundError:
            raise JwksUnavailable(f"no such file: {path}") from None
        except OSError as e:
            raise JwksUnavailable(f"cannot read {path}: {e.strerror or type(e).__name__}") from None
        if len(data) > MAX_JWKS_BYTES:
            raise JwksUnavailable(f"{path} is larger than {MAX_JWKS_BYTES} bytes; that is not a key set")
        return data

    return fetch


# -- the cache ----------------------------------------------------------------------------------


class KeyStore:
    """Cached signing keys with rate-limited refresh. Thread-safe.

    Lookups read an immutable snapshot and never wait for a fetch unless they need one (no keys
    yet, or an unknown kid). One fetch runs at a time; threads that need the same refresh wait
    for it, then see its result instead of fetching again.
    """

    def __init__(self, fetch: Callable[[], bytes], *, source: str, clock: Callable[[], float] = time.time,
                 refresh_interval: float = 30.0, max_age: float = 3600.0):
        self._fetch = fetch
        self.source = source  # for messages: the URL or the file
        self._clock = clock
        self.refresh_interval = refresh_interval
        self.max_age = max_age
        self._keys: tuple[SigningKey, ...] | None = None  # None until the first good fetch
        self._loaded_at = 0.0
        self._last_attempt: float | None = None
        self._last_error: str | None = None  # why the last attempt failed; None if it worked
        self._fetch_lock = threading.Lock()
        self.fetches = 0  # attempts made (for tests and diagnostics)

    @property
    def keys(self) -> tuple[SigningKey, ...]:
        return self._keys or ()

    def load(self) -> tuple[SigningKey, ...]:
        """Fetch now, ignoring the rate limit (start-up). Raises JwksUnavailable on failure."""
        with self._fetch_lock:
            self._attempt()
        if self._last_error is not None:
            raise JwksUnavailable(self._last_error)
        return self.keys

    def find(self, kid: str | None, alg: str) -> SigningKey | None:
        """The key for a token's kid (or, for a token without a kid, the only key that can verify
        `alg`). None when the key set, freshly checked, has no such key. Raises JwksUnavailable
        when the key is unknown and the key set could not be checked (the IdP is unreachable)."""
        if self._keys is None:
            self._refresh(wait=True)
            if self._keys is None:
                raise JwksUnavailable(self._last_error or f"no keys loaded from {self.source}")
        elif self._clock() - self._loaded_at >= self.max_age:
            self._refresh(wait=False)  # whoever gets the lock refreshes; the rest use what is cached
        key = self._lookup(kid, alg)
        if key is not None:
            return key
        self._refresh(wait=True)
        key = self._lookup(kid, alg)
        if key is None and self._last_error is not None:
            raise JwksUnavailable(self._last_error)
        return key

    def _lookup(self, kid: str | None, alg: str) -> SigningKey | None:
        keys = self._keys or ()
        if kid is not None:
            return next((k for k in keys if k.kid == kid), None)
        fitting = [k for k in keys if alg in k.algorithms]
        return fitting[0] if len(fitting) == 1 else None

    def _refresh(self, *, wait: bool) -> None:
        if not self._fetch_lock.acquire(blocking=wait):
            return
        try:
            last = self._last_attempt
            if last is not None and self._clock() - last < self.refresh_interval:
                return  # rate limit; also covers a refresh another thread just finished
            self._attempt()
        finally:
            self._fetch_lock.release()

    def _attempt(self) -> None:
        """One fetch; the caller holds _fetch_lock."""
        self._last_attempt = self._clock()
        self.fetches += 1
        try:
            keys = tuple(parse_jwks(self._fetch(), self.source))
        except JwksUnavailable as e:
            self._last_error = str(e)
            return
        except Exception as e:  # a fetcher bug must not leave the store half-updated
            self._last_error = f"cannot load keys from {self.source}: {type(e).__name__}"
            return
        self._keys, self._loaded_at, self._last_error = keys, self._last_attempt, None
