"""Who is calling: the identity token a client presents, checked.

A client presents a JWT from the organisation's IdP (or, for local development, one minted by
`wiretrail token` with a shared HS256 secret). TokenVerifier checks its signature, expiry, issuer
and audience and returns a VerifiedIdentity; anything wrong raises IdentityError with a machine reason
and a message for a person. No message ever contains the token or any part of it.

A verified token is cached by its SHA-256 until it expires, so a request pays for verification
once per token, not once per request. `cached()` is the fast path with no I/O; `verify()` may
block on a JWKS fetch and is meant to run off the event loop on a cache miss.

No mitmproxy here: the gateway's identity addon reads the headers and calls this module.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Callable, Mapping
from urllib.parse import urlsplit

import jwt
from jwt import exceptions as jwt_errors

from recorder.auth.credentials import API_KEY_HEADERS, IDENTITY_HEADER
from recorder.auth.dev_secret import ensure_dev_secret
from recorder.auth.jwks import ASYMMETRIC_ALGORITHMS, JwksUnavailable, KeyStore, file_fetcher, url_fetcher
from recorder.config import ConfigError, IdentityConfig
from recorder.policy.connections import is_loopback_host

MAX_TOKEN_LENGTH = 16 * 1024  # characters; longer is refused before any parsing
CACHE_SIZE = 10_000  # verified tokens kept (LRU)
KEYS_MAX_AGE = 3600.0  # seconds: keys older than this are refreshed on the next lookup
MIN_HS256_SECRET = 32  # bytes (RFC 7518 3.2: at least the hash output size)
DEV_ALGORITHM = "HS256"

REASONS = ("missing", "malformed", "expired", "not_yet_valid", "bad_issuer", "bad_audience",
           "bad_signature", "unknown_key", "bad_algorithm", "no_subject", "too_large", "idp_unreachable")


class IdentityError(Exception):
    """A token that does not identify anyone. `reason` is one of REASONS (for code and records);
    `message` tells a person what is wrong and what to do. Neither contains the token."""

    def __init__(self, reason: str, message: str):
        assert reason in REASONS, reason
        self.reason, self.message = reason, message
        super().__init__(message)


@dataclass(frozen=True)
class VerifiedIdentity:
    sub: str
    email: str | None = None
    name: str | None = None
    groups: tuple[str, ...] = ()
    iss: str | None = None
    method: str = "jwt"  # "jwt" | "none"
    authenticated: bool = True
    expires: float | None = None  # the exp claim; None when nothing expires

    def record(self) -> dict:
        """What session.open stores about the caller."""
        return {"sub": self.sub, "email": self.email, "name": self.name, "groups": list(self.groups),
                "iss": self.iss, "method": self.method, "authenticated": self.authenticated}

    def key(self) -> str:
        """The session key. One gateway trusts one issuer, so iss + sub is unique per person."""
        return f"{self.iss} {self.sub}" if self.iss else self.sub


# Identity mode "none" (demos): everyone is this, and the record says it was not checked.
ANONYMOUS = VerifiedIdentity(sub="anonymous", method="none", authenticated=False)


# -- where the token is ------------------------------------------------------------------------


def token_from_proxy_authorization(value: str | None) -> str | None:
    """The token in a Proxy-Authorization header (regular mode), or None if there is none.

    "Basic base64(user:TOKEN)" -> TOKEN (what HTTPS_PROXY=http://user:TOKEN@host:port sends;
    with an empty password the user name is taken as the token). "Bearer TOKEN" -> TOKEN.
    Raises IdentityError("malformed") for a header that is there but unusable."""
    if value is None or not value.strip():
        return None
    scheme, _, rest = value.strip().partition(" ")
    rest = rest.strip()
    if scheme.lower() == "bearer":
        return rest or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(rest, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            raise IdentityError("malformed", "Proxy-Authorization is Basic but is not base64 of "
                                "user:token; set HTTPS_PROXY=http://<user>:<token>@<gateway>:<port>") from None
        user, _, password = decoded.partition(":")
        return password or user or None
    raise IdentityError("malformed", f'Proxy-Authorization uses the scheme "{_scheme(scheme)}"; '
                        "send Basic (HTTPS_PROXY=http://<user>:<token>@<gateway>:<port>) or Bearer <token>")


# Reverse mode: where each SDK puts its API key. Authorization first, then the api-key headers.


def token_from_api_headers(headers: Mapping[str, str]) -> str | None:
    return api_token_and_header(headers)[0]


def api_token_and_header(headers: Mapping[str, str]) -> tuple[str | None, str | None]:
    """(token, the header that carried it). The token a reverse-mode client sent: in the gateway's
    own header (x-wiretrail-token), which leaves the API key headers to the client's own key; else
    where its API key would go: "Authorization: Bearer TOKEN", or x-api-key (Anthropic SDKs),
    api-key (Azure OpenAI) or x-goog-api-key (Gemini).
    None if there is none; IdentityError("malformed") for an Authorization that is not Bearer
    when no api-key header holds a token either."""
    own = _header(headers, IDENTITY_HEADER)
    if own is not None and own.strip():
        value = own.strip()
        scheme, _, rest = value.partition(" ")
        return (rest.strip() if scheme.lower() == "bearer" and rest.strip() else value), IDENTITY_HEADER
    authorization = _header(headers, "authorization")
    if authorization is not None and authorization.strip():
        scheme, _, rest = authorization.strip().partition(" ")
        if scheme.lower() == "bearer" and rest.strip():
            return rest.strip(), "authorization"
    for name in API_KEY_HEADERS:
        value = _header(headers, name)
        if value is not None and value.strip():
            return value.strip(), name
    if authorization is not None and authorization.strip():
        scheme = authorization.strip().partition(" ")[0]
        if scheme.lower() == "bearer":
            return None, None  # "Bearer" with nothing after it: no token was sent
        raise IdentityError("malformed", f'Authorization uses the scheme "{_scheme(scheme)}"; send '
                            "Authorization: Bearer <token> or x-api-key: <token> (set the SDK's API key "
                            "to your identity token)")
    return None, None


# What provider API keys look like: OpenAI (sk-, sk-proj-), Anthropic (sk-ant-), Google (AIza),
# and other long bearer strings without the dots of a JWT.
_API_KEY_SHAPE = re.compile(r"(?:sk-|sk_|AIza|xai-|gsk_)[A-Za-z0-9_\-]{8,}\Z")


def looks_like_api_key(token: str) -> bool:
    """True for a provider API key sent where the identity token belongs: a common mistake, which
    gets its own message (what to do) instead of "not a JWT"."""
    return bool(_API_KEY_SHAPE.match(token)) or ("." not in token and len(token) >= 20 and token.isascii()
                                                 and not any(c.isspace() for c in token))


API_KEY_INSTEAD = ("this looks like an API key, not a wiretrail token: put your wiretrail token in the "
                   f"{IDENTITY_HEADER} header and keep your API key where it is (mint a token with `wiretrail "
                   "token`; per client: README, Pointing clients at the gateway)")


def check_api_token(token: str | None, header: str | None) -> None:
    """Raise IdentityError("malformed") with what to do when the token taken from an API key
    header is an API key. A token in the gateway's own header is left to the verifier."""
    if token and header != IDENTITY_HEADER and looks_like_api_key(token):
        raise IdentityError("malformed", API_KEY_INSTEAD)


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)  # mitmproxy's Headers are case-insensitive already
    if value is None:
        for k, v in headers.items():
            if k.lower() == name:
                return v
    return value


