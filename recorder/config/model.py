"""The gateway's settings, as the rest of the gateway sees them: one frozen dataclass per section.

Each field is declared with `key(kind, default, doc)` (recorder/config/schema.py): its kind says
what the TOML value may be (validators.py), its default is the dataclass default and the schema's,
its doc is the meaning docs/configuration.md shows. Field names are the TOML key names. SCHEMA,
at the bottom, is read from these declarations; a check across keys is in checks.py.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from recorder.auth.credentials import INJECT_MODES
from recorder.config import checks
from recorder.config.presets import PRESETS
from recorder.config.schema import Key, _PresetTable, _Table, _Tables, key, keys_of, section, table, walk
from recorder.config.validators import (
    SecretRef,
    _Bool,
    _Host,
    _HostPort,
    _ListOf,
    _Number,
    _OneOf,
    _PathValue,
    _QueryName,
    _Regex,
    _Secret,
    _Size,
    _Text,
)
from recorder.protocols.postgres.upstream import TLS_MODES
from recorder.store import fleet
from recorder.store.anchors import SYSLOG_FACILITIES
from recorder.store.writer_protocol import FSYNC_POLICIES

_SECONDS = _Number(gt=0)
_NAMES = _ListOf(_Text(), 'an array of non-empty strings, e.g. ["engineering"]')


@dataclass(frozen=True)
class StorageConfig:
    dir: Path = key(_PathValue(), doc=(
        'Directory the session files are written under (`YYYY/MM/DD/<session-id>.jsonl.zst`).'))
    fail_closed: bool = key(_Bool(), True, (
        '`true`: when a record cannot be written, the client gets a 503 and nothing goes upstream. '
        '`false` lets traffic pass unrecorded, and the gateway says so loudly in its log.'))
    signing_key: Path | None = key(_PathValue(), None, (
        'Ed25519 private key (PKCS8 PEM, from `wiretrail keygen`) that signs checkpoints, seals and the '
        'ledger. A key that cannot be loaded stops start-up; without a key the gateway warns loudly and '
        'records unsigned. Keep it away from the store: [integrity.md](integrity.md).'))
    checkpoint_interval: float = key(_SECONDS, 5.0, (
        'Seconds between signed checkpoints while records arrive.'))
    retention_days: int = key(_Number(integer=True, ge=0, unit="days", note=" (0 = keep forever)"), 0, (
        'Days session files are kept; `0` keeps them forever. Deleted sessions leave a signed tombstone '
        'in the ledger ([integrity.md](integrity.md)).'))
    fsync: str = key(_OneOf(FSYNC_POLICIES), "batch", (
        '`batch`: one fsync per batch of records (group commit); `always`: fsync after every record; '
        '`never`: leave flushing to the OS (a crash may lose the last records).'))
    fsync_interval: float = key(_Number(gt=0, le=10), 0.05, (
        'Seconds a batched fsync may wait to gather more records: a group is fsynced when the writer goes'
        ' idle, and at the latest this long after its first write (never in the same step as the ack of '
        'the request that started it).'))
    writer: str = key(_OneOf("thread", "process"), "process", (
        'Where records are masked, compressed, written and signed: a process of the gateway\'s own '
        "(`recorder/store/writer_child.py`), outside the proxy's GIL, or a thread of the gateway. "
        '`process` answers bursts of new sessions without making them wait on the GIL (500 opening at '
        'once: about 1.1–1.6× plain mitmdump, against 1.5–2.5× with `thread`); it costs ~39 MiB and '
        '~0.25 s at start, and a little more latency and CPU per request. `thread` serves some more '
        'requests/s per core. See [performance.md](performance.md).'))
    write_timeout: float = key(_Number(gt=0, le=3600), 30.0, (
        'Seconds a request waits for its record to be written. Past it (a hung disk or network file '
        'system) the request gets the fail-closed 503 and is not forwarded, the log says `cannot record '
        '(storage not responding)` once, and later requests are refused at once, without waiting, until a'
        ' write completes again. The late record is still written when storage comes back, followed by '
        'the 503 that was answered.'))
    queue_limit: int = key(_Size(" (0 = no limit)"), 64 * 1024 * 1024, (
        'Body bytes handed to the writer and not yet written beyond which the gateway stops reading from '
        'the connections that send streamed bodies (request uploads and streamed replies), until the '
        'writer is back under half of it: a slow store slows the streams instead of filling memory. `0` '
        'means no limit. See [integrity.md](integrity.md#a-slow-store-slows-the-streams).'))
    stop_timeout: float = key(_Number(gt=0, le=3600), 10.0, (
        'Seconds shutdown waits for the writer to finish what is queued. Past it the gateway stops anyway'
        ' and logs `NOT WRITTEN:` with what was left (records, body bytes, sessions); those sessions stay'
        ' unsealed and the next start recovers what reached the disk.'))


@dataclass(frozen=True)
class SessionsConfig:
    idle_timeout: float = key(_SECONDS, 1800.0, (
        'Seconds without a flow after which a session closes.'))
    max_duration: float = key(_SECONDS, 28800.0, (
        'Seconds after which a session closes even while active; the next flow opens a new one.'))


@dataclass(frozen=True)
class IdentityConfig:
    mode: str = key(_OneOf("jwt", "none"), "jwt", (
        '`jwt`: every caller presents a JWT. `none`: no check, for local demos only; warned at start-up '
        'and recorded as unauthenticated.'))
    issuer: str | None = key(_Text(), None, (
        'Expected `iss` claim.'), rule="required for mode `jwt`")
    audience: str | None = key(_Text(), None, (
        'Expected `aud` claim.'), rule="required for mode `jwt`")
    jwks_url: str | None = key(_Text('an http(s) URL, e.g. "https://idp.example.com/.well-known/jwks.json"',
                                     r"https?://\S+"), None, (
        'Where the identity provider publishes its signing keys.'))
    jwks_file: Path | None = key(_PathValue(), None, (
        'A local JWKS file instead.'))
    hs256_secret: SecretRef | None = key(_Secret(allow_none=False), None, (
        'An HS256 shared secret, for local development (`wiretrail token` mints tokens with it). At least'
        ' 32 bytes: the identity verifier refuses a shorter one at start-up.'))
    groups_claim: str = key(_Text(), "groups", (
        "The claim that lists the caller's groups."))
    leeway: float = key(_Number(ge=0), 30.0, (
        'Seconds of clock skew allowed on `exp`, `nbf` and `iat`.'))
    jwks_refresh_interval: float = key(_Number(gt=0, le=3600), 30.0, (
        'Seconds between the JWKS fetches that a token with an unknown `kid` triggers. A rate limit: a '
        'stream of made-up kids cannot hammer the IdP, and a key the IdP just published is picked up '
        'within this time.'))
    review_groups: tuple[str, ...] = key(_NAMES, (), (
        'Groups whose members may read sessions in the review page (`wiretrail serve`, '
        '[review.md](review.md)). Empty: nobody, and `wiretrail serve` refuses to start until it is set. '
        'The gateway itself does not use it.'))


@dataclass(frozen=True)
class PolicyConfig:
    unregistered: str = key(_OneOf("deny", "tunnel", "record"), "deny", (
        'What happens to a host no connection matches, by name or by address. `deny`: refused. `tunnel`: '
        'passed through without interception, not recorded (unless its TLS server name is a registered '
        "host's). `record`: intercepted and recorded, no credential injected."))
    raw_tcp: str = key(_OneOf("refuse", "record"), "refuse", (
        'What happens to bytes that are neither HTTP nor WebSocket on their way to a host the gateway '
        'intercepts: a client that speaks another protocol inside its tunnel (after TLS or without it), '
        'an unknown ALPN, an HTTP `101` upgrade to anything but WebSocket, a reverse `tcp://`/`tls://` '
        "listener, mitmproxy's `tcp_hosts`. `refuse`: the client connection is closed before anything "
        'goes upstream, and a `tcp.refused` record says who tried. `record`: both directions are recorded'
        ' as `tcp.open` / `tcp.message` / `tcp.close` (client bytes written before they are forwarded). '
        'Even with `record`, raw TCP is refused to a connection that injects a credential (nothing could '
        "be stripped or injected in it), to a caller outside the connection's `allow_groups`, and to a "
        'client that has no verified identity. UDP, DNS and raw QUIC are always refused. See '
        '[format.md](format.md) for the records.'))
    resolve_timeout: float = key(_Number(gt=0, le=60), 5.0, (
        'Seconds the DNS lookup of a destination may take (off the event loop). A destination whose '
        'lookup fails or takes longer is refused: `403` under `deny`, else `502` (`unresolved`).'))
    resolve_interval: float = key(_Number(ge=1, le=86400), 60.0, (
        'Seconds a DNS answer is reused, and how often the registered hosts are looked up again. An '
        'address a registered host had stays its alias for ten times this (at least 10 minutes) after DNS'
        ' last gave it.'))


@dataclass(frozen=True)
class MaskingRule:
    id: str = key(_Text('a rule id of lowercase letters, digits and "-", starting with a letter or digit, '
                        'e.g. "acme-token"', r"[a-z0-9][a-z0-9-]*"), doc=(
        'Names the rule in mask tags: `[MASKED:<id>:<8 hex>]`.'))
    regex: str = key(_Regex(), doc=(
        'What to mask: the first capturing group that took part in the match, else the whole match. '
        'Without lookarounds the rule is scanned by RE2 (fast); with them by Python `re`.'))
    keywords: tuple[str, ...] = key(_ListOf(_Text(), 'an array of non-empty strings, e.g. ["acme_"]'), (), (
        'Literals (case-insensitive) one of which occurs in every match, at or before the secret. The '
        'rule runs only on text that contains one; with none it runs on everything.'))
    entropy: float | None = key(_Number(ge=0, le=8, unit="bits per character"), None, (
        'Minimum Shannon entropy (bits per character) of the secret; lower ones are not masked.'))
    allowlist: tuple[str, ...] = key(_ListOf(_Regex(), 'an array of regular expressions, e.g. ["EXAMPLE$"]'), (), (
        'A secret that one of them finds (`re.search`) is not masked.'))


@dataclass(frozen=True)
class MaskingConfig:
    builtin: bool = key(_Bool(), True, (
        'Use the built-in secret patterns (API keys, tokens, private keys...).'))
    mask_responses: bool = key(_Bool(), False, (
        'Also mask what the client receives (the record is always masked).'))
    mask_requests: bool = key(_Bool(), False, (
        'Also mask what is forwarded upstream (the record is always masked).'))
    rules: tuple[MaskingRule, ...] = key(_Tables(table(MaskingRule), "an array of tables, written [[masking.rules]]",
                                                 unique="id"), (), (
        'Extra rules, written `[[masking.rules]]`.'))
    allowlist: tuple[str, ...] = key(_ListOf(_Text(), 'an array of non-empty strings, e.g. ["sk-example-not-a-key"]'),
                                     (), (
        'Exact values that are never masked (e.g. published example keys).'))


@dataclass(frozen=True)
class ConnectionConfig:
    name: str = key(_Text(), doc=(
        "The connection's name, recorded with each request and in credential markers "
        '(`[credential:openai]`).'))
    hosts: tuple[str, ...] = key(_ListOf(_Host(), 'a non-empty array of host names, e.g. ["api.openai.com"]',
                                         min_items=1), (), (
        'Hosts this connection matches. `*.example.com` matches any name below `example.com`, not '
        '`example.com` itself. No scheme, no port. A `postgres` connection has none.'), rule="required for kind `http`")
    ports: tuple[int, ...] = key(_ListOf(_Number(integer=True, ge=1, le=65535, expected="a port number 1..65535"),
                                         "an array of port numbers, e.g. [443]"), (), (
        'Ports it matches; empty matches any port.'))
    credential: SecretRef | None = key(_Secret(allow_none=True), None, (  # None: "none" (record only)
        'The upstream credential the gateway injects. `"none"`: the gateway holds none (record only). For'
        " kind `postgres`: the role's password, for SCRAM-SHA-256 (with channel binding when the server "
        'offers it over TLS), md5, or a clear-text password over TLS or loopback only. Required unless '
        '`client_cert` is given. Re-read on SIGHUP, masked everywhere.'))
    inject: str = key(_OneOf(INJECT_MODES), "bearer", (
        'How the credential is sent: `Authorization: Bearer`, `x-api-key`, `api-key` (Azure OpenAI), '
        '`x-goog-api-key`, or not at all.'))
    allow_groups: tuple[str, ...] = key(_NAMES, (), (
        'Groups allowed to use it; empty allows any authenticated identity.'))
    kind: str = key(_OneOf("http", "postgres"), "http", (
        '`http`: an API reached through the proxy, matched by `hosts`. `postgres`: a database, reached on'
        ' `listen`. The keys of [database connections](#database-connections-kind-postgres) are for '
        '`postgres` only; an `http` connection that sets one is refused.'))
    # kind "postgres" only (docs/configuration.md, "Database connections"):
    listen: str | None = key(_HostPort(None, "127.0.0.1:15432"), None, (
        'Where database clients connect. A taken port stops start-up.'), rule="required for kind `postgres`, unique", only_kind="postgres")
    upstream: str | None = key(_HostPort(5432, "db.internal:5432"), None, (
        'The database server.'), rule="required for kind `postgres`", only_kind="postgres")
    database: str | None = key(_Text(), None, (
        'The one database clients may connect to (others are refused, SQLSTATE 28000). Left out: the '
        'database the client names.'), only_kind="postgres")
    user: str | None = key(_Text(), None, (
        "The gateway's database role: every client's statements run as it. Clients may give any user "
        'name; it is recorded, not used.'), rule="required for kind `postgres`", only_kind="postgres")
    upstream_tls: str = key(_OneOf(TLS_MODES), "require", (
        "TLS to the database, with libpq's meanings: `prefer` and `require` encrypt without checking the "
        "server's certificate; `verify-full` checks it against `upstream_ca` (or the system's CAs) and "
        'the host name.'), only_kind="postgres")
    upstream_ca: Path | None = key(_PathValue(), None, (
        'The CA bundle (PEM) that `verify-full` checks the database against.'), only_kind="postgres")
    client_cert: Path | None = key(_PathValue(), None, (
        'A client certificate (PEM) the gateway presents to the database, for `cert` authentication; then'
        ' `credential` may be left out.'), only_kind="postgres")
    client_key: Path | None = key(_PathValue(), None, (
        'Its private key, when not in the certificate file.'), rule="needs `client_cert`", only_kind="postgres")
    tls_cert: Path | None = key(_PathValue(), None, (
        'The certificate clients see. Left out: the gateway issues one from its mitmproxy CA (the one '
        "`wiretrail ca` exports) for the listen address, `localhost`, `127.0.0.1`, `::1` and this host's "
        'name, so `sslmode=verify-full sslrootcert=<the CA>` works.'), rule="with `tls_key`", only_kind="postgres")
    tls_key: Path | None = key(_PathValue(), None, (
        'Its private key.'), rule="with `tls_cert`", only_kind="postgres")
    allow_plaintext: bool = key(_Bool(), False, (
        'Accept clients that do not start TLS. Off, a client without TLS is refused (SQLSTATE 28000, '
        '"connect with sslmode=require"). The token is a bearer credential: it never crosses a network in'
        ' clear.'), rule="only with a loopback `listen`", only_kind="postgres")
    sample_rows: int = key(_Number(integer=True, ge=0, le=1000, unit="rows"), 0, (
        'Rows per result recorded as a sample, masked like the rest, each cell cut at 1024 characters. '
        '`0`: rows are counted, never recorded.'), only_kind="postgres")
    # kind "http":
    strip_cookies: bool = key(_Bool(), True, (
        "Where the gateway injects its credential, the client's `Cookie` headers are removed (a cookie "
        "can carry the client's own session or key). `false` lets them pass, recorded as a keyed hash: "
        'for an upstream that needs its own cookies, such as session affinity.'))
    keep_query: tuple[str, ...] = key(_ListOf(_QueryName(), 'an array of query parameter names, e.g. ["token"]'), (), (
        'Where the gateway injects its credential, credential-like query parameters (`key`, `api_key`, '
        '`access_token`, `token` … in any case or percent-encoding) are removed. Names listed here pass '
        'anyway: for an upstream where such a name is not a credential (`keep_query = ["token"]` for a '
        'pagination token). Compared as the swap compares them: decoded, lowercase, without `-`, `_` and '
        '`.`.'))
    preset: str | None = key(_OneOf(PRESETS), None, (
        'A built-in connection: fills in `name` and `hosts` (see below).'))


@dataclass(frozen=True)
class CaptureConfig:
    stream_threshold: int = key(_Size(), 262144, (
        'A body whose `Content-Length` is above this is streamed (forwarded and recorded chunk by chunk);'
        ' smaller ones are buffered. SSE and chunked bodies always stream.'))
    chunk_interval: float = key(_Number(gt=0, le=5), 0.1, (
        'Seconds of streamed data batched into one `http.chunk` record.'))
    max_body: int = key(_Size(" (0 = no limit)"), 0, (
        'Bytes recorded per body or per stream direction; the rest is forwarded but not recorded, and the'
        ' record is marked `truncated`. `0` records everything.'))


@dataclass(frozen=True)
class TimeoutsConfig:
    request_header: float = key(_Number(gt=0, le=3600), 30.0, (
        "Seconds a client has to complete a request's headers once it has begun one: from the "
        "connection's start for its first request (TLS handshake and CONNECT included), from the first "
        'byte of the next one on a kept-alive connection. Past it the connection is closed; recorded with'
        ' `phase` `"request_header"` (in the session of the identity a CONNECT already proved, else in '
        "the unverified session of the client's address)."))
    idle: float = key(_Number(gt=0, le=86400), 300.0, (
        'Seconds with nothing moving. A connection between exchanges (an idle keep-alive or HTTP/2 '
        'connection) is closed, with nothing to record. An exchange whose body stalls (a request upload '
        'or a streamed reply that stops sending) is ended: the client gets 504, or a reset once its reply'
        ' began, the upstream side is reset, and it is recorded with `phase` `"idle"`. A connection '
        'paused by back-pressure is not idle.'))
    upstream_response: float = key(_Number(gt=0, le=86400), 600.0, (
        "Seconds from a request's release upstream (its end, once the request is on the record) to the "
        "upstream's response headers (connecting included); a request waiting for a slow store is not "
        'counted against the upstream (`storage.write_timeout` bounds that wait). Past it the client gets'
        ' 504, the upstream stream is reset (HTTP/2: that stream only; HTTP/1.1: its connection), and it '
        'is recorded with `phase` `"response"`. The default matches the OpenAI and Anthropic SDKs\' own 10'
        ' minutes: a long non-streamed completion must not be cut.'))


@dataclass(frozen=True)
class ReviewConfig:
    listen: str = key(_Text('an address "HOST:PORT", e.g. "127.0.0.1:8090"', r"\S+:\d{1,5}"), "127.0.0.1:8090", (
        'Where `wiretrail serve` listens (`--listen` overrides it). Anything but a loopback address '
        'should sit behind a TLS reverse proxy: the login cookie carries the identity token.'))
    verify_keys: tuple[Path, ...] = key(_ListOf(_PathValue(), 'an array of paths, e.g. ["keys/gateway.pub"]'), (), (
        "The gateway's public keys (PEM, from `wiretrail keygen`) that the review page checks checkpoint,"
        ' seal and ledger signatures with (`--key` overrides them). Keep them outside the store: a key '
        'found in the store proves nothing. Empty: only the hash chains are checked, and every page says '
        'so.'))
    descriptor_sets: tuple[Path, ...] = key(_ListOf(_PathValue(), 'an array of paths, e.g. ["protos/agent.pb"]'),
                                            (), (
        'FileDescriptorSets (`protoc --include_imports --descriptor_set_out=FILE`) that give Connect/gRPC'
        ' messages their field names in `wiretrail show --config` (records store field numbers; no schema'
        ' is needed to record).'))


@dataclass(frozen=True)
class AnchorsConfig:
    file: Path | None = key(_PathValue(), None, (
        'A file each anchor is appended to (one JSON line, fsynced). Put it on another mount, or where '
        'the account that can write the store cannot (an append-only file, `chattr +a`). A file inside '
        'the store is refused: whoever rolls the ledger back would edit it too.'), rule="not inside `storage.dir`")
    syslog: str | None = key(_Text('a unix socket path ("/dev/log") or "udp:HOST:PORT"',
                                   r"/\S+|udp:(?:[^\s:\[\]]+|\[[0-9A-Fa-f:.]+\]):\d{1,5}"), None, (
        'Syslog, one message per anchor (`wiretrail[PID]: {"wiretrail_anchor":1,...}`). Forward it to a '
        'remote collector or SIEM.'))
    syslog_facility: str = key(_OneOf(SYSLOG_FACILITIES), "authpriv", (
        'The facility of those messages (severity `info`).'))
    http: str | None = key(_Text('an http(s) URL, e.g. "https://audit.example.com/wiretrail/anchors"',
                                 r"https?://\S+"), None, (
        'Each anchor is POSTed here as `application/json`; any 2xx answer is success, a redirect is a '
        'failure.'))
    http_token: SecretRef | None = key(_Secret(allow_none=False), None, (
        'Sent as `Authorization: Bearer` to the `http` sink, which must then be `https://`.'))
    interval: float = key(_Number(gt=0, le=3600), 1.0, (
        'Seconds: at most one anchor per sink this often. The newest head covers every entry before it, '
        'so heads that arrive in between are not lost, only merged.'))
    timeout: float = key(_Number(gt=0, le=120), 5.0, (
        'Seconds one send may take (http), and how long the gateway waits at shutdown to anchor its last '
        'head.'))
    fail_closed: bool = key(_Bool(), False, (
        '`false`: a failing sink is logged as an error at once, and again every minute while it fails, '
        'and recording goes on. `true`: once a sink has failed for `max_lag` seconds, requests get the '
        'fail-closed 503 (`cannot record (anchors failing)`) until it takes an anchor again.'))
    max_lag: float = key(_Number(gt=0, le=86400), 60.0, (
        'Seconds a sink may fail before `fail_closed = true` refuses traffic.'))


@dataclass(frozen=True)
class ObjectStorageConfig:
    url: str | None = key(_Text('an "s3://BUCKET/PREFIX" URL, e.g. "s3://acme-wiretrail/sessions"',
                                r"s3://[a-z0-9][a-z0-9.-]{1,62}(/\S*)?"), None, (
        'The S3-compatible bucket (and prefix) that ended sessions (closed, failed, recovered) and the '
        'ledger are uploaded to, under the same relative paths as in the store. Credentials come from '
        "boto3's usual chain (environment, profile, instance role), never from this file."))
    endpoint_url: str | None = key(_Text('an http(s) URL, e.g. "https://minio.internal:9000"', r"https?://\S+"),
                                   None, (
        'An S3-compatible server: MinIO, Ceph RGW, or a local stand-in.'))
    region: str | None = key(_Text(), None, (
        "The bucket's region."))
    require_object_lock: bool = key(_Bool(), False, (
        '`true`: the gateway does not start unless the bucket has Object Lock with a COMPLIANCE default '
        'retention. `false`: it says so in its log when the lock is missing, and uploads anyway.'))
    keep_local: bool = key(_Bool(), True, (
        '`false`: a local session file is deleted once its upload is confirmed (the bucket holds the same'
        ' SHA-256); verify the bucket (`wiretrail verify s3://...`), not the local store, from then on.'))
    interval: float = key(_Number(gt=0, le=3600), 10.0, (
        'Seconds between upload passes; a last pass runs at shutdown (bounded by `storage.stop_timeout`).'))


@dataclass(frozen=True)
class NodeConfig:
    id: str | None = key(_Text('a gateway id of lowercase letters, digits and "-" (at most 64), e.g. "gw1"',
                               fleet.ID_PATTERN), None, (
        'Set when several gateway processes (on one machine or many) write under one `storage.dir`. The '
        'gateway then writes its own store under `storage.dir/gateways/<id>/` (its ledger, its session '
        'files) and records the id in each `session.open` (`gateway.id`). Each process needs its own id: '
        'a second process with the same id finds the ledger locked and records nothing (it stops at '
        'start-up, or refuses traffic with 503). A gateway without an id refuses to start on a root that '
        "holds gateways' stores, and one with an id on a root that is a single gateway's store. "
        "`wiretrail verify`, `ls`, `show` and `serve` take the root (each gateway's part checked against its "
        "own ledger). See [deployment.md](deployment.md)."))


@dataclass(frozen=True)
class GatewayConfig:
    storage: StorageConfig = section(StorageConfig, "where and how records are written")
    sessions: SessionsConfig = section(SessionsConfig, "when a session closes")
    identity: IdentityConfig = section(IdentityConfig, "who the caller is", check=checks.identity)
    policy: PolicyConfig = section(PolicyConfig, "what may be reached, and what is done with the rest")
    masking: MaskingConfig = section(MaskingConfig, "what is masked before anything is written")
    capture: CaptureConfig = section(CaptureConfig, "how bodies are recorded")
    connections: tuple[ConnectionConfig, ...] = key(
        _Tables(_PresetTable(ConnectionConfig, keys_of(ConnectionConfig)), "an array of tables, written [[connections]]",
                unique="name", check=checks.connections), (), (
        'The registered upstreams, written `[[connections]]`.'))
    timeouts: TimeoutsConfig = section(TimeoutsConfig, "no connection or exchange holds the gateway without end")
    review: ReviewConfig = section(ReviewConfig, "the review page (`wiretrail serve`)")
    anchors: AnchorsConfig = section(AnchorsConfig, "the ledger head, kept outside the store", check=checks.anchors)
    gateway: NodeConfig = section(NodeConfig, "one of several gateways sharing a store")
    object_storage: ObjectStorageConfig = section(ObjectStorageConfig, "ended sessions uploaded to a bucket")
    source: Path | None = None  # the file read; None = the embedded default (not a key)

    @property
    def store_dir(self) -> Path:
        """Where this gateway writes: storage.dir, or its own folder there when it has an id."""
        return fleet.gateway_store(self.storage.dir, self.gateway.id)


# The whole file: GatewayConfig's keys (without `source`), checked together by checks.gateway.
SCHEMA = _Table(dict, keys_of(GatewayConfig), check=checks.gateway)


def iter_keys(table: _Table = SCHEMA, at: str = "") -> Iterator[tuple[str, Key]]:
    """Every key in the schema as (path, Key); array-of-table items appear as "connections[]"."""
    return walk(table, at)


def changed_sections(old: GatewayConfig | None, new: GatewayConfig) -> list[str]:
    """The top-level sections in which two configs differ ("connections", "storage" ...)."""
    if old is None:
        return []
    return [k.name for k in SCHEMA.keys if getattr(old, k.name, None) != getattr(new, k.name, None)]
