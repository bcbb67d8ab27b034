"""The masking corpus: true positives for every rule family in many carriers, and true
negatives in the shapes of real agent traffic. Everything is generated here from a fixed
seed (no real secret is written anywhere); tests/unit/test_masking_corpus.py measures it.

True positives: for each rule, fresh values of its shape, each put into carriers: plain
text, JSON, JSON inside a JSON string (a tool result), YAML, .env, shell history, code
string literals, URLs, HTTP headers, and an SSE stream spelling it a few characters per
event. The "Encoded" family holds secrets of every rule base64-, hex- and percent-encoded
and behind JSON escapes; "Known" the gateway's own credentials.

True negatives: bodies as Claude Code, Codex and the SDKs send and receive them (the fake
upstream's replies, requests with tool calls and results, MCP JSON-RPC), their headers,
ids and hashes of every common shape, base64 images, and this repository's own code and
prose, cut in pieces.
"""
from __future__ import annotations

import base64
import hashlib
import json
import random
import string
import urllib.parse
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
A = string.ascii_letters + string.digits
U = string.ascii_uppercase
L = string.ascii_lowercase
H = "0123456789abcdef"
B64 = A + "+/"
URLSAFE = A + "_-"

rng = random.Random(18)


def r(alphabet: str, n: int) -> str:
    return "".join(rng.choice(alphabet) for _ in range(n))


def j(*parts: str) -> str:
    return "".join(parts)


