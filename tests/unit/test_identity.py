"""Identity tokens: what is accepted, what is refused and why, and that no message leaks a token.

JWKS tests use a real HTTP IdP on 127.0.0.1 (tests/support/idp.py) that can rotate keys and go down.
Time is a test clock handed to the verifier, so nothing here waits.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import threading

import jwt
import pytest
from cryptography.hazmat.primitives import serialization

from recorder.auth.identity import (
    ANONYMOUS,
    MAX_TOKEN_LENGTH,
    IdentityError,
    TokenVerifier,
    VerifiedIdentity,
    ensure_dev_secret,
    groups_from_claims,
    mint_dev_token,
    token_from_api_headers,
    token_from_proxy_authorization,
)
from recorder.auth.jwks import JwksUnavailable, parse_jwks
from recorder.commands import token as token_cmd
from recorder.config import ConfigError, IdentityConfig, SecretRef, load_config
from tests.support.idp import AUDIENCE, ISSUER, LocalIdP, new_private_key, public_jwk

DEV_SECRET = "dev-secret-0123456789-abcdefghijklmnopqrstuvwxyz"  # 48 bytes
DEV_ISSUER, DEV_AUDIENCE = "wiretrail-dev", "wiretrail"


class Clock:
    def __init__(self, now: float):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    import time

    return Clock(time.time())


@pytest.fixture
def idp():
    server = LocalIdP().start()
    yield server
    server.stop()


def jwks_verifier(idp: LocalIdP, clock: Clock, **config) -> TokenVerifier:
    cfg = IdentityConfig(issuer=idp.issuer, audience=idp.audience, jwks_url=idp.jwks_url, **config)
    return TokenVerifier(cfg, clock=clock, fetch_timeout=2.0)


def dev_config(monkeypatch, **config) -> IdentityConfig:
    monkeypatch.setenv("WT_TEST_DEV_SECRET", DEV_SECRET)
    return IdentityConfig(issuer=DEV_ISSUER, audience=DEV_AUDIENCE,
                          hs256_secret=SecretRef(key="identity.hs256_secret", ref="env:WT_TEST_DEV_SECRET"), **config)


def dev_token(secret: str = DEV_SECRET, **kw) -> str:
    kw.setdefault("sub", "alice")
    return mint_dev_token(secret, issuer=kw.pop("issuer", DEV_ISSUER), audience=kw.pop("audience", DEV_AUDIENCE), **kw)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict, claims: dict, sign) -> str:
    """A compact JWT built by hand, for tokens pyjwt refuses to make (HMAC with a PEM key)."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    return f"{signing_input}.{b64url(sign(signing_input.encode()))}"


def assert_no_leak(message: str, token: str | None) -> None:
    assert message.strip(), "a refusal must say what is wrong"
    if token:
        assert token not in message
        for i in range(0, max(0, len(token) - 16), 7):  # no 16-character piece of it either
            assert token[i:i + 16] not in message


def refusal(verifier: TokenVerifier, token: str) -> IdentityError:
    with pytest.raises(IdentityError) as caught:
        verifier.verify(token)
    error = caught.value
    assert str(error) == error.message
    assert_no_leak(error.message, token)
    return error


# -- the table of bad tokens ----------------------------------------------------------------


def _alg_confusion(idp: LocalIdP, clock: Clock) -> str:
    """HS256, "signed" with the IdP's public key PEM as the HMAC secret: the classic attack."""
    pem = idp.private_key().public_key().public_bytes(serialization.Encoding.PEM,
                                                      serialization.PublicFormat.SubjectPublicKeyInfo)
    return hand_made({"alg": "HS256", "typ": "JWT", "kid": idp.first_kid}, idp.claims(now=clock.now),
                     lambda data: hmac.new(pem, data, hashlib.sha256).digest())


def _alg_none(idp: LocalIdP, clock: Clock) -> str:
    return jwt.encode(idp.claims(now=clock.now), None, algorithm="none", headers={"kid": idp.first_kid})


def _foreign_rs256(idp: LocalIdP, clock: Clock) -> str:
    """Signed by a key that is not the IdP's, claiming the IdP's kid."""
    return jwt.encode(idp.claims(now=clock.now), new_private_key("RSA"), algorithm="RS256",
                      headers={"kid": idp.first_kid})


def _unknown_kid(idp: LocalIdP, clock: Clock) -> str:
    kid = idp.add_key(publish=False)
    return idp.token(kid=kid, now=clock.now)


