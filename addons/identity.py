"""Identity: who is behind each flow, decided before anything goes upstream.

| mode             | token source                                                        |
|------------------|---------------------------------------------------------------------|
| regular, CONNECT | Proxy-Authorization on the CONNECT, kept per client connection for  |
|                  | the requests inside the tunnel (they carry none of their own)       |
| regular, http    | Proxy-Authorization on each plain-HTTP proxied request              |
| reverse          | x-wiretrail-token (beside the client's own API key), else           |
|                  | Authorization: Bearer or x-api-key, where the SDK puts its API key  |

A refusal answers 407 (regular) or 401 (reverse); capture records the attempt. A token is
verified once and then served from the verifier's cache until it expires. A cache miss
that may fetch JWKS runs off the event loop.
"""
from __future__ import annotations

import asyncio
import logging
import time
import weakref

from mitmproxy import connection, http
from mitmproxy.proxy import mode_specs

from addons.config import WiretrailConfig
from addons.flow_state import identity_of, set_identity, set_token_header  # noqa: F401 (identity_of: parts import it from here)
from addons.refusal import refuse
from recorder.auth.identity import (
    ANONYMOUS,
    IdentityError,
    TokenVerifier,
    VerifiedIdentity,
    api_token_and_header,
    check_api_token,
    looks_like_api_key,
    token_from_proxy_authorization,
)
from recorder.auth.credentials import IDENTITY_HEADER

log = logging.getLogger("wiretrail")



def is_reverse(flow: http.HTTPFlow) -> bool:
    return isinstance(flow.client_conn.proxy_mode, mode_specs.ReverseMode)


class Identity:
    def __init__(self, config: WiretrailConfig):
        self.config_addon = config
        self.verifier: TokenVerifier | None = None
        self.leeway = 0.0
        self._off_loop = False  # a cache miss may fetch JWKS over the network
        # CONNECT carries the token; the requests inside the tunnel do not.
        self.by_client: weakref.WeakKeyDictionary[connection.Client, VerifiedIdentity] = weakref.WeakKeyDictionary()
        # The verified token itself, so that the credential swap removes every copy of it: kept
        # here (not in flow.metadata, which mitmproxy can write to a flow file) and nowhere else.
        self._client_tokens: weakref.WeakKeyDictionary[connection.Client, str] = weakref.WeakKeyDictionary()
        self._flow_tokens: weakref.WeakKeyDictionary[http.HTTPFlow, str] = weakref.WeakKeyDictionary()

    def identity_of_client(self, client: connection.Client) -> VerifiedIdentity:
        return self.by_client.get(client) or ANONYMOUS

    def token_of(self, flow: http.HTTPFlow) -> str | None:
        """The identity token the flow was authenticated with (on its CONNECT or itself), or None."""
        return self._flow_tokens.get(flow) or self._client_tokens.get(flow.client_conn)

    def running(self):
        cfg = self.config_addon.current
        if cfg is None or self.verifier is not None:
            return
        if cfg.identity.mode == "none":
            log.warning(
                'wiretrail: identity.mode = "none": NO AUTHENTICATION. Anyone who reaches the gateway can use '
                "it; sessions are recorded as anonymous and marked unauthenticated. For demos only."
            )
            return
        # A bad key source was already caught by config loading; TokenVerifier re-reads it here.
        self.verifier = TokenVerifier(cfg.identity)
        self.leeway = cfg.identity.leeway
        self._off_loop = cfg.identity.jwks_url is not None
        for warning in self.verifier.warnings:
            log.warning(f"wiretrail: {warning}")
        if cfg.identity.jwks_url is not None:
            asyncio.get_running_loop().run_in_executor(None, self._warm_keys)

    def _warm_keys(self) -> None:
        try:
            self.verifier.load_keys()
            log.info(f"wiretrail: identity keys loaded from {self.config_addon.current.identity.jwks_url}")
        except IdentityError as e:
            log.error(f"wiretrail: {e.message}; tokens are refused until the IdP answers")

    async def _authenticate(self, token: str | None) -> VerifiedIdentity:
        if not token:
            raise IdentityError("missing", "no identity token was sent")
        cached = self.verifier.cached(token)
        if cached is not None:
            return cached
        if self._off_loop:
            return await asyncio.to_thread(self.verifier.verify, token)
        return self.verifier.verify(token)  # hs256 or a local JWKS file: no I/O

    # Public: other front ends (addons/postgres.py) check a token exactly as HTTP does.
    authenticate = _authenticate

    async def http_connect(self, flow: http.HTTPFlow):
        if self.verifier is None:
            self.by_client[flow.client_conn] = ANONYMOUS
            return
        try:
            token = token_from_proxy_authorization(flow.request.headers.get("proxy-authorization"))
            _check_proxy_token(token)
            identity = await self._authenticate(token)
        except IdentityError as e:
            refuse(flow, _status(e, 407), e.reason, _proxy_message(e))
            return
        self.by_client[flow.client_conn] = identity
        self._client_tokens[flow.client_conn] = token
        set_identity(flow, identity)

    async def requestheaders(self, flow: http.HTTPFlow):
        if flow.response is not None:
            return
        if self.verifier is None:
            set_identity(flow, ANONYMOUS)
            return
        known = self.by_client.get(flow.client_conn)
        if known is not None:
            if known.expires is not None and known.expires + self.leeway <= time.time():
                # The tunnel outlived its token: close it so the client reconnects with a fresh one.
                refuse(flow, 407, "expired", "the identity token this connection was opened with has expired; "
                       "reconnect with a new token", close=True)
                set_identity(flow, known)
                return
            set_identity(flow, known)
            return
        headers = flow.request.headers
        try:
            if is_reverse(flow):
                status = 401
                token, where = api_token_and_header(headers)
                check_api_token(token, where)
                set_token_header(flow, where)
            else:
                status = 407
                token = token_from_proxy_authorization(headers.get("proxy-authorization"))
                _check_proxy_token(token)
            identity = await self._authenticate(token)
        except IdentityError as e:
            refuse(flow, _status(e, status), e.reason, _proxy_message(e) if status == 407 else _api_message(e))
            return
        set_identity(flow, identity)
        self._flow_tokens[flow] = token


def _status(e: IdentityError, refused: int) -> int:
    # The IdP being down is not the caller's fault: 503 tells the client to retry, not re-authenticate.
    return 503 if e.reason == "idp_unreachable" else refused


def _proxy_message(e: IdentityError) -> str:
    if e.reason == "missing":
        return ("proxy authentication required: put your identity token in the proxy URL, "
                "HTTPS_PROXY=http://<user>:<token>@<gateway>:<port> (mint one with `wiretrail token`)")
    return e.message


def _api_message(e: IdentityError) -> str:
    if e.reason == "missing":
        return (f"authentication required: send your wiretrail token in the {IDENTITY_HEADER} header, beside "
                f"your API key (Claude Code: ANTHROPIC_CUSTOM_HEADERS=\"{IDENTITY_HEADER}: <token>\"; SDKs: "
                f"default_headers={{\"{IDENTITY_HEADER}\": token}}; Codex: env_http_headers in its provider; "
                "mint a token with `wiretrail token`)")
    return e.message


def _check_proxy_token(token: str | None) -> None:
    if token and looks_like_api_key(token):
        raise IdentityError("malformed", "the proxy password looks like an API key, not a wiretrail token: put "
                            "your wiretrail token in the proxy URL, HTTPS_PROXY=http://<user>:<token>@<gateway>:<port>, "
                            "and keep your API key where it is (mint a token with `wiretrail token`)")
