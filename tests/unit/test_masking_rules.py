"""Each built-in rule's true and false positives (the way gitleaks tests its rules), custom
rules and allowlists from config, and a corpus of ordinary text that must stay unmasked."""
from __future__ import annotations

import base64
import hashlib
import hmac
import re
import uuid
from pathlib import Path

import pytest

from recorder.config import parse_config
from recorder.masking import Masker
from recorder.masking.catalogue import RULES
from tests.unit.masking_fakes import (
    ALNUM,
    ANTHROPIC_KEY,
    AWS_ID,
    AWS_SECRET,
    B32,
    B64,
    GITHUB_PAT,
    HEX,
    OPENAI_KEY,
    PASSWORD,
    SLACK_TOKEN,
    URLSAFE,
    j,
    jwt,
    pem,
    rnd,
)

KEY = b"k" * 32
MASKER = Masker(KEY)
ROOT = Path(__file__).resolve().parents[2]

AZURE_KEY = rnd(B64, 86) + "=="
TWILIO_HEX = rnd(HEX, 32)

# rule id -> ([(text, secret), ...] true positives, [text, ...] false positives)
CASES: dict[str, tuple[list[tuple[str, str]], list[str]]] = {
    "aws-access-key-id": (
        [(f"export AWS_ACCESS_KEY_ID={AWS_ID}", AWS_ID), (f'"AccessKeyId": "{j("ASIA", rnd(B32, 16))}"', None)],
        [j("AKIA", "IOSFODNN7", "EXAMPLE"), j("x", AWS_ID), "AKIAAAAA short", "Asia is a continent"],
    ),
    "aws-secret-access-key": (
        [(f"aws_secret_access_key = {AWS_SECRET}", AWS_SECRET), (f'"SecretAccessKey": "{AWS_SECRET}"', AWS_SECRET)],
        [f"aws_secret_access_key = {'a' * 40}", "the aws secret is stored in vault", f"aws_region = {rnd(B64, 39)}"],
    ),
    "gcp-api-key": (
        [(lambda k: (f"key={k}&q=1", k))(j("AIza", rnd(URLSAFE, 35)))],
        ["AIzawhat is this", j("AIza", rnd(URLSAFE, 20))],
    ),
    "gcp-service-account-key": (
        [(lambda p: ('{"type": "service_account", "private_key": "' + p + '"}', p))(
            pem("PRIVATE KEY", sep="\\n") + "\\n")],
        ['{"private_key_id": "abc", "client_email": "x@y.iam.gserviceaccount.com"}'],
    ),
    "azure-storage-key": (
        [(f"DefaultEndpointsProtocol=https;AccountName=acme;AccountKey={AZURE_KEY};EndpointSuffix=core.windows.net",
          AZURE_KEY), (f'AZURE_STORAGE_KEY="{AZURE_KEY}"', AZURE_KEY)],
        ["AccountKey=<your-key-here>", "storage_key = os.environ['KEY']"],
    ),
    "azure-connection-string": (
        [(lambda k: (f"Endpoint=sb://acme.servicebus.windows.net/;SharedAccessKeyName=Root;SharedAccessKey={k}", k))(
            rnd(B64, 43) + "=")],
        ["SharedAccessKey=<key>", "SharedAccessKeyName=RootManageSharedAccessKey"],
    ),
    "azure-sas-signature": (
        [(lambda s: (f"https://acme.blob.core.windows.net/c/b?sv=2022-11-02&se=2030&sp=r&sig={s}", s))(
            rnd(ALNUM, 43) + "%3D")],
        ["use &sig=SIGNATURE in the URL", "?sig=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"],
    ),
    "azure-ad-client-secret": (
        [(lambda s: (f"client_secret: {s}", s))(j(rnd(ALNUM, 3), "8", "Q~", rnd(ALNUM + "_~.-", 34)))],
        ["Q~ is not a secret", "abc8Q~short"],
    ),
    "github-pat": (
        [(f"git clone https://{GITHUB_PAT}@github.com/acme/x", GITHUB_PAT), (f"token: {GITHUB_PAT}", GITHUB_PAT)],
        ["ghp_short", j("ghp", "_", rnd(ALNUM, 36), "x_tail"), "see ghp_ prefix docs"],
    ),
    "github-fine-grained-pat": (
        [(lambda t: (f"GH_TOKEN={t}", t))(j("github_pat_", rnd(ALNUM, 22), "_", rnd(ALNUM, 59)))],
        ["github_pat_ is the fine-grained prefix", j("github_pat_", rnd(ALNUM, 30))],
    ),
    "github-oauth": ([(lambda t: (f"oauth {t}", t))(j("gho", "_", rnd(ALNUM, 36)))], ["gho_abc", "echo gho_"]),
    "github-app-token": (
        [(lambda t: (f"x-access-token:{t}@github.com", t))(j("ghs", "_", rnd(ALNUM, 36))),
         (lambda t: (t, t))(j("ghu", "_", rnd(ALNUM, 36)))],
        ["ghs_ and ghu_ prefixes", "laugh_at_this"],
    ),
    "github-refresh-token": ([(lambda t: (t, t))(j("ghr", "_", rnd(ALNUM, 76)))], ["ghr_123"]),
    "gitlab-token": (
        [(lambda t: (f"PRIVATE-TOKEN {t}", t))(j("glpat", "-", rnd(URLSAFE, 20))),
         (lambda t: (t, t))(j("GR1348941", rnd(URLSAFE, 20)))],
        ["glpat-xxxxxxxxxxxxxxxxxxxx", "glpat- tokens expire"],
    ),
    "slack-token": (
        [(f"SLACK_BOT_TOKEN={SLACK_TOKEN}", SLACK_TOKEN)],
        ["xoxb-your-token", "the xoxp- prefix is a user token"],
    ),
    "slack-webhook": (
        [(lambda p: (f"curl https://hooks.slack.com/{p}", p))(
            j("services/T", rnd(ALNUM, 8).upper(), "/B", rnd(ALNUM, 8).upper(), "/", rnd(ALNUM, 24)))],
        ["https://hooks.slack.com/services", "docs at hooks.slack.com"],
    ),
    "stripe": (
        [(lambda k: (f"stripe.api_key = '{k}'", k))(j("sk", "_live_", rnd(ALNUM, 24))),
         (lambda k: (k, k))(j("whsec", "_", rnd(ALNUM, 32)))],
        ["sk_live_xxxxxxxxxxxxxxxx", "mask_live_data"],
    ),
    "anthropic": ([(f"ANTHROPIC_API_KEY={ANTHROPIC_KEY}", ANTHROPIC_KEY)], ["sk-ant-api03-", "sk-ant-<key>"]),
    "openai": (
        [(f"OPENAI_API_KEY={OPENAI_KEY}", OPENAI_KEY),
         (lambda k: (f'"{k}"', k))(j("sk-", rnd(ALNUM, 20), "T3Blbk", "FJ", rnd(ALNUM, 20)))],
        ["sk-learn-is-a-python-library-for-ml", "task-queue-worker-process-manager-1",
         "use sk-... as your key"],
    ),
    "huggingface": (
        [(lambda t: (f"HF_TOKEN={t}", t))(j("hf", "_", rnd(ALNUM, 34)))],
        ["hf_hub_download", j("hf", "_", "a" * 34)],
    ),
    "npm": ([(lambda t: (f"//registry.npmjs.org/:_authToken={t}", t))(j("npm", "_", rnd(ALNUM, 36)))],
            ["npm_config_cache", j("npm", "_", "x" * 36)]),
    "pypi": ([(lambda t: (f"password = {t}", t))(j("pypi-", "AgEIcHlwaS5vcmc", rnd(URLSAFE, 60)))],
             ["pypi-AgE short", "pypi-server"]),
    "sendgrid": ([(lambda t: (f"SENDGRID_API_KEY='{t}'", t))(j("SG", ".", rnd(URLSAFE, 22), ".", rnd(URLSAFE, 43)))],
                 ["msg.content", "SG.short.value"]),
    "twilio-api-key": ([(lambda t: (f"sid {t}", t))(j("SK", TWILIO_HEX))], ["SK" + "0" * 32, "ASK" + TWILIO_HEX]),
    "twilio-auth-token": ([(f"TWILIO_AUTH_TOKEN={TWILIO_HEX}", TWILIO_HEX)], ["twilio_auth_token = None"]),
    "shopify": ([(lambda t: (f"X-Shopify-Access-Token: {t}", t))(j("shpat", "_", rnd(HEX, 32)))], ["shpat_abc"]),
    "digitalocean": ([(lambda t: (f"DO_TOKEN={t}", t))(j("dop", "_v1_", rnd(HEX, 64)))], ["dop_v1_"]),
    "mailgun": (
        [(lambda t: (f"api:{t}", t))(j("key", "-", rnd(HEX + "ghijklmnopqrstuvwxyz", 32))),
         (lambda t: (f"MAILGUN_API_KEY={t}", t))(j(rnd(HEX, 32), "-", rnd(HEX, 8), "-", rnd(HEX, 8)))],
        ["key-value store", "primary-key-constraint-for-the-users-table"],
    ),
    "private-key": (
        [(lambda p: (p, p))(pem("RSA PRIVATE KEY")), (lambda p: (p, p))(pem("OPENSSH PRIVATE KEY")),
         (lambda p: (p, p))(pem("EC PRIVATE KEY", sep="\\n")),
         (lambda p: (p, p))(pem("PGP PRIVATE KEY BLOCK").replace("BLOCK-----\n", "BLOCK-----\nVersion: 1\n\n", 1)),
         (lambda p: ("key:\n" + p + "\n(cut)", p))("-----BEGIN PRIVATE KEY-----\n" + rnd(B64, 64) + "\n" + rnd(B64, 30))],
        ["-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----", "-----BEGIN PUBLIC KEY-----\nMFkw\n"],
    ),
    "jwt": ([(lambda t: (f"id_token={t}", t))(jwt())], ["eyJhbGciOiJIUzI1NiJ9 alone", "eyJ.eyJ.x"]),
    "url-password": (
        [(f"DATABASE_URL=postgres://app:{PASSWORD}@db.internal:5432/app", PASSWORD),
         ("mongodb+srv://admin:hunter2@cluster0.example.net/test", "hunter2"),
         (f"HTTPS_PROXY=http://alice:{PASSWORD}@proxy:8080", PASSWORD)],
        ["postgres://app:${DB_PASSWORD}@db/app", "https://user@example.com/path", "http://example.com:8080/x",
         "git@github.com:acme/repo.git", "postgres://app:<password>@db/app"],
    ),
    "connection-string-password": (
        [(f"Server=tcp:db.example.net,1433;Database=app;User ID=svc;Password={PASSWORD};Encrypt=True", PASSWORD)],
        ["Server=db;Database=app;Password=${DB_PASS};", "password = input('Password: ')"],
    ),
    "authorization-header": (
        [(lambda t: (f'curl -H "Authorization: Bearer {t}" https://api.example.com', t))(rnd(URLSAFE, 40)),
         (lambda t: (f"x-api-key: {t}", t))(rnd(ALNUM, 32)),
         (lambda t: (f"Authorization: Basic {t}", t))(base64.b64encode(f"bob:{PASSWORD}".encode()).decode())],
        ['"Authorization: Bearer $TOKEN"', "headers['Authorization'] = auth_header",
         "the authorization: header carries the token"],
    ),
    "bearer-token": (
        [(lambda t: (f"use bearer {t} for the call", t))(rnd(ALNUM, 30))],
        ["the bearer of bad news", "Bearer <token>", "bearer self.access_token_value"],
    ),
    "generic-secret": (
        [(f'password = "{PASSWORD}"', PASSWORD), (lambda v: (f"API_KEY={v}", v))(rnd(ALNUM, 32)),
         (lambda v: (f'{{"client_secret": "{v}"}}', v))(rnd(ALNUM, 24)),
         (lambda v: (f"db_password: {v}", v))(rnd(ALNUM, 16))],
        ["password = get_password()", "token = self.token_store.current", "api_key: str = None",
         "max_tokens: 4096", 'secret = "changeme"', "key = cache_key", 'password: "********"',
         "SECRET_KEY = os.environ['SECRET_KEY']", "token_count=123456789"],
    ),
}