def _too_large(idp: LocalIdP, clock: Clock) -> str:
    return idp.token(now=clock.now, padding="x" * 64 * 1024)  # well-formed and correctly signed, but 64 KB


JWKS_BAD_TOKENS = [
    ("expired", lambda idp, c: idp.token(now=c.now - 7200, ttl=3600), "expired"),
    ("not yet valid", lambda idp, c: idp.token(now=c.now + 3600), "not_yet_valid"),
    ("issued in the future", lambda idp, c: idp.token(now=c.now, iat=int(c.now + 3600)), "not_yet_valid"),
    ("wrong iss", lambda idp, c: idp.token(now=c.now, iss="https://evil.example/"), "bad_issuer"),
    ("no iss", lambda idp, c: idp.token(now=c.now, iss=None), "bad_issuer"),
    ("wrong aud", lambda idp, c: idp.token(now=c.now, aud="some-other-api"), "bad_audience"),
    ("no aud", lambda idp, c: idp.token(now=c.now, aud=None), "bad_audience"),
    ("alg none", _alg_none, "bad_algorithm"),
    ("RS256 from a foreign key", _foreign_rs256, "bad_signature"),
    ("HS256 signed with the JWKS public key", _alg_confusion, "bad_algorithm"),
    ("unknown kid", _unknown_kid, "unknown_key"),
    ("garbage", lambda idp, c: "this is not a token", "malformed"),
    ("three parts of garbage", lambda idp, c: "abc.def.ghi", "malformed"),
    ("encrypted (JWE)", lambda idp, c: "a.b.c.d.e", "malformed"),
    ("truncated signature", lambda idp, c: idp.token(now=c.now)[:-10], "bad_signature"),
    ("signature cut by one", lambda idp, c: idp.token(now=c.now)[:-1], "bad_signature"),
    ("no signature", lambda idp, c: idp.token(now=c.now).rsplit(".", 1)[0] + ".", "bad_signature"),
    ("no sub", lambda idp, c: idp.token(sub=None, now=c.now), "no_subject"),
    ("empty sub", lambda idp, c: idp.token(sub="", now=c.now), "no_subject"),
    ("no exp", lambda idp, c: idp.token(now=c.now, exp=None), "malformed"),
    ("exp not a number", lambda idp, c: idp.token(now=c.now, exp="tomorrow"), "malformed"),
    ("empty", lambda idp, c: "", "missing"),
    ("blank", lambda idp, c: "   ", "missing"),
    ("64 KB", _too_large, "too_large"),
]


@pytest.mark.parametrize("make, reason", [row[1:] for row in JWKS_BAD_TOKENS],
                         ids=[row[0] for row in JWKS_BAD_TOKENS])
def test_bad_tokens_from_a_jwks_idp_are_refused_with_a_reason(idp, clock, make, reason):
    verifier = jwks_verifier(idp, clock)
    assert verifier.verify(idp.token(now=clock.now)).sub == "alice"  # the IdP and keys work
    bad = make(idp, clock)
    error = refusal(verifier, bad)
    assert error.reason == reason, error.message
    assert verifier.cached(bad) is None  # a refusal is never cached


