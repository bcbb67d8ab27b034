"""Where clients put credentials (recorder/auth/credentials.py): the one list of credential
headers every module uses, the identity token in any header, and credential-like query keys
in any case or encoding."""
from __future__ import annotations

import base64

import pytest

import recorder.auth.credentials as cc
from recorder import config as cfgmod
from recorder.auth import identity
from recorder.auth.credentials import carries_token, query_key, strip_query
from recorder.masking import headers as header_masking
from recorder.masking.catalogue import RULES

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLW9mLXRoZS10b2tlbg"


def test_every_module_takes_the_credential_headers_from_one_list():
    assert identity.API_KEY_HEADERS is cc.API_KEY_HEADERS
    assert header_masking.MASKED_HEADERS is cc.MASKED_HEADERS
    assert set(cc.CREDENTIAL_HEADERS) <= cc.MASKED_HEADERS
    inject = next(k for p, k in cfgmod.iter_keys() if p == "connections[].inject")
    assert inject.kind.values is cc.INJECT_MODES
    assert set(cc.INJECT_HEADER.values()) <= set(cc.CREDENTIAL_HEADERS)
    rule = next(r for r in RULES if r["id"] == "authorization-header")
    assert cc.header_name_pattern() in rule["regex"] and rule["keywords"] == cc.header_name_keywords()
    for name in cc.CREDENTIAL_HEADERS:  # each name has a keyword that the rule's prefilter finds
        assert any(k in name for k in rule["keywords"]), name


@pytest.mark.parametrize("value, carries", [
    (TOKEN, True),
    (f"Bearer {TOKEN}", True),
    ("Basic " + base64.b64encode(f"alice:{TOKEN}".encode()).decode(), True),
    ("basic " + base64.b64encode(f"{TOKEN}:".encode()).decode().rstrip("="), True),
    ("Bearer sk-the-clients-own-key", False),
    ("Basic " + base64.b64encode(b"alice:password").decode(), False),
    ("Basic !!!not-base64", False),
])
def test_a_header_value_carries_the_token(value, carries):
    assert carries_token(value, TOKEN) is carries
    assert cc.field_carries_token(value.encode(), TOKEN.encode()) is carries


@pytest.mark.parametrize("raw, key", [
    ("key", "key"), ("KEY", "key"), ("%6bey", "key"), ("%6Bey", "key"), ("%256bey", "key"),
    ("%25256bey", "key"), ("api_key", "apikey"), ("API-Key", "apikey"), ("api.key", "apikey"),
    ("access%5Ftoken", "accesstoken"), ("x-goog-api-key", "xgoogapikey"), ("key[]", "key"),
    ("k%65y", "key"), ("+key", "key"),
])
def test_query_keys_are_compared_decoded(raw, key):
    assert query_key(raw) == key


STRIP = [
    # (path, what stays; None = nothing removed)
    ("/v1/x?key=sk-client&alt=sse", "/v1/x?alt=sse"),
    ("/v1/x?%6bey=sk-client", "/v1/x"),
    ("/v1/x?%6Bey=sk-client&alt=sse", "/v1/x?alt=sse"),
    ("/v1/x?KEY=a&Api_Key=b&access-token=c&x-goog-api-key=d&alt=sse", "/v1/x?alt=sse"),
    ("/v1/x?%2561pi_key=sk-client", "/v1/x"),
    ("/v1/x?alt=sse;key=sk-client", "/v1/x"),  # a ";" splits parameters for some servers
    ("/v1/x?page_token=abc&pageToken=def", None),  # pagination, not a credential
    ("/v1/x?alt=sse", None),
    ("/v1/x", None),
    ("/v1/x?key=sk#frag", "/v1/x#frag"),
    ("/v1/x?a=1&&key=2", "/v1/x?a=1&"),
]


@pytest.mark.parametrize("path, kept", STRIP, ids=[p for p, _ in STRIP])
def test_credential_query_parameters_are_stripped_in_any_spelling(path, kept):
    assert strip_query(path, credentials=True) == kept


def test_keep_query_lets_a_named_parameter_pass():
    assert strip_query("/v1/x?token=page2&key=sk", credentials=True, keep=frozenset({"token"})) == "/v1/x?token=page2"


def test_a_parameter_carrying_the_token_is_removed_everywhere():
    encoded = TOKEN.replace(".", "%2E")
    assert strip_query(f"/v1/x?t={TOKEN}&a=1", credentials=False, token=TOKEN) == "/v1/x?a=1"
    assert strip_query(f"/v1/x?q={encoded}", credentials=False, token=TOKEN) == "/v1/x"
    assert strip_query("/v1/x?key=sk-own&a=1", credentials=False, token=TOKEN) is None  # record-only: own key passes