def test_every_rule_has_cases():
    ids = [r["id"] for r in RULES]
    assert sorted(CASES) == sorted(ids)
    for rule_id, (tps, fps) in CASES.items():
        assert tps and fps, rule_id


TP = [(rid, text, secret) for rid, (tps, _) in CASES.items() for text, secret in tps]
FP = [(rid, text) for rid, (_, fps) in CASES.items() for text in fps]


@pytest.mark.parametrize("rule_id, text, secret", TP, ids=[f"{t[0]}-{i}" for i, t in enumerate(TP)])
def test_true_positive(rule_id, text, secret):
    out = MASKER.mask_text(text)
    tags = re.findall(r"\[MASKED:([a-z0-9-]+):([0-9a-f]{8})\]", out)
    assert tags, f"nothing masked in {text!r}"
    if secret is not None:
        assert secret not in out
        digest = hmac.new(KEY, secret.encode(), hashlib.sha256).hexdigest()[:8]
        assert (rule_id, digest) in tags, (rule_id, out)
    else:
        assert rule_id in {t[0] for t in tags}


@pytest.mark.parametrize("rule_id, text", FP, ids=[f"{t[0]}-{i}" for i, t in enumerate(FP)])
def test_false_positive(rule_id, text):
    assert MASKER.mask_text(text) == text


