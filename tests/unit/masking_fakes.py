"""Fake secrets for the masking tests, built at run time.

Nothing here is a literal credential: each value is a provider prefix joined to random
characters from a fixed seed, so the repository holds nothing a scanner would flag.
"""
from __future__ import annotations

import base64
import json
import random
import string

_rng = random.Random(20261121)
ALNUM = string.ascii_letters + string.digits
HEX = "0123456789abcdef"
B32 = "ABCDEFGHIJKLMNOPQRSTUVWXYZ234567"
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "_-"


def rnd(alphabet: str, n: int) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def j(*parts: str) -> str:
    """Concatenate: keeps prefix and body apart in the source."""
    return "".join(parts)


def pem(kind: str = "RSA PRIVATE KEY", lines: int = 6, sep: str = "\n") -> str:
    body = sep.join(rnd(B64, 64) for _ in range(lines))
    return j("-----BEGIN ", kind, "-----", sep, body, sep, "-----END ", kind, "-----")


def jwt() -> str:
    def seg(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()

    return j(seg({"alg": "HS256", "typ": "JWT"}), ".", seg({"sub": rnd(ALNUM, 12), "iat": 1700000000}), ".",
             rnd(URLSAFE, 43))


# One value per family, reused across the tests (stable within a run).
GITHUB_PAT = j("ghp", "_", rnd(ALNUM, 36))
AWS_ID = j("AKIA", rnd(B32, 16))
AWS_SECRET = rnd(B64, 40)
OPENAI_KEY = j("sk-", "proj-", rnd(URLSAFE, 40), "9", rnd(ALNUM, 8))
ANTHROPIC_KEY = j("sk-", "ant-", "api03-", rnd(URLSAFE, 93), "AA")
SLACK_TOKEN = j("xox", "b-", rnd("0123456789", 12), "-", rnd("0123456789", 13), "-", rnd(ALNUM, 24))
PASSWORD = j("Tr0ub4dor", "&", rnd(ALNUM, 6))