def _jwt() -> str:
    def seg(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return j(seg({"alg": "RS256", "kid": r(A, 8)}), ".", seg({"sub": r(A, 10), "exp": rng.randint(1, 2**31)}), ".",
             r(URLSAFE, 86))


def _pem(kind: str) -> str:
    lines = [r(B64, 64) for _ in range(rng.randint(4, 9))] + [r(B64, rng.randint(8, 60))]
    return j("-----BEGIN ", kind, "-----\n", "\n".join(lines), "\n-----END ", kind, "-----")


GENERIC_NAMES = ["API_KEY", "db_password", "client_secret", "SECRET_KEY", "authToken", "api-key", "PASSWORD",
                 "MYSQL_ROOT_PASSWORD", "DB_PASS", "apiKey", "x-api-token", "access_token", "refresh_token",
                 "SESSION_SECRET", "jwtSecret", "encryption_key", "webhook_secret", "service_account_password",
                 "REDIS_PASSWORD", "smtp_password", "ApiKey", "app.secret", "credentials", "auth-token",
                 "PRIVATE_KEY_PASSPHRASE", "github_token", "SLACK_SIGNING_SECRET", "master_key"]

# rule id -> (kind, make) where make() -> (secret, text): "token" values stand alone,
# "assign" texts are `name=value` (carriers reshape them), "snippet" texts carry their context.
RULES: dict[str, tuple] = {
    "aws-access-key-id": ("token", lambda: (lambda s: (s, s))(j(rng.choice(["AKIA", "ASIA"]), r("ABCDEFGHIJKLMNOPQRSTUVWXYZ234567", 16)))),
    "aws-secret-access-key": ("assign", lambda: (lambda s: (s, ("aws_secret_access_key", s)))(r(B64, 40))),
    "gcp-api-key": ("token", lambda: (lambda s: (s, s))(j("AI", "za", r(URLSAFE, 35)))),
    "gcp-service-account-key": ("snippet", lambda: (lambda p: (p.split("\n")[2], json.dumps(
        {"type": "service_account", "project_id": "acme", "private_key_id": r(H, 40), "private_key": p + "\n"})))(
        _pem("PRIVATE KEY"))),
    "azure-storage-key": ("snippet", lambda: (lambda s: (s, f"DefaultEndpointsProtocol=https;AccountName=acme{r(L, 4)};"
                                                          f"AccountKey={s};EndpointSuffix=core.windows.net"))(r(B64, 86) + "==")),
    "azure-connection-string": ("snippet", lambda: (lambda s: (s, f"Endpoint=sb://acme.servicebus.windows.net/;"
                                                                f"SharedAccessKeyName=RootManageSharedAccessKey;SharedAccessKey={s}"))(r(B64, 43) + "=")),
    "azure-sas-signature": ("snippet", lambda: (lambda s: (s, f"https://acme.blob.core.windows.net/c/f.txt?sv=2022-11-02&se=2030-01-01&sr=b&sp=r&sig={s}"))(
        r(A, 43) + "%3D")),
    "azure-ad-client-secret": ("token", lambda: (lambda s: (s, s))(j(r(A, 3), str(rng.randint(0, 9)), "Q~", r(A + "_~.-", 34)))),
    "github-pat": ("token", lambda: (lambda s: (s, s))(j("gh", "p_", r(A, 36)))),
    "github-fine-grained-pat": ("token", lambda: (lambda s: (s, s))(j("github", "_pat_", r(A, 22), "_", r(A, 59)))),
    "github-oauth": ("token", lambda: (lambda s: (s, s))(j("gh", "o_", r(A, 36)))),
    "github-app-token": ("token", lambda: (lambda s: (s, s))(j(rng.choice(["gh" + "u_", "gh" + "s_"]), r(A, 36)))),
    "github-refresh-token": ("token", lambda: (lambda s: (s, s))(j("gh", "r_", r(A, 76)))),
    "gitlab-token": ("token", lambda: (lambda s: (s, s))(j("gl", "pat-", r(URLSAFE, 20)))),
    "slack-token": ("token", lambda: (lambda s: (s, s))(j("xo", "xb-", r("0123456789", 12), "-", r("0123456789", 13), "-", r(A, 24)))),
    "slack-webhook": ("snippet", lambda: (lambda s: (s, "https://hooks.slack.com/" + s))(
        j("services/T", r(U + "0123456789", 9), "/B", r(U + "0123456789", 9), "/", r(A, 24)))),
    "stripe": ("token", lambda: (lambda s: (s, s))(j(rng.choice(["sk", "rk"]), "_live_", r(A, 32)))),
    "anthropic": ("token", lambda: (lambda s: (s, s))(j("sk-", "ant-", "api03-", r(URLSAFE, 93), "AA"))),
    "openai": ("token", lambda: (lambda s: (s, s))(j("sk-", "proj-", r(URLSAFE, 74), str(rng.randint(0, 9)), r(A, 20)))),
    "huggingface": ("token", lambda: (lambda s: (s, s))(j("hf", "_", r(A, 34)))),
    "npm": ("token", lambda: (lambda s: (s, s))(j("np", "m_", r(A, 36)))),
    "pypi": ("token", lambda: (lambda s: (s, s))(j("pypi-", "AgEIcHlwaS5vcmc", r(URLSAFE, 70)))),
    "sendgrid": ("token", lambda: (lambda s: (s, s))(j("SG", ".", r(URLSAFE, 22), ".", r(URLSAFE, 43)))),
    "twilio-api-key": ("token", lambda: (lambda s: (s, s))(j("SK", r(H, 32)))),
    "twilio-auth-token": ("assign", lambda: (lambda s: (s, ("TWILIO_AUTH_TOKEN", s)))(r(H, 32))),
    "shopify": ("token", lambda: (lambda s: (s, s))(j("shp", "at_", r(H, 32)))),
    "digitalocean": ("token", lambda: (lambda s: (s, s))(j("do", "p_v1_", r(H, 64)))),
    "mailgun": ("token", lambda: (lambda s: (s, s))(j("key", "-", r(H + "ghijklmnop", 32)))),
    "private-key": ("snippet", lambda: (lambda p: (p.split("\n")[2], p))(_pem(rng.choice(["RSA PRIVATE KEY", "OPENSSH PRIVATE KEY",
                                                                                        "EC PRIVATE KEY", "PRIVATE KEY"])))),
    "jwt": ("token", lambda: (lambda s: (s, s))(_jwt())),
    "url-password": ("snippet", lambda: (lambda s: (s, f"{rng.choice(['postgres', 'mysql', 'redis', 'mongodb+srv', 'https'])}://"
                                                      f"{r(L, 6)}:{s}@db-{r(L, 4)}.internal:5432/app"))(r(A, rng.randint(10, 24)))),
    "connection-string-password": ("snippet", lambda: (lambda s: (s, f"Server=tcp:sql-{r(L, 5)}.database.windows.net,1433;"
                                                                    f"Database=app;User ID=svc;Password={s};Encrypt=True"))(r(A, 16) + "!")),
    "authorization-header": ("snippet", lambda: (lambda s: (s, f"Authorization: Bearer {s}"))(r(URLSAFE, 40))),
    "bearer-token": ("snippet", lambda: (lambda s: (s, f"use the bearer {s} for now"))(r(A, 32))),
    "generic-secret": ("assign", lambda: (lambda s: (s, (rng.choice(GENERIC_NAMES), s)))(
        r(rng.choice([A, A + "!@#%^&*", H, B64]), rng.randint(12, 48)))),
}

FAMILIES = ("Cloud", "Code hosting", "Services", "Structural", "Generic", "Encoded", "Known")
CARRIERS = ("plain", "json", "json-in-json", "yaml", "env", "shell", "code", "url", "header", "sse")


def _assign(name: str, value: str, style: str) -> str:
    return {"plain": f"the {name} is {name}={value} (rotate it)", "json": json.dumps({name: value}),
            "yaml": f"settings:\n  {name}: \"{value}\"\n", "env": f"{name}={value}\n",
            "shell": f"$ export {name}={value}\n$ ./deploy.sh", "code": f'{name.replace("-", "_")} = "{value}"\n',
            "url": f"https://api.example.com/v1/items?{name}={urllib.parse.quote(value, safe='')}&page=2",
            "header": f"{name}: {value}"}[style]


def carry(kind: str, text, carrier: str) -> str | None:
    """The text (or (name, value)) in one carrier; None where that carrier makes no sense."""
    if carrier == "json-in-json":
        inner = carry(kind, text, "env") or carry(kind, text, "plain")
        return json.dumps({"role": "tool", "tool_call_id": "call_1", "content": json.dumps({"path": ".env", "content": inner})})
    if carrier == "sse":
        return carry(kind, text, "plain")
    if kind == "assign":
        return _assign(text[0], text[1], carrier)
    multiline = "\n" in text
    if carrier == "plain":
        return f"Here it is: {text} -- keep it safe."
    if carrier == "json":
        return json.dumps({"role": "tool", "content": text})
    if carrier == "yaml":
        return "value: |\n  " + text.replace("\n", "\n  ") + "\n" if multiline else f"value: \"{text}\"\n"
    if carrier == "env":
        return None if multiline else f"VALUE={text}\n"
    if carrier == "shell":
        return None if multiline else f"$ curl -s -d 'v={text}' https://api.example.com/x"
    if carrier == "code":
        return "KEY = \"\"\"" + text + "\"\"\"\n" if multiline else f"const value = '{text}';\n"
    if carrier == "url":
        return None if multiline or "://" in text or " " in text else f"https://api.example.com/x?v={text}&page=2"
    if carrier == "header":
        return None if multiline else f"X-Value: {text}"
    return None


def true_positives(per_rule: int = 12) -> list[tuple[str, str, str, str]]:
    """(family, rule id, carrier, secret, text) tuples: the secret must not survive in the text."""
    from recorder.masking.catalogue import RULES as CATALOGUE

    group = {x["id"]: x["group"] for x in CATALOGUE}
    out = []
    for rule, (kind, make) in RULES.items():
        for k in range(per_rule * (4 if rule == "generic-secret" else 1)):
            secret, text = make()
            for carrier in CARRIERS:
                if carrier == "sse" and k >= 3:
                    continue  # streams are slow to check: a few values per rule
                t = carry(kind, text, carrier)
                if t is not None:
                    out.append((group[rule], rule, carrier, secret, t))
    # Encoded: each rule's value in the plain carrier, base64 / hex / percent / \u-escaped.
    for rule, (kind, make) in RULES.items():
        for k in range(4):
            secret, text = make()
            plain = carry(kind, text, "env") or carry(kind, text, "plain")
            enc = [("base64", base64.b64encode(plain.encode()).decode()),
                   ("base64url", base64.urlsafe_b64encode(plain.encode()).decode()),
                   ("hex", plain.encode().hex()),
                   ("percent", urllib.parse.quote(plain, safe="")),
                   ("json-escape", json.dumps(plain, ensure_ascii=True)[1:-1].replace(secret[:2], "\\u%04x\\u%04x" % (ord(secret[0]), ord(secret[1]))))]
            for name, e in enc:
                out.append(("Encoded", rule, name, secret, f"blob: {e} (end)"))
    for k in range(20):
        secret = j("gw-", r(A, 28))
        out.append(("Known", "credential", "plain", secret, f"the upstream key {secret} leaked"))
        out.append(("Known", "credential", "base64", secret, "Basic " + base64.b64encode(f"u:{secret}".encode()).decode()))
    return out


# -- true negatives -------------------------------------------------------------------------------

def _ids() -> list[str]:
    return [str(uuid.uuid4()), "chatcmpl-" + r(A, 29), "msg_01" + r(A, 22), "toolu_01" + r(A, 22),
            "resp_" + r(H, 48), "req_011C" + r(A, 20), "call_" + r(A, 24), "fc_" + r(H, 48), "rs_" + r(H, 48),
            hashlib.sha1(r(A, 8).encode()).hexdigest(), hashlib.sha256(r(A, 8).encode()).hexdigest(),
            hashlib.md5(r(A, 8).encode()).hexdigest(), r(H, 7), "01J" + r("0123456789ABCDEFGHJKMNPQRSTVWXYZ", 23),
            f"sha256-{base64.b64encode(hashlib.sha256(r(A, 5).encode()).digest()).decode()}",
            f"sha512-{base64.b64encode(hashlib.sha512(r(A, 5).encode()).digest()).decode()}"]


def _agent_bodies() -> list[str]:
    from tests.support.upstream import anthropic_events, anthropic_json, openai_events, openai_json

    ids = _ids()
    user_id = f"user_{r(H, 64)}_account_{uuid.uuid4()}_session_{uuid.uuid4()}"
    code = rng.choice(_code_pieces())
    bodies = [
        {"model": "claude-sonnet-4-5", "max_tokens": 32000, "stream": True, "metadata": {"user_id": user_id},
         "system": [{"type": "text", "text": "You are Claude Code, Anthropic's official CLI.", "cache_control": {"type": "ephemeral"}}],
         "messages": [{"role": "user", "content": "run the tests and fix what fails"},
                      {"role": "assistant", "content": [{"type": "tool_use", "id": ids[3], "name": "Bash",
                                                         "input": {"command": "pytest -q tests/unit", "timeout": 120000}}]},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": ids[3], "content": code}]}],
         "tools": [{"name": "Read", "input_schema": {"type": "object", "properties": {"file_path": {"type": "string"}}}}]},
        {"model": "gpt-5-codex", "instructions": "You are Codex, based on GPT-5.", "prompt_cache_key": ids[0],
         "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "explain " + code[:300]}]},
                   {"type": "function_call", "call_id": ids[6], "name": "shell", "arguments": json.dumps({"command": ["rg", "-n", "token"]})},
                   {"type": "function_call_output", "call_id": ids[6], "output": code[:600]},
                   {"type": "reasoning", "id": ids[8], "encrypted_content": "gAAAAAB" + r(URLSAFE, 200)}],
         "store": False, "stream": True, "include": ["reasoning.encrypted_content"], "previous_response_id": ids[4]},
        {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello"},
                                         {"role": "assistant", "tool_calls": [{"id": ids[6], "type": "function",
                                          "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
                                         {"role": "tool", "tool_call_id": ids[6], "content": "{\"temp_c\": 21}"}],
         "max_tokens": 1024, "temperature": 0.2, "stream_options": {"include_usage": True}},
        {"jsonrpc": "2.0", "id": rng.randint(1, 99), "method": "tools/call",
         "params": {"name": "read_file", "arguments": {"path": "src/app.py"}, "_meta": {"progressToken": ids[0]}}},
        {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": code[:800]}], "isError": False}},
        {"id": ids[2], "type": "message", "role": "assistant", "model": "claude-sonnet-4-5", "stop_reason": "end_turn",
         "content": [{"type": "thinking", "thinking": "The test compares tokens.", "signature": "Eq" + r(B64, 300)},
                     {"type": "text", "text": "Fixed: the cache key now includes the model name."}],
         "usage": {"input_tokens": 1234, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 40960, "output_tokens": 321}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                     "data": base64.b64encode(b"\x89PNG\r\n\x1a\n" + rng.randbytes(3000)).decode()}},
        openai_json(), anthropic_json(),
    ]
    out = [json.dumps(b) for b in bodies]
    out.append(b"".join(openai_events(6)).decode())
    out.append(b"".join(anthropic_events(6)).decode())
    return out


def _headers() -> str:
    ids = _ids()
    return "\n".join([
        f"x-request-id: {ids[5]}", f"request-id: {ids[5]}", f"anthropic-organization-id: {uuid.uuid4()}",
        "anthropic-ratelimit-tokens-remaining: 40000", "anthropic-ratelimit-input-tokens-reset: 2025-01-01T00:00:00Z",
        f"openai-organization: org-{r(A, 24)}", "openai-processing-ms: 812", f"x-ratelimit-remaining-tokens: {rng.randint(1, 10**6)}",
        f"cf-ray: {r(H, 16)}-CDG", f'etag: W/"{ids[10][:32]}"', f"session_id: {ids[0]}", "x-stainless-lang: python",
        "x-stainless-retry-count: 0", f"chatgpt-account-id: {uuid.uuid4()}", "openai-beta: responses=experimental",
        "originator: codex_cli_rs", f"traceparent: 00-{r(H, 32)}-{r(H, 16)}-01", f"x-amz-cf-id: {r(URLSAFE, 56)}"])


_CODE: list[str] = []


def _code_pieces() -> list[str]:
    """This repository's own code and prose (not the masking sources or docs, which name every
    rule's shapes on purpose), in pieces of about 2 KB."""
    if not _CODE:
        paths = sorted(p for p in (ROOT / "recorder").rglob("*.py") if "masking" not in p.parts)
        paths += sorted(p for p in (ROOT / "addons").glob("*.py"))
        paths += sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "masking.md")
        for p in paths:
            text = p.read_text()
            for i in range(0, len(text), 2000):
                _CODE.append(text[i:i + 2000])
    return _CODE


def true_negatives(n_bodies: int = 120) -> list[tuple[str, str]]:
    """(kind, text) samples in which nothing should be masked."""
    pieces = _code_pieces()
    # A fixed number of pieces, so that the table in docs/masking.md does not move with every edit.
    out = [("code", pieces[i % len(pieces)]) for i in sorted(random.Random(7).sample(range(max(len(pieces), 600)), 600))]
    for _ in range(n_bodies):
        out += [("agent body", b) for b in _agent_bodies()]
        out.append(("headers", _headers()))
        out.append(("ids", " ".join(_ids())))
        out.append(("shell", f"$ git log --oneline | head\n{r(H, 7)} fix the tokenizer\n$ export PAGE_TOKEN_LIMIT=50\n"
                             f"$ docker run -e API_KEY=${{API_KEY}} app:{r(H, 12)}\n$ kubectl get secret db-password -o yaml"))
        out.append((".env", "DATABASE_URL=postgres://app:${DB_PASSWORD}@db:5432/app\nOPENAI_API_KEY=\nLOG_LEVEL=debug\n"
                            f"CACHE_KEY_PREFIX=app-{r(L, 4)}\nMAX_TOKENS=4096\nSECRET_KEY=changeme\n"))
        out.append(("yaml", f"apiVersion: v1\nkind: Secret\nmetadata:\n  name: api-key-{r(L, 5)}\n  uid: {uuid.uuid4()}\n"
                            "data:\n  password: <set-me>\n  tokenizer: cl100k_base\n"))
    return out