def _scheme(scheme: str) -> str:
    """An auth scheme for a message: short and plain, since it is client text."""
    return scheme if len(scheme) <= 20 and scheme.isalnum() else "?"


# -- checking a token --------------------------------------------------------------------------

_SEGMENT = re.compile(r"[A-Za-z0-9_-]*\Z")


class TokenVerifier:
    """Checks identity tokens against `config` (mode "jwt"). Thread-safe.

    Keys: `hs256_secret` (read now; development), or `jwks_file` (read now: a bad file stops
    start-up with ConfigError), or `jwks_url` (fetched on first use, or by `load_keys()`)."""

    def __init__(self, config: IdentityConfig, *, clock: Callable[[], float] = time.time,
                 fetch_timeout: float = 5.0, refresh_interval: float | None = None,
                 keys_max_age: float = KEYS_MAX_AGE, cache_size: int = CACHE_SIZE):
        if config.mode != "jwt":
            raise ValueError(f'identity mode "{config.mode}" checks no tokens; use ANONYMOUS')
        self.config = config
        self._clock = clock
        if refresh_interval is None:
            refresh_interval = config.jwks_refresh_interval
        self._cache: OrderedDict[bytes, VerifiedIdentity] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._cache_size = cache_size
        self.verifications = 0  # tokens checked in full (cache misses), for tests and diagnostics
        self.warnings: tuple[str, ...] = ()  # for the addon to log at start-up
        self._secret: bytes | None = None
        self._keys: KeyStore | None = None
        if config.hs256_secret is not None:
            self._secret = config.hs256_secret.read().encode("utf-8")
            if len(self._secret) < MIN_HS256_SECRET:
                raise ConfigError(f"the HS256 secret is {len(self._secret)} bytes; it needs at least "
                                  f"{MIN_HS256_SECRET}. Make one with: python -c \"import secrets; "
                                  "print(secrets.token_urlsafe(48))\"", key=config.hs256_secret.key)
            self.warnings = ("identity: development mode (hs256_secret): tokens are minted locally "
                             "with `wiretrail token`, not by an IdP; do not use this in production",)
        elif config.jwks_file is not None:
            self._keys = KeyStore(file_fetcher(config.jwks_file), source=str(config.jwks_file), clock=clock,
                                  refresh_interval=refresh_interval, max_age=keys_max_age)
            try:
                self._keys.load()
            except JwksUnavailable as e:
                raise ConfigError(str(e), key="identity.jwks_file") from None
        elif config.jwks_url is not None:
            self._keys = KeyStore(url_fetcher(config.jwks_url, fetch_timeout), source=config.jwks_url,
                                  clock=clock, refresh_interval=refresh_interval, max_age=keys_max_age)
            if config.jwks_url.startswith("http://") and not is_loopback_host(urlsplit(config.jwks_url).hostname):
                self.warnings = (f"identity: jwks_url {config.jwks_url} is plain http; anyone on the path "
                                 "can replace the IdP's keys. Use https.",)
        else:
            raise ValueError("identity mode jwt needs jwks_url, jwks_file or hs256_secret")

    def load_keys(self) -> None:
        """Fetch the JWKS now (call it off the event loop at start-up to fail early and warm the
        cache). Raises IdentityError("idp_unreachable"). Nothing to do in hs256 mode."""
        if self._keys is not None:
            try:
                self._keys.load()
            except JwksUnavailable as e:
                raise IdentityError("idp_unreachable", _unreachable_message(str(e))) from None

    # -- the cache ------------------------------------------------------------------------------

    def cached(self, token: str) -> VerifiedIdentity | None:
        """The VerifiedIdentity of a token already verified and not yet expired (exp + leeway); no I/O,
        no crypto."""
        if not token or len(token) > MAX_TOKEN_LENGTH:
            return None
        digest = _digest(token)
        with self._cache_lock:
            identity = self._cache.get(digest)
            if identity is None:
                return None
            # Until exp + leeway: exactly as long as a full check would still accept it.
            if identity.expires is not None and identity.expires + self.config.leeway <= self._clock():
                del self._cache[digest]
                return None
            self._cache.move_to_end(digest)
            return identity

    def verify(self, token: str) -> VerifiedIdentity:
        """The VerifiedIdentity the token proves, or IdentityError. May block on a JWKS fetch."""
        if not isinstance(token, str) or not token.strip():
            raise IdentityError("missing", "no identity token was sent")
        if len(token) > MAX_TOKEN_LENGTH:
            raise IdentityError("too_large", f"the identity token is longer than {MAX_TOKEN_LENGTH} "
                                "characters; that is not an identity token from your IdP")
        identity = self.cached(token)
        if identity is not None:
            return identity
        identity = self._verify(token)
        digest = _digest(token)
        with self._cache_lock:
            self._cache[digest] = identity
            self._cache.move_to_end(digest)
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return identity

    # -- the full check --------------------------------------------------------------------------

    def _verify(self, token: str) -> VerifiedIdentity:
        self.verifications += 1
        header = _parse_structure(token)
        alg = header["alg"]
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise IdentityError("malformed", "the token's kid (key id) is not a string")
        key, algorithms, signer = self._key_for(alg, kid)
        try:
            claims = jwt.decode(token, key, algorithms=algorithms, options=_SIGNATURE_ONLY)
        except jwt_errors.InvalidSignatureError:
            raise IdentityError("bad_signature", f"the token's signature does not match {signer}: the token "
                                "was altered, or it was not issued for this gateway; get a new one") from None
        except jwt_errors.InvalidAlgorithmError:
            raise IdentityError("bad_algorithm", f"the token's algorithm {_alg(alg)} is not accepted here") from None
        except jwt_errors.InvalidKeyError:
            raise IdentityError("bad_algorithm", f"the token's algorithm {_alg(alg)} does not fit {signer}") from None
        except jwt_errors.PyJWTError:
            raise IdentityError("malformed", "the token's payload is not a JSON object of claims") from None
        return self._identity(claims)

    def _key_for(self, alg: str, kid: str | None) -> tuple[Any, list[str], str]:
        """(key, [alg], a description of the key for messages), or IdentityError."""
        if self._secret is not None:
            if alg != DEV_ALGORITHM:
                raise IdentityError("bad_algorithm", f"this gateway uses development tokens (HS256), but the "
                                    f"token is {_alg(alg)}; mint one with `wiretrail token`")
            return self._secret, [DEV_ALGORITHM], "the development secret (identity.hs256_secret)"
        assert self._keys is not None
        if alg not in ASYMMETRIC_ALGORITHMS:
            raise IdentityError("bad_algorithm", f"the token is signed with {_alg(alg)}; keys from the IdP's "
                                "JWKS only verify RSA, EC and EdDSA signatures (HMAC is never accepted here)")
        try:
            found = self._keys.find(kid, alg)
        except JwksUnavailable as e:
            raise IdentityError("idp_unreachable", _unreachable_message(str(e))) from None
        if found is None:
            # The kid is not echoed: nothing from an unverified token goes into a message.
            if kid is not None:
                what = f"the IdP's key set at {self._keys.source} has no key with the token's key id (kid)"
            else:
                what = (f"the token names no key id (kid), and the IdP's key set at {self._keys.source} "
                        "has more than one key that could verify it")
            raise IdentityError("unknown_key", f"{what}. The token is from another IdP or tenant, or its key "
                                "was withdrawn: get a new token")
        if alg not in found.algorithms:
            raise IdentityError("bad_algorithm", f"the token says {_alg(alg)}, but key {_kid(found.kid)} only verifies "
                                f"{', '.join(sorted(found.algorithms))}")
        return found.key, [alg], f"the IdP's key {_kid(found.kid)}"

    def _identity(self, claims: dict[str, Any]) -> VerifiedIdentity:
        config, now = self.config, self._clock()
        leeway = config.leeway
        iss = claims.get("iss")
        if iss != config.issuer:
            got = f"was issued by {_claim(iss)}" if iss is not None else "has no issuer (iss claim)"
            raise IdentityError("bad_issuer", f"the token {got}; this gateway accepts tokens from "
                                f"{_claim(config.issuer)} (identity.issuer). Get a token from that IdP")
        aud = claims.get("aud")
        audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
        if config.audience not in audiences:
            got = f"is for {_claim(aud)}" if aud is not None else "has no audience (aud claim)"
            raise IdentityError("bad_audience", f"the token {got}; this gateway accepts tokens for "
                                f"{_claim(config.audience)} (identity.audience). Ask your IdP for a token "
                                "with that audience")
        exp = _time_claim(claims, "exp")
        if exp is None:
            raise IdentityError("malformed", "the token has no expiry (exp claim); only tokens that expire "
                                "are accepted")
        if exp <= now - leeway:
            raise IdentityError("expired", f"the token expired {_ago(now - exp)} ago ({_when(exp)}); "
                                "get a new one (development: `wiretrail token`)")
        for name in ("nbf", "iat"):
            at = _time_claim(claims, name)
            if at is not None and at > now + leeway:
                raise IdentityError("not_yet_valid", f"the token is not valid until {_when(at)} ({name} claim), "
                                    f"{_ago(at - now)} from now; check this machine's clock and the IdP's")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub.strip():
            raise IdentityError("no_subject", "the token names nobody (no sub claim); use a token issued "
                                "to a person or a service account")
        return VerifiedIdentity(
            sub=sub,
            email=_text(claims.get("email")),
            name=_text(claims.get("name")),
            groups=groups_from_claims(claims, config.groups_claim),
            iss=iss,
            method="jwt",
            authenticated=True,
            expires=float(exp),
        )


