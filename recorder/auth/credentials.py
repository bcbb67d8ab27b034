"""Where clients put credentials: the one list of credential headers, and how to find them.

Every module that handles credentials takes its names from here: identity (where a
reverse-mode SDK puts the identity token), the credential swap (what it strips and what it
injects), the config (the `inject` values), header masking (what is recorded as a keyed
hash) and the masking catalogue (credential headers written in text).

No mitmproxy here: the credentials addon applies these to a request.
"""
from __future__ import annotations

import base64
import binascii
import re
from urllib.parse import unquote

# The gateway's own identity header: a client sends its wiretrail token here, beside its own API
# key (reverse mode; Claude Code's ANTHROPIC_CUSTOM_HEADERS, the SDKs' default_headers, Codex's
# env_http_headers). It is never forwarded and recorded only as a keyed hash.
IDENTITY_HEADER = "x-wiretrail-token"

# Headers a client may send to name its agent run (recorder/agent_runs.py). They only group
# records into sessions; the gateway does not forward them.
RUN_HEADER = "x-wiretrail-run"
AGENT_HEADER = "x-wiretrail-agent"
GATEWAY_HEADERS = (IDENTITY_HEADER, RUN_HEADER, AGENT_HEADER)  # never forwarded upstream

# The headers an SDK puts its API key in, in the order identity looks for the token
# (after Authorization: Bearer): Anthropic, Azure OpenAI, Gemini.
API_KEY_HEADERS = ("x-api-key", "api-key", "x-goog-api-key")

# Every header that carries a client credential. On a connection that injects, all are
# stripped; everywhere, each is recorded as a keyed hash, never its value.
CREDENTIAL_HEADERS = (
    "authorization",
    "proxy-authorization",
    IDENTITY_HEADER,
    *API_KEY_HEADERS,
    "x-auth-token",
    "private-token",  # GitLab
    "ocp-apim-subscription-key",  # Azure API Management
)

# Recorded as a keyed hash too, but not credentials the swap strips by name: a cookie may be
# an upstream's session affinity (see connections[].strip_cookies).
COOKIE_HEADERS = ("cookie", "set-cookie")
MASKED_HEADERS = frozenset(CREDENTIAL_HEADERS + COOKIE_HEADERS)

# connections[].inject: how the gateway's credential is sent, and in which header.
INJECT_HEADER = {
    "bearer": "authorization",
    "x-api-key": "x-api-key",
    "api-key": "api-key",
    "x-goog-api-key": "x-goog-api-key",
}
INJECT_MODES = (*INJECT_HEADER, "none")


_HEADER_NAME = re.compile(r"[a-z0-9-]+")


def header_name_pattern(names=CREDENTIAL_HEADERS) -> str:
    """A regex alternation of the header names (longest first, so `x-api-key` wins over `api-key`)."""
    assert all(_HEADER_NAME.fullmatch(n) for n in names), "header names are lowercase letters, digits and -"
    return "(?:" + "|".join(sorted(names, key=len, reverse=True)) + ")"


def header_name_keywords(names=CREDENTIAL_HEADERS) -> tuple[str, ...]:
    """The fewest literals one of which occurs in every header name: a name that contains
    another (`proxy-authorization` holds `authorization`) needs no keyword of its own."""
    return tuple(n for n in names if not any(o != n and o in n for o in names))


# -- the identity token -------------------------------------------------------------------------


def carries_token(value: str, token: str) -> bool:
    """True if a header value holds the identity token: as it is, or inside a Basic credential."""
    if token in value:
        return True
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "basic" or not rest:
        return False
    try:
        return token in base64.b64decode(rest.strip() + "==", validate=False).decode("utf-8", "replace")
    except (binascii.Error, ValueError):
        return False


def field_carries_token(value: bytes, token: bytes) -> bool:
    """carries_token for a raw header field value (the request path's fast form)."""
    if token in value:
        return True
    return value[:6].lower() == b"basic " and carries_token(value.decode("latin-1"), token.decode("latin-1"))


# -- credentials in the query string --------------------------------------------------------------

# Query parameter names that carry a credential, compared after decoding (percent-encoding,
# repeatedly), lowercasing and dropping "-", "_", "." and spaces: `?%6bey=`, `?API_KEY=`,
# `?access-token=` are all caught. Exact names, so `page_token` (pagination) passes.
CREDENTIAL_QUERY_KEYS = frozenset({
    "key", "apikey", "xapikey", "xgoogapikey", "apitoken", "token", "accesstoken", "authtoken", "idtoken",
    "auth", "authorization", "bearer", "secret", "apisecret", "clientsecret", "password", "passwd",
    "sessiontoken", "securitytoken", "subscriptionkey", "sig", "signature",
    "xamzsecuritytoken", "xamzcredential", "xamzsignature",
})
_SEPARATORS = str.maketrans("", "", "-_. \t")
_MAX_DECODE = 4  # %25256b... is decoded this many times at most


def decoded(raw: str) -> str:
    """A query name or value percent-decoded until it stops changing (`%256b` -> `%6b` -> `k`),
    with `+` as a space: however many times an upstream decodes it, it cannot become more."""
    text = raw.replace("+", " ")
    for _ in range(_MAX_DECODE):
        once = unquote(text, errors="replace")
        if once == text:
            break
        text = once
    return text


def query_key(raw_name: str) -> str:
    """A query parameter name as compared: decoded, lowercase, no separators."""
    return decoded(raw_name).lower().translate(_SEPARATORS).rstrip("[]")


def _credential_name(raw_name: str, keep: frozenset[str]) -> bool:
    key = query_key(raw_name)
    return key in CREDENTIAL_QUERY_KEYS and key not in keep


def strip_query(path: str, *, credentials: bool, keep: frozenset[str] = frozenset(),
                token: str | None = None) -> str | None:
    """The request target without the query parameters that carry a credential, or None when
    nothing is removed. `credentials`: remove credential-like names (except those in `keep`,
    compared as by query_key); `token`: remove any parameter whose value holds the identity
    token. The rest of the target is kept byte for byte."""
    base, sep, query = path.partition("?")
    if not sep:
        return None
    query, hash_sep, fragment = query.partition("#")
    kept, dropped = [], False
    for part in query.split("&"):
        # A ";" separates parameters for some servers: each piece is checked.
        if credentials and part and any(_credential_name(piece.partition("=")[0], keep)
                                        for piece in part.split(";")):
            dropped = True
            continue
        if token and token in decoded(part):
            dropped = True
            continue
        kept.append(part)
    if not dropped:
        return None
    rest = "&".join(kept)
    return base + ("?" + rest if rest else "") + (hash_sep + fragment if hash_sep else "")