DEV_BAD_TOKENS = [
    ("wrong secret", lambda: dev_token("another-secret-that-is-long-enough-0123456789"), "bad_signature"),
    ("wrong iss", lambda: dev_token(issuer="someone-else"), "bad_issuer"),
    ("wrong aud", lambda: dev_token(audience="not-wiretrail"), "bad_audience"),
    ("expired", lambda: dev_token(ttl=60, clock=lambda: 1_000_000), "expired"),
    ("alg none", lambda: jwt.encode({"sub": "alice", "iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "exp": 4_000_000_000},
                                    None, algorithm="none"), "bad_algorithm"),
    ("RS256 in dev mode", lambda: jwt.encode({"sub": "alice", "iss": DEV_ISSUER, "aud": DEV_AUDIENCE,
                                              "exp": 4_000_000_000}, new_private_key("RSA"), algorithm="RS256"),
     "bad_algorithm"),
    ("HS512", lambda: jwt.encode({"sub": "alice", "iss": DEV_ISSUER, "aud": DEV_AUDIENCE,
                                                        "exp": 4_000_000_000}, DEV_SECRET * 2, algorithm="HS512"),
     "bad_algorithm"),
    ("no sub", lambda: jwt.encode({"iss": DEV_ISSUER, "aud": DEV_AUDIENCE, "exp": 4_000_000_000},
                                  DEV_SECRET, algorithm="HS256"), "no_subject"),
    ("garbage", lambda: "Zm9v", "malformed"),
    ("empty", lambda: "", "missing"),
    ("64 KB", lambda: dev_token(sub="a" * 64 * 1024), "too_large"),
]


@pytest.mark.parametrize("make, reason", [row[1:] for row in DEV_BAD_TOKENS], ids=[row[0] for row in DEV_BAD_TOKENS])
def test_bad_tokens_in_development_mode_are_refused_with_a_reason(monkeypatch, make, reason):
    verifier = TokenVerifier(dev_config(monkeypatch))
    error = refusal(verifier, make())
    assert error.reason == reason, error.message


def test_a_huge_token_is_refused_before_any_parsing_or_fetching(idp, clock):
    verifier = jwks_verifier(idp, clock)
    huge = "e" * (4 * 1024 * 1024)  # 4 MiB: parsing it, or fetching keys for it, would be the cost
    assert refusal(verifier, huge).reason == "too_large"
    assert verifier.verifications == 0 and idp.hits == 0
    assert verifier.cached(huge) is None
    # The limit is the documented one: one character more than the maximum is refused.
    assert refusal(verifier, "e" * (MAX_TOKEN_LENGTH + 1)).reason == "too_large"


def test_the_messages_say_what_is_wrong(idp, clock):
    verifier = jwks_verifier(idp, clock)
    assert "https://evil.example/" in refusal(verifier, idp.token(now=clock.now, iss="https://evil.example/")).message
    assert ISSUER in refusal(verifier, idp.token(now=clock.now, iss="https://evil.example/")).message
    assert AUDIENCE in refusal(verifier, idp.token(now=clock.now, aud="x")).message
    assert "expired" in refusal(verifier, idp.token(now=clock.now - 7200, ttl=60)).message
    assert "unsigned" in refusal(verifier, _alg_none(idp, clock)).message
    assert "HMAC" in refusal(verifier, _alg_confusion(idp, clock)).message
    assert idp.jwks_url in refusal(verifier, _unknown_kid(idp, clock)).message


def test_nothing_from_an_unverified_token_is_echoed(idp, clock):
    verifier = jwks_verifier(idp, clock)
    marker = "MARKER-private-0123"
    made_up = jwt.encode(idp.claims(now=clock.now, iss=marker), idp.private_key(), algorithm="RS256",
                         headers={"kid": marker})
    assert marker not in refusal(verifier, made_up).message  # unknown kid
    odd_alg = hand_made({"alg": marker, "kid": idp.first_kid}, idp.claims(now=clock.now), lambda d: b"x" * 32)
    assert marker not in refusal(verifier, odd_alg).message


# -- what is accepted --------------------------------------------------------------------------


def test_a_good_token_gives_the_identity(idp, clock):
    verifier = jwks_verifier(idp, clock)
    token = idp.token(sub="alice", email="alice@example.com", name="Alice A", groups=["engineering", "ops"],
                      now=clock.now)
    identity = verifier.verify(token)
    assert identity == VerifiedIdentity(sub="alice", email="alice@example.com", name="Alice A",
                                groups=("engineering", "ops"), iss=ISSUER, method="jwt", authenticated=True,
                                expires=float(int(clock.now + 3600)))
    assert identity.record() == {"sub": "alice", "email": "alice@example.com", "name": "Alice A",
                                 "groups": ["engineering", "ops"], "iss": ISSUER, "method": "jwt",
                                 "authenticated": True}
    assert identity.key() == f"{ISSUER} alice"
    json.dumps(identity.record())  # session.open stores it as JSON


def test_clock_skew_within_the_leeway_is_accepted(idp, clock):
    verifier = jwks_verifier(idp, clock, leeway=30)
    assert verifier.verify(idp.token(now=clock.now - 3610, ttl=3600)).sub == "alice"  # expired 10 s ago
    assert verifier.verify(idp.token(sub="bob", now=clock.now + 20)).sub == "bob"  # issued 20 s ahead
    assert refusal(verifier, idp.token(now=clock.now - 3640, ttl=3600)).reason == "expired"  # 40 s: too late


def test_audience_may_be_a_list(idp, clock):
    verifier = jwks_verifier(idp, clock)
    assert verifier.verify(idp.token(now=clock.now, aud=["other", AUDIENCE])).sub == "alice"
    assert refusal(verifier, idp.token(sub="b", now=clock.now, aud=["other", "more"])).reason == "bad_audience"


@pytest.mark.parametrize("kty, alg", [("RSA", "RS256"), ("RSA", "RS512"), ("RSA", "PS256"),
                                      ("EC", "ES256"), ("OKP", "EdDSA")])
def test_each_asymmetric_key_type_verifies_its_algorithms(clock, kty, alg):
    with LocalIdP(kty=kty) as idp:
        verifier = jwks_verifier(idp, clock)
        assert verifier.verify(idp.token(alg=alg, now=clock.now)).sub == "alice"


def test_an_algorithm_that_does_not_fit_the_key_is_refused(clock):
    with LocalIdP(kty="RSA") as idp:
        ec_kid = idp.add_key(kty="EC")
        verifier = jwks_verifier(idp, clock)
        # An ES256 token naming the RSA key's kid
        token = jwt.encode(idp.claims(now=clock.now), idp.private_key(ec_kid), algorithm="ES256",
                           headers={"kid": idp.first_kid})
        assert refusal(verifier, token).reason == "bad_algorithm"


def test_a_key_pinned_to_an_alg_verifies_only_that_alg(clock):
    with LocalIdP() as idp:
        idp.published.clear()
        key = new_private_key("RSA")
        idp.extra_jwks.append(public_jwk(key, "pinned", alg="RS256"))
        verifier = jwks_verifier(idp, clock)
        claims = idp.claims(now=clock.now)
        assert verifier.verify(jwt.encode(claims, key, algorithm="RS256", headers={"kid": "pinned"})).sub == "alice"
        ps = jwt.encode(claims, key, algorithm="PS256", headers={"kid": "pinned"})
        assert refusal(verifier, ps).reason == "bad_algorithm"


def test_hmac_keys_in_a_jwks_are_never_used(clock):
    """A JWKS is public: an "oct" key published there must not verify anything."""
    secret = b"s" * 32
    with LocalIdP() as idp:
        idp.extra_jwks.append({"kty": "oct", "kid": "shared", "k": b64url(secret), "alg": "HS256"})
        verifier = jwks_verifier(idp, clock)
        token = jwt.encode(idp.claims(now=clock.now), secret, algorithm="HS256", headers={"kid": "shared"})
        assert refusal(verifier, token).reason == "bad_algorithm"


def test_a_token_without_kid_uses_the_only_fitting_key(clock):
    with LocalIdP() as idp:
        verifier = jwks_verifier(idp, clock)
        no_kid = jwt.encode(idp.claims(now=clock.now), idp.private_key(), algorithm="RS256")
        assert verifier.verify(no_kid).sub == "alice"
        idp.add_key()
        verifier = jwks_verifier(idp, clock)
        other = jwt.encode(idp.claims(sub="bob", now=clock.now), idp.private_key(), algorithm="RS256")
        # Two RSA keys published now: a token without kid is ambiguous
        assert refusal(verifier, other).reason == "unknown_key"


# -- the JWKS: rotation, outage, rate limit ----------------------------------------------------


def test_rotation_a_new_kid_is_picked_up(idp, clock):
    verifier = jwks_verifier(idp, clock)
    assert verifier.verify(idp.token(sub="alice", now=clock.now)).sub == "alice"
    assert idp.hits == 1
    new_kid = idp.add_key()  # the IdP rotates: a new key appears in its JWKS
    clock.advance(31)
    assert verifier.verify(idp.token(sub="bob", kid=new_kid, now=clock.now)).sub == "bob"
    assert idp.hits == 2  # the unknown kid made exactly one refresh
    # the old key still works while it is published
    assert verifier.verify(idp.token(sub="carol", now=clock.now)).sub == "carol"
    assert idp.hits == 2


def test_a_withdrawn_key_stops_working_after_the_keys_age_out(idp, clock):
    verifier = jwks_verifier(idp, clock, )
    old = idp.first_kid
    assert verifier.verify(idp.token(sub="alice", now=clock.now)).sub == "alice"
    new_kid = idp.add_key()
    idp.withdraw(old)
    clock.advance(3601)  # past the keys' max age: the next lookup refreshes
    assert verifier.verify(idp.token(sub="bob", kid=new_kid, now=clock.now)).sub == "bob"
    assert refusal(verifier, idp.token(sub="carol", kid=old, now=clock.now)).reason == "unknown_key"


def test_idp_down_cached_keys_keep_working(idp, clock):
    verifier = jwks_verifier(idp, clock)
    assert verifier.verify(idp.token(sub="alice", now=clock.now)).sub == "alice"
    known = idp.token(sub="bob", now=clock.now)  # not yet verified, signed with a cached key
    unknown = idp.token(sub="carol", kid=idp.add_key(), now=clock.now)
    idp.stop()
    clock.advance(31)
    assert verifier.verify(known).sub == "bob"  # no fetch needed
    error = refusal(verifier, unknown)  # needs a fetch, which fails
    assert error.reason == "idp_unreachable"
    assert idp.jwks_url in error.message and "keep working" in error.message
    # Even when the cached keys are past their age and the refresh fails, they keep working
    clock.advance(7200)
    assert verifier.verify(idp.token(sub="dave", now=clock.now)).sub == "dave"


def test_idp_answering_an_error_status_is_unreachable(idp, clock):
    verifier = jwks_verifier(idp, clock)
    idp.status = 503
    error = refusal(verifier, idp.token(now=clock.now))
    assert error.reason == "idp_unreachable" and "503" in error.message
    with pytest.raises(IdentityError) as caught:
        verifier.load_keys()
    assert caught.value.reason == "idp_unreachable"


def test_idp_down_from_the_start(clock):
    idp = LocalIdP().start()
    idp.stop()
    verifier = jwks_verifier(idp, clock)  # constructing does not fetch
    with pytest.raises(IdentityError) as caught:
        verifier.load_keys()
    assert caught.value.reason == "idp_unreachable"
    assert refusal(verifier, idp.token(now=clock.now)).reason == "idp_unreachable"


def test_unknown_kids_refresh_at_most_once_per_interval(idp, clock):
    verifier = jwks_verifier(idp, clock)
    assert verifier.verify(idp.token(now=clock.now)).sub == "alice"
    clock.advance(31)
    for i in range(20):
        made_up = jwt.encode(idp.claims(sub=f"u{i}", now=clock.now), idp.private_key(), algorithm="RS256",
                             headers={"kid": f"made-up-{i}"})
        assert refusal(verifier, made_up).reason == "unknown_key"
    assert idp.hits == 2  # the first load, then one refresh for twenty unknown kids
    clock.advance(29)
    refusal(verifier, idp.token(kid=idp.add_key(publish=False), now=clock.now))
    assert idp.hits == 2  # still inside the interval
    clock.advance(2)
    refusal(verifier, idp.token(kid=idp.add_key(publish=False), now=clock.now))
    assert idp.hits == 3


def test_a_rotated_key_inside_the_interval_waits_for_the_next_refresh(idp, clock):
    """The rate limit also applies right after a refresh: the new kid is refused until it ends."""
    verifier = jwks_verifier(idp, clock)
    verifier.verify(idp.token(now=clock.now))
    token = idp.token(sub="bob", kid=idp.add_key(), now=clock.now)
    assert refusal(verifier, token).reason == "unknown_key"
    clock.advance(30)
    assert verifier.verify(token).sub == "bob"


def test_concurrent_first_requests_fetch_the_keys_once(idp, clock):
    verifier = jwks_verifier(idp, clock)
    tokens = [idp.token(sub=f"user{i}", now=clock.now) for i in range(16)]
    results: list = [None] * len(tokens)
    start = threading.Barrier(len(tokens))

    def work(i):
        start.wait()
        results[i] = verifier.verify(tokens[i]).sub

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(tokens))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [f"user{i}" for i in range(16)]
    assert idp.hits == 1


