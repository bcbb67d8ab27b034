"""The gateway's configuration: one TOML file, checked against one schema.

`load_config(path)` reads the file given by `--set wiretrail_config=PATH`, or the embedded demo
default when no file is given, and returns a frozen GatewayConfig. Anything wrong raises
ConfigError naming the key path and what was expected. mitmproxy ignores a misspelled `--set`
name without a word, so settings live here, where a typo stops start-up.

SCHEMA (below) is the one place that holds every section and key with its type, default,
allowed values and error message; the kinds of value are in validators.py. docs/configuration.md's
reference columns are generated from it (docs.py) and a test keeps them in step.
"""
from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from importlib import resources
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

from recorder.auth.credentials import INJECT_MODES
from recorder.auth.dev_secret import ensure_dev_secret
from recorder.config.presets import PRESETS, PresetError, apply_preset
from recorder.policy.connections import is_loopback_host
from recorder.store import fleet
from recorder.store.anchors import SYSLOG_FACILITIES
from recorder.config.validators import (  # noqa: F401 (ConfigError, SecretRef, split_host_port: this package's API)
    ConfigError,
    SecretRef,
    _Context,
    _join,
    _Kind,
    _Bool,
    _OneOf,
    _Number,
    _Size,
    _Text,
    _Host,
    split_host_port,
    _HostPort,
    _QueryName,
    _PathValue,
    _Secret,
    _Regex,
    _ListOf,
)


# -- the settings, as the rest of the gateway sees them ------------------------------------
# Field names are the TOML key names. SCHEMA (below) holds each key's allowed values and its default;
# the defaults here must equal SCHEMA's (a unit test checks).


@dataclass(frozen=True)
class StorageConfig:
    dir: Path
    fail_closed: bool = True
    signing_key: Path | None = None
    checkpoint_interval: float = 5.0
    retention_days: int = 0
    fsync: str = "batch"
    fsync_interval: float = 0.05  # seconds; bound on a batch's fsync delay
    writer: str = "thread"  # where records are masked, compressed and written
    write_timeout: float = 30.0  # seconds a request waits for its record before 503 "storage not responding"
    queue_limit: int = 64 * 1024 * 1024  # body bytes waiting for the writer before streams are slowed
    stop_timeout: float = 10.0  # seconds shutdown waits for the writer; then it says what was not written


@dataclass(frozen=True)
class SessionsConfig:
    idle_timeout: float = 1800.0
    max_duration: float = 28800.0


@dataclass(frozen=True)
class IdentityConfig:
    mode: str = "jwt"
    issuer: str | None = None
    audience: str | None = None
    jwks_url: str | None = None
    jwks_file: Path | None = None
    hs256_secret: SecretRef | None = None
    groups_claim: str = "groups"
    leeway: float = 30.0
    jwks_refresh_interval: float = 30.0  # seconds between JWKS fetches that an unknown kid triggers
    review_groups: tuple[str, ...] = ()  # groups whose members may use `wiretrail serve`; empty = nobody


@dataclass(frozen=True)
class PolicyConfig:
    unregistered: str = "deny"
    raw_tcp: str = "refuse"  # bytes that are not HTTP (nor WebSocket) inside a tunnel
    resolve_timeout: float = 5.0  # seconds a destination's DNS lookup may take before it is refused
    resolve_interval: float = 60.0  # seconds a lookup is reused; registered hosts are looked up again this often


@dataclass(frozen=True)
class MaskingRule:
    id: str
    regex: str
    keywords: tuple[str, ...] = ()  # lowercase literals; the rule runs only where one occurs
    entropy: float | None = None  # minimum Shannon entropy (bits per character) of the secret
    allowlist: tuple[str, ...] = ()  # regexes; a secret one of them finds is not masked


@dataclass(frozen=True)
class MaskingConfig:
    builtin: bool = True
    mask_responses: bool = False
    mask_requests: bool = False
    rules: tuple[MaskingRule, ...] = ()
    allowlist: tuple[str, ...] = ()


