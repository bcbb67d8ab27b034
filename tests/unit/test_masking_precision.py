"""Precision: ids, hashes, counts, cache keys and code stay readable (case 8 of issue 18), and
for each exemption a real secret of the same shape is still masked."""
from __future__ import annotations

import base64
import hashlib
import json
import uuid

import pytest

from recorder.masking import Masker
from tests.unit.masking_fakes import ALNUM, B64, HEX, rnd

MASKER = Masker(b"p" * 32)
UUID = str(uuid.UUID(int=0x0199A3C41234_7ABC_8DEF_0123456789AB))
SHA256 = hashlib.sha256(b"x").hexdigest()
TOKEN = rnd(ALNUM, 40)
IMAGE = base64.b64encode(bytes(range(256)) * 40).decode()

# (kept readable, a real secret of a similar shape that is masked)
PAIRS = [
    # Codex's prompt_cache_key is an id; an api key shaped like a UUID (Heroku's are) is not.
    (f'"prompt_cache_key": "{UUID}"', f'"api_key": "{UUID}"'),
    (f'{{"idempotency_key": "{TOKEN}"}}', f'{{"secret_key": "{TOKEN}"}}'),
    (f'"cache_key": "{SHA256}"', f'"signing_key": "{SHA256}"'),
    (f'"key_id": "{TOKEN}"', f'"key": "{TOKEN}"'),
    (f"request_id={TOKEN}", f"access_token={TOKEN}"),
    (f'"next_page_token": "{TOKEN}"', f'"refresh_token": "{TOKEN}"'),
    ('"max_tokens": 40960000', f'"auth_token": "{TOKEN}"'),
    ('"tokenizer": "cl100k_base_v2"', f'"token": "{TOKEN}"'),
    (f'"public_key": "ssh-ed25519 {rnd(B64, 68)}"', f'"private_key_pem": "{rnd(B64, 68)}"'),
    (f'"key": "{UUID}"', f'"key": "{TOKEN}"'),  # a weak name: an id is kept, a token is not
    (f'"key": "{SHA256}"', f'"key": "{rnd(ALNUM, 24)}"'),
    ('"key": "uploads/2024/06/report.pdf"', f'"key": "{rnd(B64, 30)}/{rnd(B64, 20)}"'),
    (f'"secret_name": "prod-db-{rnd(HEX, 12)}"', f'"secret": "prod-db-{rnd(ALNUM, 20)}"'),
    (f"password_reset_url=https://example.com/r/{TOKEN}", f"password={TOKEN}"),
    ('token = get_token(self.session)', f'token = "{TOKEN}"'),
    ("api_key = os.environ['OPENAI_API_KEY']", f"api_key = '{TOKEN}'"),
    ("secret = settings.SECRET_KEY", f"secret = '{TOKEN}'"),
    (f'"token_count": 123456789, "etag": "W/\\"{SHA256}\\""', f'"csrf_token": "{TOKEN}"'),
    (f'{{"type": "base64", "media_type": "image/png", "data": "{IMAGE}"}}',
     f'{{"type": "base64", "data": "{base64.b64encode(("API_KEY=" + TOKEN).encode()).decode()}"}}'),
]


@pytest.mark.parametrize("kept, masked", PAIRS, ids=[str(i) for i in range(len(PAIRS))])
def test_exemption_and_its_counterpart(kept, masked):
    assert MASKER.mask_text(kept) == kept
    assert "[MASKED:" in MASKER.mask_text(masked), masked


def test_agent_bodies_keep_their_ids_readable():
    # The shapes of Codex, Claude Code and SDK requests and replies: every id and hash as it was.
    codex = {"model": "gpt-5-codex", "instructions": "You are Codex.", "prompt_cache_key": UUID,
             "input": [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "fix the test"}]}],
             "include": ["reasoning.encrypted_content"], "store": False, "stream": True,
             "previous_response_id": "resp_" + rnd(HEX, 48)}
    claude = {"model": "claude-sonnet-4-5", "max_tokens": 32000, "metadata": {
        "user_id": f"user_{rnd(HEX, 64)}_account_{uuid.uuid4()}_session_{uuid.uuid4()}"},
        "messages": [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_01" + rnd(ALNUM, 22),
                                                 "content": f"commit {hashlib.sha1(b'c').hexdigest()}"}]}]}
    reply = {"id": "msg_01" + rnd(ALNUM, 22), "usage": {"input_tokens": 12, "cache_read_input_tokens": 4096,
                                                       "output_tokens": 512}, "stop_reason": "end_turn"}
    for doc in (codex, claude, reply):
        body = json.dumps(doc).encode()
        assert MASKER.mask_body(body, "application/json") == body