def test_same_secret_same_tag_other_key_other_tag():
    a = MASKER.mask_text(f"x {GITHUB_PAT} y {GITHUB_PAT}")
    tags = re.findall(r"\[MASKED:[^\]]+\]", a)
    assert len(tags) == 2 and tags[0] == tags[1]
    assert Masker(b"z" * 32).mask_text(GITHUB_PAT) != tags[0]


def test_remasking_keeps_tags():
    once = MASKER.mask_text(f'password = "{PASSWORD}" token: {GITHUB_PAT} [credential:openai]')
    assert MASKER.mask_text(once) == once


def test_prefilter_selects_only_rules_with_keywords():
    ids = {r.id for r in MASKER.candidates(b"nothing to see here")}
    assert ids == set()
    ids = {r.id for r in MASKER.candidates(f"token {GITHUB_PAT}".encode())}
    assert "github-pat" in ids and "aws-access-key-id" not in ids


def _config(text: str):
    return parse_config('[storage]\ndir = "s"\n[identity]\nmode = "none"\n' + text, source="gw.toml",
                        base_dir=Path("/cfg")).masking


def test_custom_rules_and_allowlist_from_config():
    acme = j("acme", "_", rnd(ALNUM, 32))
    allowed = j("acme", "_", "0" * 32)
    masking = _config(
        "[masking]\nallowlist = [\"%s\", \"%s\"]\n"
        "[[masking.rules]]\nid = \"acme-token\"\nregex = \"acme_[A-Za-z0-9]{32}\"\nkeywords = [\"acme_\"]\n"
        "[[masking.rules]]\nid = \"lookaround\"\nregex = \"(?<=corp-)[0-9]{12}\"\nentropy = 2.0\n"
        "allowlist = [\"^1234\"]\n" % (allowed, GITHUB_PAT))
    assert masking.rules[0].keywords == ("acme_",)
    m = Masker.from_config(masking, KEY)
    out = m.mask_text(f"{acme} {allowed} {GITHUB_PAT} corp-987650432109 corp-123456789012")
    assert acme not in out and "[MASKED:acme-token:" in out
    assert allowed in out and GITHUB_PAT in out  # exact allowlist
    assert "[MASKED:lookaround:" in out and "corp-123456789012" in out  # rule allowlist
    off = Masker.from_config(_config("[masking]\nbuiltin = false\n"), KEY)
    assert off.mask_text(GITHUB_PAT) == GITHUB_PAT