@dataclass(frozen=True)
class ConnectionConfig:
    name: str
    hosts: tuple[str, ...] = ()  # required for kind "http"
    ports: tuple[int, ...] = ()
    credential: SecretRef | None = None  # None when "none" (record only)
    inject: str = "bearer"
    allow_groups: tuple[str, ...] = ()
    # kind "postgres" (docs/configuration.md, "Database connections"): the keys below
    kind: str = "http"
    listen: str | None = None  # "host:port" where database clients connect
    upstream: str | None = None  # "host:port" of the database
    database: str | None = None  # the one database clients may ask for; None = the client's choice
    user: str | None = None  # the gateway's database role
    upstream_tls: str = "require"
    upstream_ca: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    tls_cert: Path | None = None  # what clients see; default: issued by the gateway's mitmproxy CA
    tls_key: Path | None = None
    allow_plaintext: bool = False  # clients without TLS, on a loopback listen address only
    sample_rows: int = 0  # rows per result recorded as a masked sample; 0 = none
    strip_cookies: bool = True  # where the gateway injects: the client's cookies do not go upstream
    keep_query: tuple[str, ...] = ()  # credential-like query names that pass anyway (as compared: query_key)
    preset: str | None = None  # a built-in connection (recorder/config/presets.py) this one was made from


@dataclass(frozen=True)
class CaptureConfig:
    stream_threshold: int = 262144  # bytes; bodies with a larger Content-Length are streamed
    chunk_interval: float = 0.1  # seconds; http.chunk batching bound
    max_body: int = 0  # bytes recorded per body/stream direction; 0 = no limit


@dataclass(frozen=True)
class TimeoutsConfig:
    request_header: float = 30.0  # seconds from a request's first byte (or a connection's start) to its complete headers
    idle: float = 300.0  # seconds with nothing moving: an idle connection closes, a stalled exchange ends
    upstream_response: float = 600.0  # seconds from a request's release upstream to its response headers


@dataclass(frozen=True)
class ReviewConfig:
    listen: str = "127.0.0.1:8090"  # where `wiretrail serve` listens
    verify_keys: tuple[Path, ...] = ()  # public keys the review page verifies signatures with
    descriptor_sets: tuple[Path, ...] = ()  # FileDescriptorSets that name protobuf fields (recorder/protocols/connect)


@dataclass(frozen=True)
class AnchorsConfig:
    file: Path | None = None  # a file outside the store: one line appended per ledger head
    syslog: str | None = None  # "/dev/log" (a local socket) or "udp:HOST:PORT"
    syslog_facility: str = "authpriv"
    http: str | None = None  # POSTed to as application/json
    http_token: SecretRef | None = None  # sent as Authorization: Bearer
    interval: float = 1.0  # seconds: at most one anchor per sink this often
    timeout: float = 5.0  # seconds one send may take
    fail_closed: bool = False
    max_lag: float = 60.0  # seconds a sink may fail before fail_closed refuses traffic


@dataclass(frozen=True)
class ObjectStorageConfig:
    url: str | None = None  # s3://bucket/prefix; None = no upload (recorder/store/s3.py)
    endpoint_url: str | None = None  # MinIO, Ceph RGW, a stand-in; None = AWS S3
    region: str | None = None
    require_object_lock: bool = False
    keep_local: bool = True
    interval: float = 10.0


@dataclass(frozen=True)
class NodeConfig:
    id: str | None = None  # one of several gateways sharing storage.dir (recorder/store/fleet.py)


@dataclass(frozen=True)
class GatewayConfig:
    storage: StorageConfig
    sessions: SessionsConfig
    identity: IdentityConfig
    policy: PolicyConfig
    masking: MaskingConfig
    capture: CaptureConfig
    connections: tuple[ConnectionConfig, ...]
    timeouts: TimeoutsConfig = TimeoutsConfig()
    review: ReviewConfig = ReviewConfig()
    anchors: AnchorsConfig = AnchorsConfig()
    gateway: NodeConfig = NodeConfig()
    object_storage: ObjectStorageConfig = ObjectStorageConfig()
    source: Path | None = None  # None = the embedded default

    @property
    def store_dir(self) -> Path:
        """Where this gateway writes: storage.dir, or its own folder there when it has an id."""
        return fleet.gateway_store(self.storage.dir, self.gateway.id)


_REQUIRED = object()  # a key without a default
_EMPTY_TABLE = object()  # a missing section is read as an empty table: its keys' defaults apply


@dataclass(frozen=True)
class Key:
    """One key of a table: its name, kind (type, allowed values, message) and default."""

    name: str
    kind: _Kind
    default: Any = _REQUIRED
    doc: str = ""
    rule: str = ""  # a rule a check across keys enforces, for the docs' "Allowed" column

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