def test_jwks_file(tmp_path, clock):
    idp = LocalIdP()  # not started: its keys go into a file
    path = idp.write_jwks_file(tmp_path / "jwks.json")
    cfg = IdentityConfig(issuer=idp.issuer, audience=idp.audience, jwks_file=path)
    verifier = TokenVerifier(cfg, clock=clock)
    assert verifier.verify(idp.token(now=clock.now)).sub == "alice"
    # rotation by rewriting the file
    new_kid = idp.add_key()
    idp.write_jwks_file(path)
    clock.advance(31)
    assert verifier.verify(idp.token(sub="bob", kid=new_kid, now=clock.now)).sub == "bob"


@pytest.mark.parametrize("content, expected", [
    (None, "no such file"),
    ("not json", "not JSON"),
    ('{"keys": []}', "no usable signing key"),
    ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "never taken from a JWKS"),
])
def test_a_bad_jwks_file_stops_start_up(tmp_path, content, expected):
    path = tmp_path / "jwks.json"
    if content is not None:
        path.write_text(content)
    cfg = IdentityConfig(issuer=ISSUER, audience=AUDIENCE, jwks_file=path)
    with pytest.raises(ConfigError) as caught:
        TokenVerifier(cfg)
    assert "identity.jwks_file" in str(caught.value) and expected in str(caught.value)