# pyjwt checks the signature; the claims are checked above, against the injected clock.
_SIGNATURE_ONLY = {"verify_signature": True, "verify_exp": False, "verify_nbf": False, "verify_iat": False,
                   "verify_aud": False, "verify_iss": False, "verify_sub": False, "verify_jti": False}


def _parse_structure(token: str) -> dict[str, Any]:
    """The token's header, after checking its shape, so that junk gets a clear reason."""
    parts = token.split(".")
    if len(parts) == 5:
        raise IdentityError("malformed", "the token is encrypted (JWE); send a signed JWT (an access token "
                            "or ID token)")
    if len(parts) != 3:
        raise IdentityError("malformed", "the token is not a JWT (expected three dot-separated parts: "
                            "header.payload.signature)")
    if not all(_SEGMENT.match(p) for p in parts):
        raise IdentityError("malformed", "the token is not a JWT (it holds characters outside base64url)")
    try:
        header = json.loads(_b64url(parts[0]))
    except (ValueError, RecursionError):
        raise IdentityError("malformed", "the token's header is not base64url-encoded JSON") from None
    if not isinstance(header, dict) or not isinstance(header.get("alg"), str):
        raise IdentityError("malformed", "the token's header names no algorithm (alg)")
    if header["alg"].lower() == "none":
        raise IdentityError("bad_algorithm", 'the token is unsigned (alg "none"); unsigned tokens are never accepted')
    if not parts[2]:
        raise IdentityError("bad_signature", "the token has no signature")
    try:
        _b64url(parts[2])
    except ValueError:
        raise IdentityError("bad_signature", "the token's signature is cut short or damaged; copy the whole "
                            "token") from None
    return header