def test_bad_custom_rule_keys_are_config_errors():
    from recorder.config import ConfigError

    with pytest.raises(ConfigError, match=r"masking.rules\[0\].entropy"):
        _config('[[masking.rules]]\nid = "a"\nregex = "a+"\nentropy = 9\n')
    with pytest.raises(ConfigError, match=r"masking.rules\[0\].allowlist\[0\]"):
        _config('[[masking.rules]]\nid = "a"\nregex = "a+"\nallowlist = ["("]\n')


# -- a corpus that must stay unmasked ---------------------------------------------------------

def _clean_corpus() -> list[str]:
    texts = []
    for p in ("recorder/store/format_v1.py", "recorder/forensics/reader.py", "recorder/store/writer.py", "recorder/store/ids.py",
              "docs/format.md", "README.md"):
        texts.append((ROOT / p).read_text())
    texts.append("\n".join(str(uuid.UUID(int=i * 7919 + 12345678901234567890)) for i in range(50)))
    texts.append("\n".join(hashlib.sha1(str(i).encode()).hexdigest() for i in range(50)))  # commit hashes
    texts.append("\n".join(hashlib.sha256(str(i).encode()).hexdigest() for i in range(20)))
    texts.append(base64.b64encode(bytes(range(256)) * 8).decode())  # a base64 blob
    texts.append(base64.b64encode(hashlib.sha512(b"x").digest() * 20).decode())
    texts.append("The quick brown fox jumps over the lazy dog. Tokens are counted per request; the "
                 "secret to a good API is a clear key naming scheme, and passwords belong in a vault.")
    texts.append("def get_token(self, key: str) -> str:\n    return self.tokens[key]\n"
                 "password_field = form.password\nsecret_name = 'db-password'\n")
    texts.append('{"model": "gpt-4o", "max_tokens": 1024, "messages": [{"role": "user", "content": "hi"}],'
                 ' "usage": {"input_tokens": 12, "output_tokens": 34, "cache_read_input_tokens": 0}}')
    return texts


@pytest.mark.parametrize("i", range(len(_clean_corpus())))
def test_clean_corpus_stays_unmasked(i):
    text = _clean_corpus()[i]
    out = MASKER.mask_text(text)
    if out != text:
        masked = re.findall(r"\[MASKED:[^\]]+\]", out)
        pytest.fail(f"masked in clean text: {masked[:5]}")


def test_docs_catalogue_table_is_generated_from_the_data():
    from recorder.masking.catalogue import catalogue_markdown

    doc = (ROOT / "docs" / "masking.md").read_text()
    m = re.search(r"<!-- catalogue:begin -->\n(.*?)<!-- catalogue:end -->", doc, re.S)
    assert m, "docs/masking.md lost its catalogue markers"
    assert m.group(1) == catalogue_markdown(), "regenerate the table: catalogue_markdown()"