def test_parse_jwks_skips_encryption_and_unknown_keys():
    sig = new_private_key("RSA")
    enc = new_private_key("RSA")
    doc = {"keys": [public_jwk(enc, "enc-key", alg="RSA-OAEP", use="enc"),
                    {"kty": "XYZ", "kid": "odd"},
                    public_jwk(sig, "sig-key")]}
    keys = parse_jwks(json.dumps(doc).encode(), "test")
    assert [k.kid for k in keys] == ["sig-key"]
    with pytest.raises(JwksUnavailable):
        parse_jwks(json.dumps({"keys": doc["keys"][:2]}).encode(), "test")


# -- where the token comes from ----------------------------------------------------------------

TOKEN = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"


def basic(user_pass: str) -> str:
    return "Basic " + base64.b64encode(user_pass.encode()).decode()


@pytest.mark.parametrize("header, expected", [
    (basic(f"alice:{TOKEN}"), TOKEN),  # HTTPS_PROXY=http://alice:TOKEN@gateway:8080
    (basic(f"x:{TOKEN}"), TOKEN),
    (basic(f"{TOKEN}:"), TOKEN),  # the token as the user name, empty password
    (f"Bearer {TOKEN}", TOKEN),
    (f"bearer   {TOKEN}  ", TOKEN),
    (None, None),
    ("", None),
    ("Bearer ", None),
])
def test_token_from_proxy_authorization(header, expected):
    assert token_from_proxy_authorization(header) == expected


