"""The built-in secret rules, kept as data.

One entry per rule:
- `id`: names the rule in mask tags, `[MASKED:<id>:<8 hex>]`.
- `group`: the family it belongs to (docs/masking.md groups the table by it).
- `regex`: a pattern in the common subset of RE2, Python `re` and the `regex` module: no
  lookarounds, no backreferences (RE2 scans, `regex` finds partial matches while streaming).
  What is masked is the first capturing group that took part in the match, else the match.
- `boundary`: optional character class (without brackets); the secret is not masked when the
  character before or after it is in the class (it is part of a longer word). This replaces
  the lookarounds RE2 lacks.
- `require`: optional regex that must occur in the secret (e.g. a digit).
- `keywords`: lowercase literals; one of them occurs in every match. The prefilter runs a
  rule only when one of its keywords is in the text. A keyword must sit at or before the
  start of the secret: the streaming hold-back relies on it (set `anchored: False` when it
  cannot, and the rule is then checked for a partial match on every streamed piece).
- `long`: matches can be longer than the 2 KiB a stream's tail is checked over (PEM
  blocks, JWTs): the whole held text is checked for this rule's partial match.
- `entropy`: optional minimum Shannon entropy (bits per character) of the secret.
- `allowlist`: optional regexes; a secret that one of them finds is not masked.
- `names`: the secret follows a name (`api_key = …`); recorder/masking/names.py decides from
  the name whether it holds a secret (`max_tokens`, `prompt_cache_key`, `key_id` do not), and
  for a weak name (`key`) whether the value looks like a token rather than an id.
- `what`: one line for the catalogue table.

Order matters only for ties: two rules that match the same span are reported under the
first. Keep the narrow rules (a provider's prefix) before the broad ones (generic).
"""
from __future__ import annotations

from recorder.auth.credentials import header_name_keywords, header_name_pattern

# Placeholders that turn up where a real value would go ("${TOKEN}", "<password>", "xxxx").
PLACEHOLDERS = r"^(?:\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|\{\{.*\}\}|<[^>]*>|%\(?\w*\)?s|\*+|x+|X+|\.\.\.|[A-Z][A-Z_]*|null|none|None|true|false)$"
# Code, not a value: a dotted attribute path or an identifier (snake_case, camelCase, CONSTANT_CASE).
CODE_REFERENCE = (r"^(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)+"  # dotted.attribute.path
                  r"|_*[a-z]+(?:[_-][a-z0-9]+)*"  # snake_case / kebab-case words
                  r"|_*[A-Za-z][a-z]+(?:[A-Z][a-z]+)*"  # camelCase, PascalCase, a class name
                  r"|_*[A-Z]+(?:_[A-Z0-9]+)+)$")  # CONSTANT_CASE

TOKEN = "A-Za-z0-9_"  # a token next to one of these is part of a longer word: not masked (a "-" before it is not: `x-ghp_…`)
ALNUM = "A-Za-z0-9"
# `name = value`, `"name": "value"`, `name => value`; the quotes may carry backslashes (one or two
# levels of escaping: a .env file inside a JSON string inside a JSON body reads API_KEY=\\"...\\")
_ASSIGN = r"""(?:\\*["'])?[ \t]*(?:=>|:=|[:=])[ \t]*(?:\\*["'])?"""  # spaces, not a line break: `KEY=` then a new line is empty

