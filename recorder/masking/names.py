"""Is `name = value` a secret assignment? The name decides first, then the value's shape.

The generic rule fires on any name holding key, secret, password, token or credential.
Agents' traffic is full of such names that hold ids, counts and hashes: `prompt_cache_key`,
`max_tokens`, `idempotency_key`, `key_id`, `next_page_token`, `tokenizer`. An auditor needs
those readable. So the name is split into words (snake_case, kebab-case, camelCase,
dotted), and:

- a name without a secret word (`tokenizer`, `monkey`, `tokens`) is no secret name;
- a secret word followed by a word that makes it metadata (`key_id`, `token_count`,
  `password_url`, `secret_name`) is not either;
- `key` after a word that makes it an index or cache key (`cache_key`, `sort_key`,
  `public_key`), and `token` after a word that makes it a count or a cursor (`max_tokens`,
  `page_token`), are not either;
- `key` with nothing that says it is a credential (`key`, `s3_key`, `storage_key`) is a
  *weak* name: its value is masked only when it looks like a token, not an id (no UUID,
  no hash-length hex, no path), mixes character classes and has high entropy;
- every other name is *strong*: the value is masked unless it is a placeholder or code.

tests/unit/test_masking_precision.py pairs each exemption with a real secret of the same
shape that is still masked.
"""
from __future__ import annotations

import math
import re
from collections import Counter

SECRET_WORDS = frozenset({
    "key", "keys", "secret", "secrets", "password", "passwords", "passwd", "pwd", "pass", "passphrase",
    "token", "credential", "credentials", "creds", "apikey", "privatekey", "secretkey", "accesskey",
})
# key is a credential only when qualified; these qualify it (as a word or a prefix: apikey)
KEY_QUALIFIERS = frozenset({
    "api", "secret", "private", "access", "auth", "master", "signing", "sign", "encryption", "enc", "crypt",
    "crypto", "client", "app", "application", "license", "licence", "service", "account", "admin", "root",
    "session", "shared", "webhook", "consumer", "hmac", "jwt", "deploy", "integration", "subscription",
    "developer", "dev", "prod", "production", "live", "test", "bot", "user", "server", "write", "read",
    "ingest", "ingestion", "management", "mgmt", "project", "org", "organization", "personal", "partner",
    "aes", "rsa", "ssh", "gpg", "pgp", "cipher", "decryption", "recovery", "backup", "storage",
})
# words after the secret word that make the name metadata about it
META_SUFFIX = frozenset({
    "id", "ids", "uuid", "guid", "arn", "name", "names", "label", "type", "types", "kind", "path", "paths",
    "file", "filename", "dir", "url", "uri", "endpoint", "env", "var", "field", "header", "prefix", "suffix",
    "format", "version", "len", "length", "size", "limit", "limits", "max", "min", "count", "counts", "index",
    "idx", "ref", "mode", "expiry", "expires", "expiration", "ttl", "at", "time", "timestamp", "date",
    "usage", "used", "remaining", "reset", "budget", "estimate", "status", "policy", "rotation", "region",
    "location", "source", "provider", "store", "manager", "helper", "schema", "encoding", "algorithm", "alg",
    "bits", "scope", "scopes", "hint", "fingerprint", "hash", "digest", "checksum", "sha", "length",
    "required", "enabled", "present", "exists", "valid", "set", "missing", "error", "errors", "pattern",
    "regex", "input", "prompt", "placeholder", "description", "desc", "help", "message", "title", "text",
    "issued", "created", "updated", "lifetime", "duration", "spec", "config", "options", "settings",
})
# words before `key` that make it an index, a cache key or public material
KEY_NOT_SECRET = frozenset({
    "cache", "idempotency", "partition", "primary", "foreign", "sort", "row", "object", "lookup", "public",
    "pub", "dedup", "dedupe", "deduplication", "routing", "shard", "map", "dict", "i18n", "translation",
    "composite", "unique", "natural", "surrogate", "range", "cluster", "index", "search", "hash", "group",
    "message", "event", "state", "react", "list", "item", "cursor", "next", "sequence", "order",
    "content", "prompt", "conversation", "thread", "ordering", "correlation", "trace", "request", "retry",
})
# words before `token` that make it a count, a cursor or a lexer token
TOKEN_NOT_SECRET = frozenset({
    "max", "min", "page", "next", "prev", "previous", "continuation", "sync", "pagination", "cancellation",
    "cancel", "stop", "special", "bos", "eos", "pad", "unk", "sep", "cls", "mask", "num", "total", "input",
    "output", "completion", "prompt", "cached", "reasoning", "count", "per", "design", "css", "lexer",
    "parser", "syntax", "cache", "thinking", "budget", "context", "remaining", "used", "new", "end", "start",
    "eot", "image", "audio", "text", "vocab", "word", "progress",
})