@pytest.mark.parametrize("header", ["Basic !!!not-base64!!!", f"Digest username={TOKEN}", f"Token {TOKEN}"])
def test_an_unusable_proxy_authorization_is_malformed(header):
    with pytest.raises(IdentityError) as caught:
        token_from_proxy_authorization(header)
    assert caught.value.reason == "malformed"
    assert_no_leak(caught.value.message, TOKEN)


@pytest.mark.parametrize("headers, expected", [
    ({"authorization": f"Bearer {TOKEN}"}, TOKEN),  # OpenAI SDKs
    ({"Authorization": f"Bearer {TOKEN}"}, TOKEN),
    ({"x-api-key": TOKEN}, TOKEN),  # Anthropic SDKs
    ({"X-Api-Key": TOKEN}, TOKEN),
    ({"api-key": TOKEN}, TOKEN),  # Azure OpenAI
    ({"x-goog-api-key": TOKEN}, TOKEN),  # Gemini
    ({"authorization": "Basic abc", "x-api-key": TOKEN}, TOKEN),
    ({"content-type": "application/json"}, None),
    ({}, None),
])
def test_token_from_api_headers(headers, expected):
    assert token_from_api_headers(headers) == expected


def test_token_from_mitmproxy_headers():
    from mitmproxy.http import Headers  # what the addon will pass

    assert token_from_api_headers(Headers([(b"X-API-Key", TOKEN.encode())])) == TOKEN
    assert token_from_api_headers(Headers([(b"Authorization", f"Bearer {TOKEN}".encode())])) == TOKEN


def test_a_non_bearer_authorization_alone_is_malformed():
    with pytest.raises(IdentityError) as caught:
        token_from_api_headers({"authorization": f"Basic {TOKEN}"})
    assert caught.value.reason == "malformed"
    assert_no_leak(caught.value.message, TOKEN)


# -- the verified-token cache ------------------------------------------------------------------


def test_a_verified_token_is_not_verified_again_until_it_expires(idp, clock):
    verifier = jwks_verifier(idp, clock)
    token = idp.token(now=clock.now, ttl=600)
    assert verifier.cached(token) is None
    first = verifier.verify(token)
    assert verifier.verifications == 1
    for _ in range(5):
        assert verifier.verify(token) is first
        assert verifier.cached(token) is first
    assert verifier.verifications == 1
    clock.advance(629)  # exp + leeway (30 s) is the end: until then a full check would pass too
    assert verifier.cached(token) is first
    clock.advance(2)
    assert verifier.cached(token) is None
    assert refusal(verifier, token).reason == "expired"
    assert verifier.verifications == 2