def _b64url(segment: str) -> bytes:
    """Strict base64url without padding: raises ValueError for a length or trailing bits no
    encoder produces (a truncated segment)."""
    if len(segment) % 4 == 1:
        raise ValueError("bad length")
    data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    if base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii") != segment:
        raise ValueError("not canonical")
    return data


def groups_from_claims(claims: Mapping[str, Any], path: str) -> tuple[str, ...]:
    """The caller's groups at `path`: a claim name, or a dotted path into nested objects
    ("realm_access.roles"). A claim whose own name holds dots (Auth0's namespaced
    "https://example.com/groups") is found too: the longest matching name wins at each level.
    A string is one group; a list keeps its strings; anything else gives no groups."""
    value = _at_path(claims, path)
    if isinstance(value, str):
        values = [value]
    elif isinstance(value, list):
        values = [v for v in value if isinstance(v, str)]
    else:
        return ()
    return tuple(dict.fromkeys(v for v in values if v))


def _at_path(obj: Any, path: str) -> Any:
    if not isinstance(obj, Mapping):
        return None
    if path in obj:
        return obj[path]
    cut = path.rfind(".")
    while cut > 0:
        head = path[:cut]
        if head in obj:
            found = _at_path(obj[head], path[cut + 1:])
            if found is not None:
                return found
        cut = path.rfind(".", 0, cut)
    return None