class _Table(_Kind):
    """A TOML table with a fixed set of keys, built into `make(**values)`."""

    def __init__(self, make: Callable[..., Any], keys: tuple[Key, ...], *,
                 check: Callable[[Any, str], None] | None = None, expected: str = "a table"):
        self.make, self.keys, self.check, self.expected = make, keys, check, expected
        self.by_name = {k.name: k for k in keys}

    def convert(self, value, at, ctx):
        if not isinstance(value, dict):
            raise self.bad(at, value)
        for name in value:
            if name not in self.by_name:
                raise _unknown_key(name, at, tuple(self.by_name))
        values = {}
        for key in self.keys:
            path = _join(at, key.name)
            if key.name in value:
                values[key.name] = key.kind.convert(value[key.name], path, ctx)
            elif key.default is _REQUIRED:
                raise ConfigError(f"missing; expected {key.kind.expected}", key=path)
            elif key.default is _EMPTY_TABLE:
                values[key.name] = key.kind.convert({}, path, ctx)
            else:
                values[key.name] = key.default
        built = self.make(**values)
        if self.check:
            self.check(built, at)
        return built


class _PresetTable(_Table):
    """A [[connections]] table, with a `preset` filled in first (recorder/config/presets.py)."""

    def convert(self, value, at, ctx):
        if isinstance(value, dict) and "preset" in value:
            self.by_name["preset"].kind.convert(value["preset"], _join(at, "preset"), ctx)  # a known one?
            try:
                value = apply_preset(value, at)
            except PresetError as e:
                raise ConfigError(e.problem, key=e.key) from None
        return super().convert(value, at, ctx)


class _Tables(_Kind):
    """An array of tables ([[name]]); `unique` names a key whose values must differ."""

    def __init__(self, table: _Table, expected: str, *, unique: str | None = None,
                 check: Callable[[tuple, str], None] | None = None):
        self.table, self.expected, self.unique, self.check = table, expected, unique, check

    def convert(self, value, at, ctx):
        if not isinstance(value, list):
            raise self.bad(at, value)
        items = tuple(self.table.convert(v, f"{at}[{i}]", ctx) for i, v in enumerate(value))
        if self.unique:
            seen: dict[Any, int] = {}
            for i, item in enumerate(items):
                v = getattr(item, self.unique)
                if v in seen:
                    raise ConfigError(f'{json.dumps(v)} is already used by {at}[{seen[v]}]; '
                                      f"each {self.unique} must be unique", key=f"{at}[{i}].{self.unique}")
                seen[v] = i
        if self.check:
            self.check(items, at)
        return items


# -- checks that span keys ---------------------------------------------------------------------

_JWT_KEY_SOURCES = ("jwks_url", "jwks_file", "hs256_secret")


def _check_identity(identity: IdentityConfig, at: str) -> None:
    if identity.mode != "jwt":
        return
    missing = [name for name in ("issuer", "audience") if getattr(identity, name) is None]
    given = [name for name in _JWT_KEY_SOURCES if getattr(identity, name) is not None]
    if not given:
        missing.append("one of " + " / ".join(_JWT_KEY_SOURCES))
    if missing:
        raise ConfigError(f'mode "jwt" is missing: {", ".join(missing)} (mode "none" is for local demos only)',
                          key=at)
    if len(given) > 1:
        raise ConfigError(f'mode "jwt" takes exactly one of {" / ".join(_JWT_KEY_SOURCES)}; '
                          f'got both {" and ".join(given)}', key=at)


_POSTGRES_ONLY = ("listen", "upstream", "database", "user", "upstream_ca", "client_cert", "client_key",
                  "tls_cert", "tls_key")