_WORD = re.compile(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|[0-9]+")
_NAME_CHARS = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-$@")


def name_at(data: bytes, at: int) -> bytes:
    """The identifier around position `at` (where the rule's keyword was found)."""
    i = at
    while i > 0 and at - i < 64 and data[i - 1] in _NAME_CHARS:
        i -= 1
    j = at
    while j < len(data) and j - at < 64 and data[j] in _NAME_CHARS:
        j += 1
    return data[i:j]


def words(name: str) -> list[str]:
    return [w.lower() for w in _WORD.findall(name) if not w.isdigit()]


def _secret_word(w: str) -> bool:
    if w in SECRET_WORDS:
        return True
    if w.endswith("key") and w[:-3] in KEY_QUALIFIERS:
        return True  # apikey, secretkey, masterkey
    for noun in ("token", "secret", "password", "passwd", "credentials", "credential"):
        if w.endswith(noun) and len(w) - len(noun) >= 2:
            return True  # authtoken, clientsecret, dbpassword
    return False


def verdict(name: bytes) -> str | None:
    """"strong", "weak" or None (no secret name) for the identifier before an assignment."""
    ws = words(name.decode("latin-1"))
    idx = None
    for i in range(len(ws) - 1, -1, -1):
        if _secret_word(ws[i]):
            idx = i
            break
    if idx is None:
        return None
    noun = ws[idx]
    after = ws[idx + 1:]
    if any(w in META_SUFFIX for w in after):
        return None
    before = ws[idx - 1] if idx else ""
    if noun in ("key", "keys"):
        if before in KEY_NOT_SECRET:
            return None
        if not any(w in KEY_QUALIFIERS for w in ws[:idx]):
            return "weak"
    if noun == "token" and before in TOKEN_NOT_SECRET:
        return None
    return "strong"


_UUID = re.compile(rb"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_HEX = re.compile(rb"^(?:[0-9a-f]+|[0-9A-F]+)$")
_HASH_LENGTHS = frozenset({7, 8, 10, 12, 16, 20, 32, 40, 56, 64, 96, 128})
_PATH = re.compile(rb"^(?:[A-Za-z0-9_.\-~]*/)+[A-Za-z0-9_.\-~]*$")
_WORDISH = re.compile(rb"^[a-z]+(?:[a-z]|[0-9])*$")


def entropy(data: bytes) -> float:
    n = len(data)
    return -sum(c / n * math.log2(c / n) for c in Counter(data).values()) if n else 0.0


def _classes(value: bytes) -> int:
    return (any(65 <= c <= 90 for c in value) + any(97 <= c <= 122 for c in value)
            + any(48 <= c <= 57 for c in value))


def looks_like_id(value: bytes) -> bool:
    """A UUID, a hash-length hex string or a path: an id, not a token."""
    if _UUID.match(value):
        return True
    if _HEX.match(value) and len(value) in _HASH_LENGTHS:
        return True
    if b"/" in value and _PATH.match(value) and any(part[:1].isalpha() and part.islower() and len(part) > 2
                                                  for part in value.split(b"/")):
        return True
    return False


def looks_like_path(value: bytes) -> bool:
    """A file path or a URL path (`keys/gateway.key`, `/etc/app/secret.json`): where a secret is
    kept, not the secret."""
    if b"/" not in value or not _PATH.match(value):
        return False
    parts = [p for p in value.split(b"/") if p]
    return len(parts) >= 2 and all(_PATH_PART.match(p) for p in parts)


# a directory or file name: lowercase (or Capitalized) words, digits, - _ ~ and an extension;
# a base64 secret's slash-separated pieces mix cases and are no such names
_PATH_PART = re.compile(rb"^[A-Z]?[a-z0-9_\-~]{1,40}(?:\.[A-Za-z0-9]{1,8})*$")


def weak_value_is_secret(value: bytes) -> bool:
    """Under a weak name, only a value shaped like a token is a secret."""
    if looks_like_id(value):
        return False
    return _classes(value) >= 2 and entropy(value) >= 3.5 and len(value) >= 16