def test_the_cache_is_bounded(idp, clock):
    cfg = IdentityConfig(issuer=idp.issuer, audience=idp.audience, jwks_url=idp.jwks_url)
    verifier = TokenVerifier(cfg, clock=clock, cache_size=2)
    a, b, c = (idp.token(sub=s, now=clock.now) for s in "abc")
    for t in (a, b, c):
        verifier.verify(t)
    assert verifier.cached(a) is None  # the least recently used went
    assert verifier.cached(b) is not None and verifier.cached(c) is not None


def test_the_cache_is_per_token_not_per_subject(monkeypatch):
    verifier = TokenVerifier(dev_config(monkeypatch))
    good = dev_token(sub="alice")
    verifier.verify(good)
    tampered = good[:-2] + ("AA" if not good.endswith("AA") else "BB")
    assert verifier.cached(tampered) is None
    assert refusal(verifier, tampered).reason == "bad_signature"


# -- groups --------------------------------------------------------------------------------------


@pytest.mark.parametrize("claims, path, expected", [
    ({"groups": ["eng", "ops"]}, "groups", ("eng", "ops")),
    ({"groups": "eng"}, "groups", ("eng",)),  # a single group as a string
    ({"groups": ["eng", 7, None, "eng", ""]}, "groups", ("eng",)),  # non-strings and repeats dropped
    ({"realm_access": {"roles": ["admin", "dev"]}}, "realm_access.roles", ("admin", "dev")),
    ({"https://wiretrail.example.com/groups": ["eng"]}, "https://wiretrail.example.com/groups", ("eng",)),
    ({"a": {"b.c": {"d": "x"}}}, "a.b.c.d", ("x",)),
    ({"roles": ["r"]}, "groups", ()),
    ({"groups": {"eng": True}}, "groups", ()),
    ({"realm_access": "nope"}, "realm_access.roles", ()),
])
def test_groups_claim_path(claims, path, expected):
    assert groups_from_claims(claims, path) == expected


def test_groups_claim_path_through_the_verifier(idp, clock):
    verifier = jwks_verifier(idp, clock, groups_claim="realm_access.roles")
    token = idp.token(now=clock.now, realm_access={"roles": ["engineering"]}, groups=["ignored"])
    assert verifier.verify(token).groups == ("engineering",)


# -- development tokens and the CLI --------------------------------------------------------------


def test_mint_dev_token_round_trip(monkeypatch):
    verifier = TokenVerifier(dev_config(monkeypatch))
    token = dev_token(sub="alice", groups=["engineering", "ops"], email="alice@example.com", name="Alice")
    identity = verifier.verify(token)
    assert (identity.sub, identity.groups, identity.email, identity.name, identity.iss) == (
        "alice", ("engineering", "ops"), "alice@example.com", "Alice", DEV_ISSUER)
    assert jwt.get_unverified_header(token)["alg"] == "HS256"


def test_mint_dev_token_follows_a_nested_groups_claim(monkeypatch):
    verifier = TokenVerifier(dev_config(monkeypatch, groups_claim="realm_access.roles"))
    token = dev_token(groups=["eng"], groups_claim="realm_access.roles")
    assert verifier.verify(token).groups == ("eng",)


def test_mint_dev_token_refuses_a_short_secret():
    with pytest.raises(ValueError):
        mint_dev_token("short", sub="alice", issuer=DEV_ISSUER, audience=DEV_AUDIENCE)


def test_a_short_dev_secret_stops_start_up(monkeypatch):
    monkeypatch.setenv("WT_SHORT", "tooshort")
    cfg = IdentityConfig(issuer=DEV_ISSUER, audience=DEV_AUDIENCE,
                         hs256_secret=SecretRef(key="identity.hs256_secret", ref="env:WT_SHORT"))
    with pytest.raises(ConfigError) as caught:
        TokenVerifier(cfg)
    assert "identity.hs256_secret" in str(caught.value) and "tooshort" not in str(caught.value)


def test_mode_none_has_no_verifier():
    with pytest.raises(ValueError):
        TokenVerifier(IdentityConfig(mode="none"))
    assert ANONYMOUS.record()["authenticated"] is False and ANONYMOUS.record()["method"] == "none"
    assert ANONYMOUS.key() == "anonymous"


def run_token_cmd(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="wiretrail")
    token_cmd.add_parser(parser.add_subparsers(dest="command"))
    return token_cmd.run(parser.parse_args(["token", *argv]))