def _check_connections(connections: tuple[ConnectionConfig, ...], at: str) -> None:
    """Each kind's own keys; then the hosts of http connections."""
    listens: dict[tuple[str, int], int] = {}
    for i, conn in enumerate(connections):
        item = f"{at}[{i}]"
        if conn.kind == "http":
            if not conn.hosts:
                raise ConfigError('missing; expected a non-empty array of host names, e.g. ["api.openai.com"]',
                                  key=f"{item}.hosts")
            for name in _POSTGRES_ONLY:
                if getattr(conn, name) is not None:
                    raise ConfigError('only for kind = "postgres" (this connection is kind "http")', key=f"{item}.{name}")
            if conn.allow_plaintext or conn.sample_rows:
                name = "allow_plaintext" if conn.allow_plaintext else "sample_rows"
                raise ConfigError('only for kind = "postgres" (this connection is kind "http")', key=f"{item}.{name}")
            continue
        for name in ("listen", "upstream", "user"):
            if getattr(conn, name) is None:
                raise ConfigError('missing; a connection of kind "postgres" needs listen, upstream and user',
                                  key=f"{item}.{name}")
        if conn.hosts or conn.ports:
            raise ConfigError('a connection of kind "postgres" is reached on its listen address, not by host; '
                              "leave hosts and ports out", key=f"{item}.{'hosts' if conn.hosts else 'ports'}")
        if conn.credential is None and conn.client_cert is None:
            raise ConfigError('a connection of kind "postgres" needs the gateway\'s database credential: '
                              'credential = "env:NAME" or "file:PATH", or client_cert (and client_key)',
                              key=f"{item}.credential")
        if conn.client_key is not None and conn.client_cert is None:
            raise ConfigError("client_key needs client_cert", key=f"{item}.client_key")
        if (conn.tls_cert is None) != (conn.tls_key is None):
            raise ConfigError("give both tls_cert and tls_key, or neither (the gateway then issues a certificate "
                              "from its mitmproxy CA)", key=f"{item}.{'tls_key' if conn.tls_key is None else 'tls_cert'}")
        host, port = split_host_port(conn.listen)
        if conn.allow_plaintext and not is_loopback_host(host):
            raise ConfigError(f"allow_plaintext is only allowed on a loopback listen address (127.0.0.1, ::1, "
                              f"localhost), not {host}: a token sent without TLS could be read on the network",
                              key=f"{item}.allow_plaintext")
        if (host, port) in listens:
            raise ConfigError(f"{conn.listen} is already the listen address of {at}[{listens[(host, port)]}]",
                              key=f"{item}.listen")
        listens[(host, port)] = i
    _check_connection_hosts(connections, at)


def _check_connection_hosts(connections: tuple[ConnectionConfig, ...], at: str) -> None:
    """The first matching connection wins, so a later entry for the same host and port would never
    be used (its credential and groups silently ignored)."""
    seen: dict[str, list[int]] = {}
    for i, conn in enumerate(connections):
        for j, host in enumerate(conn.hosts):
            for k in seen.get(host, []):
                earlier = connections[k].ports
                if k != i and (not earlier or not conn.ports or set(earlier) & set(conn.ports)):
                    raise ConfigError(
                        f'{json.dumps(host)} is already matched by {at}[{k}] ({json.dumps(connections[k].name)}) '
                        "on the same port; the first match wins, so this entry would never be used",
                        key=f"{at}[{i}].hosts[{j}]")
            seen.setdefault(host, []).append(i)


def _check_anchors(anchors: AnchorsConfig, at: str) -> None:
    if anchors.http_token is not None:
        if anchors.http is None:
            raise ConfigError("is set, but there is no http sink to send it to", key=f"{at}.http_token")
        if not anchors.http.startswith("https://"):
            raise ConfigError("an http:// sink would carry the token in clear text; use https://",
                              key=f"{at}.http_token")
    if anchors.fail_closed and not (anchors.file or anchors.syslog or anchors.http):
        raise ConfigError("is true, but no sink is set (file, syslog or http)", key=f"{at}.fail_closed")


def _check_gateway(values: dict, at: str) -> None:
    """An anchor kept in the store proves nothing: whoever rewrites the store rewrites it too."""
    file, store = values["anchors"].file, values["storage"].dir
    if file is not None and (file.absolute() == store.absolute() or store.absolute() in file.absolute().parents):
        raise ConfigError(f"{file} is inside storage.dir ({store}): whoever can roll the ledger back can "
                          "edit it too; put it on another mount, or use syslog or http", key="anchors.file")


# -- the schema: every section and key -----------------------------------------------------------

_SECONDS = _Number(gt=0)
_NAMES = _ListOf(_Text(), 'an array of non-empty strings, e.g. ["engineering"]')