RULES: tuple[dict, ...] = (
    # -- cloud --------------------------------------------------------------------------
    {
        "id": "aws-access-key-id", "group": "Cloud",
        "what": "AWS access key id (AKIA, ASIA, ABIA, ACCA + 16)",
        "regex": r"((?:AKIA|ASIA|ABIA|ACCA)[A-Z2-7]{16})",
        "keywords": ("akia", "asia", "abia", "acca"), "boundary": ALNUM,
        "allowlist": (r"EXAMPLE$",),
    },
    {
        "id": "aws-secret-access-key", "group": "Cloud",
        "what": "AWS secret access key (40 chars) after an aws… or SecretAccessKey name",
        "regex": r"(?i)(?:aws[\w.\-]{0,40}?|secret_?access_?key)" + _ASSIGN + r"([A-Za-z0-9/+]{40})",
        "keywords": ("aws", "secretaccesskey", "secret_access_key"), "boundary": "A-Za-z0-9/+",
        "entropy": 4.0, "allowlist": (r"EXAMPLEKEY$",),
    },
    {
        "id": "gcp-api-key", "group": "Cloud",
        "what": "Google Cloud API key (AIza + 35)",
        "regex": r"(AIza[0-9A-Za-z_\-]{35})",
        "keywords": ("aiza",), "boundary": TOKEN,
    },
    {
        "id": "gcp-service-account-key", "group": "Cloud",
        "what": 'GCP service-account JSON "private_key" (the PEM block, escaped or not)',
        "regex": r'"private_key\\*"\s*:\s*\\*"(-----BEGIN[A-Z ]{0,30}PRIVATE KEY-----[\s\S]*?-----END[A-Z ]{0,30}PRIVATE KEY-----(?:\\+n|\n)*)',
        "keywords": ('"private_key',), "long": True,
    },
    {
        "id": "azure-storage-key", "group": "Cloud",
        "what": "Azure storage account key (88 chars) in AccountKey= or after an azure…/storage…key name",
        "regex": r"(?i)(?:accountkey=|(?:azure|storage)[\w.\-]{0,30}?key" + _ASSIGN + r")([A-Za-z0-9+/]{86}==)",
        "keywords": ("accountkey=", "azure", "storage"),
    },
    {
        "id": "azure-connection-string", "group": "Cloud",
        "what": "Azure SharedAccessKey= in Service Bus / Event Hubs / IoT Hub connection strings",
        "regex": r"(?i)sharedaccesskey=([A-Za-z0-9+/]{42,44}={0,2})",
        "keywords": ("sharedaccesskey=",),
    },
    {
        "id": "azure-sas-signature", "group": "Cloud",
        "what": "Azure SAS token signature (sig= in a SAS URL or connection string)",
        "regex": r"(?i)[?&;]sig=([A-Za-z0-9%+/]{40,}(?:%3D|=){0,2})",
        "keywords": ("sig=",), "entropy": 3.5,
    },
    {
        "id": "azure-ad-client-secret", "group": "Cloud",
        "what": "Microsoft Entra ID (Azure AD) client secret (xxx8Q~…)",
        "regex": r"([A-Za-z0-9_~.]{3}[0-9]Q~[A-Za-z0-9_~.\-]{31,34})",
        "keywords": ("q~",), "boundary": r"A-Za-z0-9_~.\-", "anchored": False,
    },
    # -- code hosting -------------------------------------------------------------------
    {
        "id": "github-pat", "group": "Code hosting",
        "what": "GitHub personal access token (ghp_)",
        "regex": r"(ghp_[A-Za-z0-9]{36})", "keywords": ("ghp_",), "boundary": TOKEN,
    },
    {
        "id": "github-fine-grained-pat", "group": "Code hosting",
        "what": "GitHub fine-grained personal access token (github_pat_)",
        "regex": r"(github_pat_[A-Za-z0-9_]{82})", "keywords": ("github_pat_",), "boundary": TOKEN,
    },
    {
        "id": "github-oauth", "group": "Code hosting",
        "what": "GitHub OAuth access token (gho_)",
        "regex": r"(gho_[A-Za-z0-9]{36})", "keywords": ("gho_",), "boundary": TOKEN,
    },
    {
        "id": "github-app-token", "group": "Code hosting",
        "what": "GitHub App user-to-server / server-to-server token (ghu_, ghs_)",
        "regex": r"(gh[us]_[A-Za-z0-9]{36})", "keywords": ("ghu_", "ghs_"), "boundary": TOKEN,
    },
    {
        "id": "github-refresh-token", "group": "Code hosting",
        "what": "GitHub refresh token (ghr_)",
        "regex": r"(ghr_[A-Za-z0-9]{36,76})", "keywords": ("ghr_",), "boundary": TOKEN,
    },
    {
        "id": "gitlab-token", "group": "Code hosting",
        "what": "GitLab tokens (glpat-, gldt-, glrt-, glptt-, glcbt-, glsoat-, glft-, glimt-, gloas-, glagent-, GR1348941)",
        "regex": r"((?:glpat|gldt|glrt|glptt|glcbt|glsoat|glft|glimt|gloas|glagent)-[A-Za-z0-9_\-]{20,64}|GR1348941[A-Za-z0-9_\-]{20,30})",
        "keywords": ("glpat-", "gldt-", "glrt-", "glptt-", "glcbt-", "glsoat-", "glft-", "glimt-", "gloas-",
                     "glagent-", "gr1348941"),
        "boundary": TOKEN, "entropy": 3.0,
    },
    # -- services -------------------------------------------------------------------------
    {
        "id": "slack-token", "group": "Services",
        "what": "Slack bot/user/app/config tokens (xoxb-, xoxp-, xoxa-, xoxr-, xoxs-, xoxe-, xapp-)",
        "regex": r"(xox[abeoprs](?:\.xox[a-z])?-[A-Za-z0-9\-]{10,}|xapp-[0-9]-[A-Za-z0-9\-]{20,})",
        "keywords": ("xox", "xapp-"), "boundary": r"A-Za-z0-9\-", "require": "[0-9]", "entropy": 3.0,
    },
    {
        "id": "slack-webhook", "group": "Services",
        "what": "Slack incoming webhook / workflow URL (the path after hooks.slack.com)",
        "regex": r"hooks\.slack\.com/((?:services|workflows|triggers)/[A-Za-z0-9+/_\-]{20,})",
        "keywords": ("hooks.slack.com",),
    },
    {
        "id": "stripe", "group": "Services",
        "what": "Stripe secret / restricted keys (sk_live_, rk_live_, sk_test_…) and webhook secrets (whsec_)",
        "regex": r"((?:sk|rk)_(?:live|test|prod)_[A-Za-z0-9]{10,}|whsec_[A-Za-z0-9+/=]{24,})",
        "keywords": ("sk_live_", "sk_test_", "sk_prod_", "rk_live_", "rk_test_", "rk_prod_", "whsec_"),
        "boundary": ALNUM, "entropy": 3.0,
    },
    {
        "id": "anthropic", "group": "Services",
        "what": "Anthropic API and admin keys (sk-ant-)",
        "regex": r"(sk-ant-[a-z]{2,10}[0-9]{0,3}-[A-Za-z0-9_\-]{20,})",
        "keywords": ("sk-ant-",), "boundary": TOKEN,
    },
    {
        "id": "openai", "group": "Services",
        "what": "OpenAI API keys (sk-, sk-proj-, sk-svcacct-, sk-admin-; and sk- keys of compatible APIs)",
        "regex": r"(sk-[A-Za-z0-9_\-]{20,})",
        "keywords": ("sk-",), "boundary": TOKEN, "require": r"[0-9]", "entropy": 3.5,
    },
    {
        "id": "huggingface", "group": "Services",
        "what": "Hugging Face user and org tokens (hf_, api_org_)",
        "regex": r"((?:hf_|api_org_)[A-Za-z0-9]{34})",
        "keywords": ("hf_", "api_org_"), "boundary": TOKEN, "entropy": 3.5,
    },
    {
        "id": "npm", "group": "Services",
        "what": "npm access token (npm_)",
        "regex": r"(npm_[A-Za-z0-9]{36})", "keywords": ("npm_",), "boundary": TOKEN, "entropy": 3.5,
    },
    {
        "id": "pypi", "group": "Services",
        "what": "PyPI / TestPyPI upload token (pypi-Ag…)",
        "regex": r"(pypi-Ag[A-Za-z0-9_\-]{50,})", "keywords": ("pypi-ag",), "boundary": TOKEN,
    },
    {
        "id": "sendgrid", "group": "Services",
        "what": "SendGrid API key (SG.xxx.yyy)",
        "regex": r"(SG\.[A-Za-z0-9_\-]{22}\.[A-Za-z0-9_\-]{43})", "keywords": ("sg.",), "boundary": TOKEN,
    },
    {
        "id": "twilio-api-key", "group": "Services",
        "what": "Twilio API key SID (SK + 32 hex)",
        "regex": r"(SK[0-9a-f]{32})", "keywords": ("sk",), "boundary": ALNUM, "entropy": 3.0,
    },
    {
        "id": "twilio-auth-token", "group": "Services",
        "what": "Twilio auth token (32 hex) after a twilio… name",
        "regex": r"(?i)twilio[\w.\-]{0,30}?" + _ASSIGN + r"([0-9a-f]{32})",
        "keywords": ("twilio",), "boundary": ALNUM, "entropy": 3.0,
    },
    {
        "id": "shopify", "group": "Services",
        "what": "Shopify access tokens and shared secrets (shpat_, shpca_, shppa_, shpss_)",
        "regex": r"(shp(?:at|ca|pa|ss)_[a-fA-F0-9]{32})",
        "keywords": ("shpat_", "shpca_", "shppa_", "shpss_"), "boundary": TOKEN,
    },
    {
        "id": "digitalocean", "group": "Services",
        "what": "DigitalOcean personal, OAuth and refresh tokens (dop_v1_, doo_v1_, dor_v1_)",
        "regex": r"(do[opr]_v1_[a-f0-9]{64})", "keywords": ("dop_v1_", "doo_v1_", "dor_v1_"), "boundary": TOKEN,
    },
    {
        "id": "mailgun", "group": "Services",
        "what": "Mailgun private API key (key-…), or a mailgun… name followed by its key",
        "regex": r"(?i)(key-[0-9a-z]{32})|mailgun[\w.\-]{0,30}?" + _ASSIGN + r"([0-9a-f]{32}-[0-9a-f]{8}-[0-9a-f]{8})",
        "keywords": ("key-", "mailgun"), "boundary": TOKEN, "entropy": 3.2,
    },
    # -- structural -------------------------------------------------------------------------
    {
        "id": "private-key", "group": "Structural",
        "what": "PEM private keys of every kind (RSA, EC, DSA, OPENSSH, ENCRYPTED, PGP…), multi-line, "
        "also with \\n escapes (one or more levels); an unterminated block is masked to its end",
        "regex": r"(-----BEGIN[A-Z0-9 _\-]{0,40}PRIVATE KEY(?: BLOCK)?-----"
        # base64 lines, headers (Proc-Type: 4,ENCRYPTED), escaped breaks; a "-" only inside a word,
        # so the body stops at "-----END"
        r"(?:[A-Za-z0-9+/=:, \t\r\n]|\\+[rn]|-[A-Za-z0-9])*"
        r"(?:-----END[A-Z0-9 _\-]{0,40}PRIVATE KEY(?: BLOCK)?-----)?)",
        "keywords": ("-----begin",), "long": True,
    },
    {
        "id": "jwt", "group": "Structural",
        "what": "JSON Web Tokens (eyJ….eyJ….signature)",
        "regex": r"(eyJ[A-Za-z0-9_\-]{8,}\.eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]*)",
        "keywords": ("eyj",), "boundary": TOKEN, "long": True,
    },
    {
        "id": "url-password", "group": "Structural",
        "what": "the password in scheme://user:password@host URLs (database connection strings, proxies, git remotes)",
        "regex": r"(?i)[a-z][a-z0-9+.\-]{0,20}://[^\s:@/?#\"'<>\[\]]*:([^\s@/?#\"'<>\[\]]+)@",
        "keywords": ("://",),
        "allowlist": (PLACEHOLDERS,),
    },
    {
        "id": "connection-string-password", "group": "Structural",
        "what": "Password= / Pwd= in key=value; connection strings (ADO.NET, ODBC, JDBC properties)",
        "regex": r"(?i)(?:server|host|data source|user id|uid|user|database|initial catalog|dsn|driver)\s*=[^;\n]*;"
        r"[^\"'\n]*?(?:password|pwd)\s*=\s*([^;\"'\s]+)",
        "keywords": ("password", "pwd"),
        "allowlist": (PLACEHOLDERS,),
    },
    {
        "id": "authorization-header", "group": "Structural",
        "what": "the value of Authorization / Proxy-Authorization / X-Api-Key style headers written in text (curl -H, logs, code)",
        "regex": r"(?i)" + header_name_pattern()
        + r"""(?:\\*["'])?[ \t]*[:=][ \t]*(?:\\*["'])?(?:(?:bearer|basic|token|digest|negotiate|apikey|sso-key)[ \t]+)?([A-Za-z0-9._~+/=\-:]{8,})""",
        "keywords": header_name_keywords(),
        "entropy": 2.5, "allowlist": (PLACEHOLDERS, CODE_REFERENCE),
    },
    {
        "id": "bearer-token", "group": "Structural",
        "what": "a Bearer token anywhere in text",
        "regex": r"(?i)bearer\s+([A-Za-z0-9._~+/\-]{16,}=*)",
        "keywords": ("bearer",), "entropy": 3.0, "allowlist": (PLACEHOLDERS, CODE_REFERENCE),
    },
    # -- generic ----------------------------------------------------------------------------
    {
        "id": "generic-secret", "group": "Generic",
        "what": "key / secret / password / token / credential assignments (=, :, =>) with a high-entropy value",
        "regex": r"(?i)(?:key|secret|pass(?:w(?:or)?d)?|pwd|token|credentials?)[\w.\-]{0,20}?" + _ASSIGN
        + r"([A-Za-z0-9+/=_\-.~!@#%^&*?]{8,})",
        "keywords": ("key", "secret", "pass", "pwd", "token", "credential"),
        "entropy": 3.0, "names": True,
        "allowlist": (PLACEHOLDERS, CODE_REFERENCE, r"^[0-9.]+$"),
    },
)


def catalogue_markdown() -> str:
    """The catalogue as the table docs/masking.md shows (a test keeps the two in step)."""
    rows = ["| Group | Rule id | What it finds | Keywords | Entropy |", "|---|---|---|---|---|"]
    for r in RULES:
        kws = ", ".join(f"`{k}`" for k in r["keywords"])
        what = r["what"].replace("|", "\\|")
        rows.append(f"| {r['group']} | `{r['id']}` | {what} | {kws} | {r.get('entropy', '') or ''} |")
    return "\n".join(rows) + "\n"