def write_config(tmp_path, identity: str) -> str:
    path = tmp_path / "gateway.toml"
    path.write_text(f'[storage]\ndir = "sessions"\n[identity]\n{identity}\n')
    return str(path)


DEV_IDENTITY = (f'mode = "jwt"\nissuer = "{DEV_ISSUER}"\naudience = "{DEV_AUDIENCE}"\n'
                'hs256_secret = "env:WT_TEST_DEV_SECRET"\ngroups_claim = "groups"')


def test_cli_mints_a_token_the_gateway_accepts(tmp_path, monkeypatch, capsys):
    config = write_config(tmp_path, DEV_IDENTITY)
    monkeypatch.setenv("WT_TEST_DEV_SECRET", DEV_SECRET)
    assert run_token_cmd(["--sub", "alice", "--groups", "engineering,ops", "--groups", "qa",
                          "--email", "alice@example.com", "--ttl", "30m", "--config", config]) == 0
    out, err = capsys.readouterr()
    token = out.strip()
    assert out == token + "\n" and err == ""  # the token, and only the token, on stdout
    identity = TokenVerifier(dev_config(monkeypatch)).verify(token)
    assert identity.groups == ("engineering", "ops", "qa") and identity.email == "alice@example.com"
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["exp"] - claims["iat"] == 1800


@pytest.mark.parametrize("text, seconds", [("30m", 1800), ("8h", 28800), ("2d", 172800), ("90", 90), ("45s", 45)])
def test_cli_ttl(text, seconds):
    assert token_cmd.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["0", "-5m", "8x", "", "h"])
def test_cli_bad_ttl_is_a_usage_error(tmp_path, text):
    with pytest.raises(SystemExit) as caught:
        run_token_cmd(["--sub", "alice", "--ttl", text])
    assert caught.value.code == 2


@pytest.mark.parametrize("identity", [
    f'mode = "jwt"\nissuer = "{ISSUER}"\naudience = "{AUDIENCE}"\njwks_url = "https://idp.example.com/jwks.json"',
    'mode = "none"',
])
def test_cli_refuses_without_the_development_identity(tmp_path, capsys, identity):
    assert run_token_cmd(["--sub", "alice", "--config", write_config(tmp_path, identity)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "only works for the development identity" in err


def test_cli_with_the_embedded_default_mints_what_the_demo_gateway_accepts(tmp_path, monkeypatch, capsys):
    """The embedded default is the development identity: the token command makes its secret on
    first use, and a gateway started in the same directory accepts the token."""
    monkeypatch.chdir(tmp_path)
    assert run_token_cmd(["--sub", "alice", "--groups", "engineering"]) == 0
    token = capsys.readouterr().out.strip()
    assert (tmp_path / "keys" / "dev-identity.secret").exists()
    identity = TokenVerifier(load_config(None, cwd=tmp_path).identity).verify(token)
    assert (identity.sub, identity.groups, identity.iss) == ("alice", ("engineering",), "wiretrail-dev")


def test_cli_refuses_an_idp_identity(tmp_path, monkeypatch, capsys):
    """With keys from an IdP, tokens come from the IdP: a clear refusal, not a traceback."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text('{"keys": []}')
    config = write_config(tmp_path, f'issuer = "i"\naudience = "a"\njwks_file = "{jwks}"')
    assert run_token_cmd(["--sub", "alice", "--config", config]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "development identity" in err and "IdP" in err


def test_cli_unreadable_secret(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WT_TEST_DEV_SECRET", raising=False)
    assert run_token_cmd(["--sub", "alice", "--config", write_config(tmp_path, DEV_IDENTITY)]) == 1
    out, err = capsys.readouterr()
    assert out == "" and "WT_TEST_DEV_SECRET" in err


def test_ensure_dev_secret_makes_a_private_secret_once(tmp_path):
    path = ensure_dev_secret(tmp_path / ".wiretrail" / "dev-identity.secret")
    secret = path.read_text()
    assert len(secret.strip()) >= 32 and (path.stat().st_mode & 0o777) == 0o600
    assert ensure_dev_secret(path).read_text() == secret  # never replaced
    ref = SecretRef(key="identity.hs256_secret", ref=f"file:{path}")
    cfg = IdentityConfig(issuer=DEV_ISSUER, audience=DEV_AUDIENCE, hs256_secret=ref)
    assert TokenVerifier(cfg).verify(dev_token(secret.strip())).sub == "alice"
    assert [p.name for p in path.parent.iterdir()] == ["dev-identity.secret"]  # no temp file left