SCHEMA = _Table(dict, (
    Key("storage", _Table(StorageConfig, (
        Key("dir", _PathValue(), doc="directory the session files are written under"),
        Key("fail_closed", _Bool(), True,
            "true: when a record cannot be written, the client gets 503 and nothing goes upstream"),
        Key("signing_key", _PathValue(), None, "Ed25519 private key (PEM) that signs checkpoints and seals"),
        Key("checkpoint_interval", _SECONDS, 5.0, "seconds between signed checkpoints while records arrive"),
        Key("retention_days", _Number(integer=True, ge=0, unit="days", note=" (0 = keep forever)"), 0,
            "days session files are kept; 0 = forever"),
        Key("fsync", _OneOf("batch", "always", "never"), "batch",
            "batch: fsync once per batch; always: after every record; never: leave it to the OS"),
        Key("fsync_interval", _Number(gt=0, le=10), 0.05, "seconds a batched fsync may wait"),
        Key("writer", _OneOf("thread", "process"), "thread",
            "thread: one writer thread in the gateway; process: a writer process of its own (more "
            "throughput, slightly more latency per small request; docs/performance.md)"),
        Key("write_timeout", _Number(gt=0, le=3600), 30.0,
            "seconds a request waits for its record to be written before it is refused with 503 "
            "(a hung disk or network file system)"),
        Key("queue_limit", _Size(" (0 = no limit)"), 64 * 1024 * 1024,
            "body bytes waiting to be written beyond which the gateway stops reading from the connections that "
            "send streamed bodies, until the store catches up (back-pressure)"),
        Key("stop_timeout", _Number(gt=0, le=3600), 10.0,
            "seconds shutdown waits for the writer to finish; then the gateway stops anyway and logs what was "
            "not written"),
    ), expected="a table ([storage])"), _EMPTY_TABLE),
    Key("sessions", _Table(SessionsConfig, (
        Key("idle_timeout", _SECONDS, 1800.0, "seconds without a flow before a session closes"),
        Key("max_duration", _SECONDS, 28800.0, "seconds after which a session closes regardless"),
    ), expected="a table ([sessions])"), _EMPTY_TABLE),
    Key("identity", _Table(IdentityConfig, (
        Key("mode", _OneOf("jwt", "none"), "jwt", 'jwt: callers present a JWT; "none": local demos only'),
        Key("issuer", _Text(), None, "expected iss claim"),
        Key("audience", _Text(), None, "expected aud claim"),
        Key("jwks_url", _Text('an http(s) URL, e.g. "https://idp.example.com/.well-known/jwks.json"',
                              r"https?://\S+"), None, "where the IdP's signing keys are fetched"),
        Key("jwks_file", _PathValue(), None, "a local JWKS file"),
        Key("hs256_secret", _Secret(allow_none=False), None, "HS256 shared secret, for local development"),
        Key("groups_claim", _Text(), "groups", "claim that lists the caller's groups"),
        Key("leeway", _Number(ge=0), 30.0, "seconds of clock skew allowed on exp/nbf/iat"),
        Key("jwks_refresh_interval", _Number(gt=0, le=3600), 30.0,
            "seconds between the JWKS fetches an unknown kid triggers (a rate limit)"),
        Key("review_groups", _NAMES, (), "groups whose members may read sessions with `wiretrail serve`; "
            "empty = nobody"),
    ), check=_check_identity, expected="a table ([identity])"), _EMPTY_TABLE),
    Key("policy", _Table(PolicyConfig, (
        Key("unregistered", _OneOf("deny", "tunnel", "record"), "deny",
            "hosts no connection matches: deny, tunnel (not intercepted, not recorded) or record"),
        Key("raw_tcp", _OneOf("refuse", "record"), "refuse",
            "bytes that are not HTTP or WebSocket (raw TCP, an unknown protocol): refuse closes the "
            "connection before anything goes upstream; record records both directions as tcp.* records"),
        Key("resolve_timeout", _Number(gt=0, le=60), 5.0,
            "seconds a destination's DNS lookup may take; past it, or when it fails, the destination is refused"),
        Key("resolve_interval", _Number(ge=1, le=86400), 60.0,
            "seconds a DNS answer is reused; the registered hosts are looked up again this often"),
    ), expected="a table ([policy])"), _EMPTY_TABLE),
    Key("masking", _Table(MaskingConfig, (
        Key("builtin", _Bool(), True, "use the built-in secret patterns"),
        Key("mask_responses", _Bool(), False, "also mask what the client receives"),
        Key("mask_requests", _Bool(), False, "also mask what is forwarded upstream"),
        Key("rules", _Tables(_Table(MaskingRule, (
            Key("id", _Text('a rule id of lowercase letters, digits and "-", starting with a letter or digit, '
                            'e.g. "acme-token"', r"[a-z0-9][a-z0-9-]*"), doc="names the rule in mask tags"),
            Key("regex", _Regex(), doc="what to mask"),
            Key("keywords", _ListOf(_Text(), 'an array of non-empty strings, e.g. ["acme_"]'), (),
                "literals one of which occurs in every match; the rule only runs where one does"),
            Key("entropy", _Number(ge=0, le=8, unit="bits per character"), None,
                "minimum Shannon entropy of the secret"),
            Key("allowlist", _ListOf(_Regex(), 'an array of regular expressions, e.g. ["EXAMPLE$"]'), (),
                "regexes; a secret one of them finds is not masked"),
        )), "an array of tables, written [[masking.rules]]", unique="id"), (), "extra masking rules"),
        Key("allowlist", _ListOf(_Text(), 'an array of non-empty strings, e.g. ["sk-example-not-a-key"]'), (),
            "exact values never masked"),
    ), expected="a table ([masking])"), _EMPTY_TABLE),
    Key("capture", _Table(CaptureConfig, (
        Key("stream_threshold", _Size(), 262144, "bodies with a larger Content-Length are streamed"),
        Key("chunk_interval", _Number(gt=0, le=5), 0.1, "seconds of streamed data batched per http.chunk"),
        Key("max_body", _Size(" (0 = no limit)"), 0, "bytes recorded per body or stream direction"),
    ), expected="a table ([capture])"), _EMPTY_TABLE),
    Key("timeouts", _Table(TimeoutsConfig, (
        Key("request_header", _Number(gt=0, le=3600), 30.0,
            "seconds a client has to complete a request's headers, from its first byte (or the connection's start, "
            "TLS handshake included); then the connection is closed and the attempt recorded"),
        Key("idle", _Number(gt=0, le=86400), 300.0,
            "seconds with nothing moving on a client connection: between exchanges it is closed; an exchange "
            "whose body stalls is ended (504, or a reset once its reply began) and recorded"),
        Key("upstream_response", _Number(gt=0, le=86400), 600.0,
            "seconds from a request's release upstream (once it is recorded) to the upstream's response headers; "
            "then the client gets 504, recorded"),
    ), expected="a table ([timeouts])"), _EMPTY_TABLE),
    Key("connections", _Tables(_PresetTable(ConnectionConfig, (
        Key("name", _Text(), doc="the connection's name, recorded with each request"),
        Key("hosts", _ListOf(_Host(), 'a non-empty array of host names, e.g. ["api.openai.com"]', min_items=1), (),
            "hosts this connection matches (kind http; required there)", rule="required for kind `http`"),
        Key("ports", _ListOf(_Number(integer=True, ge=1, le=65535, expected="a port number 1..65535"),
                             "an array of port numbers, e.g. [443]"), (), "ports it matches; empty = any"),
        Key("credential", _Secret(allow_none=True), None, "the upstream credential the gateway injects"),
        Key("inject", _OneOf(*INJECT_MODES), "bearer", "how the credential is sent upstream"),
        Key("allow_groups", _NAMES, (), "groups allowed to use it; empty = any authenticated identity"),
        Key("kind", _OneOf("http", "postgres"), "http", "http: an API reached through the proxy; postgres: a database"),
        Key("listen", _HostPort(None, "127.0.0.1:15432"), None, "postgres: where database clients connect", rule="required for kind `postgres`, unique"),
        Key("upstream", _HostPort(5432, "db.internal:5432"), None, "postgres: the database's host and port", rule="required for kind `postgres`"),
        Key("database", _Text(), None, "postgres: the one database clients may ask for; default: their choice"),
        Key("user", _Text(), None, "postgres: the gateway's database role", rule="required for kind `postgres`"),
        Key("upstream_tls", _OneOf("disable", "prefer", "require", "verify-full"), "require",
            "postgres: TLS to the database"),
        Key("upstream_ca", _PathValue(), None, "postgres: CA bundle that verify-full checks the database against"),
        Key("client_cert", _PathValue(), None, "postgres: client certificate the gateway logs in with"),
        Key("client_key", _PathValue(), None, "postgres: its private key", rule="needs `client_cert`"),
        Key("tls_cert", _PathValue(), None, "postgres: the certificate clients see (default: from the mitmproxy CA)", rule="with `tls_key`"),
        Key("tls_key", _PathValue(), None, "postgres: its private key", rule="with `tls_cert`"),
        Key("allow_plaintext", _Bool(), False, "postgres: accept clients without TLS (loopback listen only)", rule="only with a loopback `listen`"),
        Key("sample_rows", _Number(integer=True, ge=0, le=1000, unit="rows"), 0,
            "postgres: rows per result recorded as a masked sample; 0 = none"),
        Key("strip_cookies", _Bool(), True,
            "where the gateway injects its credential, the client's Cookie headers are removed; false lets them pass"),
        Key("keep_query", _ListOf(_QueryName(), 'an array of query parameter names, e.g. ["token"]'), (),
            "credential-like query parameters that pass to this upstream anyway (stripped by default)"),
        Key("preset", _OneOf(*PRESETS), None, "a built-in connection that fills in name and hosts (record only)"),
    )), "an array of tables, written [[connections]]", unique="name", check=_check_connections),
        (), "registered upstreams"),
    Key("review", _Table(ReviewConfig, (
        Key("listen", _Text('an address "HOST:PORT", e.g. "127.0.0.1:8090"', r"\S+:\d{1,5}"), "127.0.0.1:8090",
            "where `wiretrail serve` listens"),
        Key("verify_keys", _ListOf(_PathValue(), 'an array of paths, e.g. ["keys/gateway.pub"]'), (),
            "the gateway's public keys (PEM), kept outside the store, that the review page checks signatures with"),
        Key("descriptor_sets", _ListOf(_PathValue(), 'an array of paths, e.g. ["protos/agent.pb"]'), (),
            "FileDescriptorSets (protoc --include_imports --descriptor_set_out) that name Connect/gRPC fields in "
            "`wiretrail show --config`"),
    ), expected="a table ([review])"), _EMPTY_TABLE),
    Key("anchors", _Table(AnchorsConfig, (
        Key("file", _PathValue(), None, "a file outside the store that each signed ledger head is appended to", rule="not inside `storage.dir`"),
        Key("syslog", _Text('a unix socket path ("/dev/log") or "udp:HOST:PORT"',
                            r"/\S+|udp:(?:[^\s:\[\]]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}"), None,
            "a syslog socket each signed ledger head is sent to"),
        Key("syslog_facility", _OneOf(*SYSLOG_FACILITIES), "authpriv", "the syslog facility of those messages"),
        Key("http", _Text('an http(s) URL, e.g. "https://audit.example.com/wiretrail/anchors"', r"https?://\S+"),
            None, "a URL each signed ledger head is POSTed to"),
        Key("http_token", _Secret(allow_none=False), None, "a bearer token for the http sink"),
        Key("interval", _Number(gt=0, le=3600), 1.0, "seconds: at most one anchor per sink this often"),
        Key("timeout", _Number(gt=0, le=120), 5.0, "seconds one send may take"),
        Key("fail_closed", _Bool(), False, "true: refuse traffic (503) while a sink fails for longer than max_lag"),
        Key("max_lag", _Number(gt=0, le=86400), 60.0, "seconds a sink may fail before fail_closed refuses traffic"),
    ), check=_check_anchors, expected="a table ([anchors])"), _EMPTY_TABLE),
    Key("gateway", _Table(NodeConfig, (
        Key("id", _Text('a gateway id of lowercase letters, digits and "-" (at most 64), e.g. "gw1"',
                        fleet.ID_PATTERN), None,
            "this gateway's id when several share storage.dir: it writes under storage.dir/gateways/<id>/ "
            "and is recorded in each session.open; unique per process (docs/deployment.md)"),
    ), expected="a table ([gateway])"), _EMPTY_TABLE),
    Key("object_storage", _Table(ObjectStorageConfig, (
        Key("url", _Text('an "s3://BUCKET/PREFIX" URL, e.g. "s3://acme-wiretrail/sessions"', r"s3://[a-z0-9][a-z0-9.-]{1,62}(/\S*)?"),
            None, "the bucket (and prefix) ended sessions and the ledger are uploaded to"),
        Key("endpoint_url", _Text('an http(s) URL, e.g. "https://minio.internal:9000"', r"https?://\S+"), None,
            "an S3-compatible server (MinIO, Ceph RGW); not set: AWS S3"),
        Key("region", _Text(), None, "the bucket's region"),
        Key("require_object_lock", _Bool(), False,
            "true: refuse to start unless the bucket has Object Lock with a COMPLIANCE default retention"),
        Key("keep_local", _Bool(), True, "false: delete a local session file once its upload is confirmed"),
        Key("interval", _Number(gt=0, le=3600), 10.0, "seconds between upload passes"),
    ), expected="a table ([object_storage])"), _EMPTY_TABLE),
), check=_check_gateway)