def _time_claim(claims: Mapping[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    try:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError
        return float(value)
    except (ValueError, OverflowError):
        raise IdentityError("malformed", f"the token's {name} claim is not a number of seconds") from None


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _claim(value: Any) -> str:
    """A claim value from a token whose signature checked out, for a message: JSON, cut short."""
    text = json.dumps(value, ensure_ascii=True)
    return text if len(text) <= 100 else text[:97] + "..."


_KNOWN_ALGORITHMS = frozenset({"none", "HS256", "HS384", "HS512", "ES256K"}) | ASYMMETRIC_ALGORITHMS


def _alg(alg: str) -> str:
    """The token's alg for a message: only a known algorithm name is shown (it is unverified)."""
    return json.dumps(alg) if alg in _KNOWN_ALGORITHMS else "an unknown algorithm"


def _kid(kid: str | None) -> str:
    """A kid from the IdP's key set (not from the token) for a message."""
    if kid is None:
        return "(no kid)"
    return json.dumps(kid) if len(kid) <= 64 and kid.isprintable() else "(an unusual kid)"


def _ago(seconds: float) -> str:
    seconds = abs(seconds)
    if seconds < 120:
        return f"{int(seconds)} s"
    if seconds < 7200:
        return f"{int(seconds // 60)} min"
    if seconds < 172800:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} days"


def _when(t: float) -> str:
    try:
        return datetime.fromtimestamp(t, timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (OverflowError, OSError, ValueError):
        return "a time out of range"


def _unreachable_message(why: str) -> str:
    return (f"the IdP's signing keys could not be fetched ({why}); keys already known keep working. "
            "Check identity.jwks_url and that the gateway can reach the IdP")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


# -- development tokens ------------------------------------------------------------------------


def mint_dev_token(secret: str, *, sub: str, groups=(), email: str | None = None, name: str | None = None,
                   ttl: float = 8 * 3600, issuer: str, audience: str, groups_claim: str = "groups",
                   clock: Callable[[], float] = time.time) -> str:
    """An HS256 token for the development identity (identity.hs256_secret). `groups` go where
    `groups_claim` says, nested for a dotted path, so the gateway finds them where it looks."""
    key = secret.encode("utf-8")
    if len(key) < MIN_HS256_SECRET:
        raise ValueError(f"the HS256 secret needs at least {MIN_HS256_SECRET} bytes")
    if not sub:
        raise ValueError("sub must not be empty")
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    now = int(clock())
    claims: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": sub, "iat": now, "nbf": now,
                              "exp": now + int(ttl), "jti": uuid.uuid4().hex}
    if email:
        claims["email"] = email
    if name:
        claims["name"] = name
    if groups:
        *parents, leaf = groups_claim.split(".")
        target = claims
        for part in parents:
            target = target.setdefault(part, {})
        target[leaf] = list(groups)
    return jwt.encode(claims, key, algorithm=DEV_ALGORITHM)
