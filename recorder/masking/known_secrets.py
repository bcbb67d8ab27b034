"""Known secrets: the gateway's own upstream credentials and signing material.

They are masked wherever they appear, whatever the rules say, in three forms: as they
are, URL-encoded, and base64 (standard and URL-safe). A base64 encoding of a secret
depends on where it sits in the encoded data (offset 0, 1 or 2 of a 3-byte group), so
each alignment contributes the part of its encoding that only the secret determines.
Every form is tagged with the HMAC of the secret itself, so all forms share one tag.
"""
from __future__ import annotations

import base64
import urllib.parse

from recorder.masking.alphabet import Outside

MIN_LENGTH = 8  # shorter values would mask ordinary words; a credential is never this short
MIN_FORM = 12  # a base64 core shorter than this says too little to be worth masking


def encoded_forms(secret: bytes) -> set[bytes]:
    forms = {secret}
    text = secret.decode("utf-8", "surrogateescape")
    for quoted in (urllib.parse.quote(text, safe=""), urllib.parse.quote_plus(text),
                   urllib.parse.quote(text, safe="/:")):
        forms.add(quoted.encode("ascii"))
    for k in (0, 1, 2):
        padded = b"\0" * k + secret
        whole = (len(padded) // 3) * 4  # characters that no byte after the secret changes
        for enc in (base64.b64encode(padded), base64.urlsafe_b64encode(padded)):
            core = enc[4 if k else 0: whole]
            if len(core) >= MIN_FORM:
                forms.add(core)
    return {f for f in forms if len(f) >= MIN_FORM or f == secret}


class KnownSecrets:
    def __init__(self, secrets=()):
        self._original: dict[bytes, bytes] = {}
        for s in secrets:
            raw = s.encode("utf-8") if isinstance(s, str) else bytes(s)
            raw = raw.strip()
            if len(raw) < MIN_LENGTH:
                continue
            for form in encoded_forms(raw):
                self._original.setdefault(form, raw)
        # longest first: a form that contains another wins the overlap
        self.forms = sorted(self._original, key=len, reverse=True)
        self._prefixes: dict[bytes, int] = {}
        for f in self.forms:
            for i in range(1, len(f)):
                self._prefixes[f[:i]] = i
        self.max_len = max((len(f) for f in self.forms), default=0)
        self._outside = Outside(frozenset(b for f in self.forms for b in f))

    def __bool__(self) -> bool:
        return bool(self.forms)

    def original(self, form: bytes) -> bytes:
        return self._original.get(form, form)

    def find(self, data: bytes, out: list, masker) -> None:
        if not self.forms:
            return
        from recorder.masking.engine import KNOWN_RULE_ID, Span

        for form in self.forms:
            i = data.find(form)
            while i >= 0:
                out.append(Span(i, i + len(form), KNOWN_RULE_ID, form))
                i = data.find(form, i + 1)

    def partial_start(self, data: bytes) -> int:
        """Start of the longest suffix of data that is a proper prefix of a known form."""
        n = len(data)
        if not self.forms:
            return n
        # such a suffix holds only bytes that some form holds: it starts after the last other byte
        lo = self._outside.start(data, max(0, n - self.max_len + 1))
        for length in range(n - lo, 0, -1):
            if data[n - length:] in self._prefixes:
                return n - length
        return n