def iter_keys(table: _Table = SCHEMA, at: str = "") -> Iterator[tuple[str, Key]]:
    """Every key in the schema as (path, Key); array-of-table items appear as "connections[]"."""
    for key in table.keys:
        path = _join(at, key.name)
        yield path, key
        if isinstance(key.kind, _Table):
            yield from iter_keys(key.kind, path)
        elif isinstance(key.kind, _Tables):
            yield from iter_keys(key.kind.table, path + "[]")


def _section_label(path: str) -> str:
    """"connections[].name" -> "[[connections]]", "storage.dir" -> "[storage]", "storage" -> top level."""
    parent = path.rpartition(".")[0]
    if not parent:
        return "the top level"
    return f"[[{parent[:-2]}]]" if parent.endswith("[]") else f"[{parent}]"


def _unknown_key(name: str, at: str, known: tuple[str, ...]) -> ConfigError:
    path = _join(at, name)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
    if close:
        hint = f"did you mean {json.dumps(close[0])}?"
    else:
        # A right name in the wrong section ("fsync" at the top level) or a typo of one.
        elsewhere = {p.rpartition(".")[2]: p for p, _ in iter_keys()}
        close = difflib.get_close_matches(name, list(elsewhere), n=1, cutoff=0.75)
        if close and close[0] == name:
            hint = f"it belongs in {_section_label(elsewhere[name])}"
        elif close:
            hint = f"did you mean {json.dumps(close[0])} in {_section_label(elsewhere[close[0]])}?"
        else:
            hint = "known keys here: " + ", ".join(known)
    return ConfigError(f"unknown key; {hint}", key=path)


def changed_sections(old: GatewayConfig | None, new: GatewayConfig) -> list[str]:
    """The top-level sections in which two configs differ ("connections", "storage" ...)."""
    if old is None:
        return []
    return [k.name for k in SCHEMA.keys if getattr(old, k.name, None) != getattr(new, k.name, None)]


# -- loading ---------------------------------------------------------------------------------

EMBEDDED_SOURCE = "<embedded default>"
EMBEDDED_DEV_SECRET = "keys/dev-identity.secret"  # the embedded default's hs256_secret file

# The demo config shipped in the package (recorder/config/demo.toml); docs/configuration.md shows it.
EMBEDDED_DEFAULT = (resources.files(__package__) / "demo.toml").read_text(encoding="utf-8")

_TOML_AT = re.compile(r"(.*) \(at line (\d+), column (\d+)\)\Z", re.DOTALL)


def _parse(text: str, source: str, base_dir: Path, read_secrets: bool = True) -> dict[str, Any]:
    """The checked sections as keyword arguments for GatewayConfig (without source)."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = _TOML_AT.match(str(e))
        where = f"line {m.group(2)}, column {m.group(3)}: " if m else ""
        raise ConfigError(f"{where}invalid TOML: {m.group(1) if m else e}", source=source) from None
    ctx = _Context(base_dir=Path(base_dir).absolute())
    try:
        values = SCHEMA.convert(data, "", ctx)
        if read_secrets:
            for ref in ctx.secrets:  # read once now, so an unreadable secret stops start-up
                ref.read()
    except ConfigError as e:
        raise ConfigError(e.problem, key=e.key, source=source) from None
    return values


def parse_config(text: str, *, source: str, base_dir: Path) -> GatewayConfig:
    """Check TOML text. `source` names it in messages; relative paths start at `base_dir`."""
    return GatewayConfig(**_parse(text, source, base_dir), source=Path(source))


def load_config(
    path: str | os.PathLike | None, *, cwd: Path | None = None, read_secrets: bool = True
) -> GatewayConfig:
    """The config from `path`, or the embedded default when `path` is None. A relative `path`,
    and the embedded default's relative paths, start at `cwd` (default: the process's cwd).
    Read-only tools (ls, show) pass read_secrets=False: they need no upstream credential."""
    here = Path(cwd if cwd is not None else Path.cwd()).absolute()
    if path is None:
        if read_secrets:
            ensure_dev_secret(here / EMBEDDED_DEV_SECRET)
        return GatewayConfig(**_parse(EMBEDDED_DEFAULT, EMBEDDED_SOURCE, here, read_secrets), source=None)
    if not os.fspath(path):
        raise ConfigError("the config path is empty; give --set wiretrail_config=PATH, "
                          "or leave it unset for the embedded demo default")
    file = Path(path).expanduser()
    if not file.is_absolute():
        file = here / file
    try:
        raw = file.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {file}") from None
    except IsADirectoryError:
        raise ConfigError(f"the config path is a directory, not a file: {file}") from None
    except OSError as e:
        raise ConfigError(f"cannot read the config file {file}: {e.strerror or type(e).__name__}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"not UTF-8 text (bad byte at offset {e.start})", source=str(file)) from None
    return GatewayConfig(**_parse(text, str(file), file.parent, read_secrets), source=file)
