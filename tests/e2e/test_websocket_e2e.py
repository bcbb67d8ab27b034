"""WebSocket through a real gateway: a real client (wsproto) in a CONNECT tunnel, a real TLS
WebSocket upstream (tests/support/ws_upstream.py) whose own log is the ground truth.

- both directions, text and binary, recorded in order after the upgrade's records;
- the upgrade gets identity, policy and the credential swap like any request;
- a secret split across frames and across messages is masked in the record;
- a client message that cannot be recorded (a full disk) is not forwarded, and the WebSocket
  is closed with code 1013;
- the session verifies.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess

import pytest

from tests.support.artifacts import Artifacts, header, store_bytes
from tests.support.disk import fill, small_tmpfs
from tests.support.gateway import WIRETRAIL
from tests.support.idp import AUDIENCE, ISSUER, LocalIdP
from tests.support.ws_client import WsClient, WsRefused
from tests.support.ws_upstream import FakeWsUpstream

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(120)]

UPSTREAM_KEY = "sk-" + "wsupstream" + hashlib.sha256(b"wiretrail-ws-upstream").hexdigest()[:32]
CLIENT_KEY = "sk-" + "clientown" + hashlib.sha256(b"wiretrail-ws-client").hexdigest()[:32]
# A secret the built-in rules know (an OpenAI project key), sent in two pieces.
SPLIT_SECRET = "sk-proj-" + hashlib.sha256(b"split-secret").hexdigest()[:40] + "T3BlbkFJ" + "a" * 20


@pytest.fixture
def idp():
    with LocalIdP() as server:
        yield server


@pytest.fixture
def ws_upstream(test_ca):
    up = FakeWsUpstream(test_ca).start()
    yield up
    up.stop()


def ws_config(idp, **policy) -> dict:
    return {
        "identity": {"mode": "jwt", "issuer": ISSUER, "audience": AUDIENCE, "jwks_url": idp.jwks_url},
        "policy": {"unregistered": "deny", **policy},
    }


def ws_connection(ws_upstream, key_file, inject: str = "bearer") -> str:
    credential = f'"file:{key_file}"' if inject != "none" else '"none"'
    return f"""
[[connections]]
name = "fake-ws"
hosts = ["127.0.0.1"]
ports = [{ws_upstream.port}]
credential = {credential}
inject = "{inject}"
allow_groups = ["engineering"]
"""


@pytest.fixture
def key_file(tmp_path):
    path = tmp_path / "upstream.key"
    path.write_text(UPSTREAM_KEY + "\n")
    return path


@pytest.fixture
def ws_gateway(start_gateway, idp, ws_upstream, key_file):
    return start_gateway(config=ws_config(idp), extra_toml=ws_connection(ws_upstream, key_file))


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def ws_records(art: Artifacts, flow_id: str) -> list[dict]:
    return [r for r in art.records if r.get("flow") == flow_id]


def body_bytes(rec: dict) -> bytes:
    body = rec["body"]
    return body["text"].encode() if "text" in body else base64.b64decode(body["b64"])


def the_ws_flow(art: Artifacts) -> list[dict]:
    opens = [r for r in art.records if r["t"] == "ws.open"]
    assert len(opens) == 1, art.summary()
    return ws_records(art, opens[0]["flow"])


def test_messages_both_ways_are_recorded_in_order_and_the_upgrade_gets_the_credential_swap(
        ws_gateway, ws_upstream, idp):
    # Identity and policy decide the upgrade as any request: nothing reaches the upstream without them.
    with pytest.raises(WsRefused) as e:
        WsClient.through_proxy(ws_gateway, ws_upstream.host, "/echo", token=None)
    assert e.value.status == 407
    with pytest.raises(WsRefused) as e:
        WsClient.through_proxy(ws_gateway, ws_upstream.host, "/echo", token=idp.token("bob", groups=["sales"]))
    assert e.value.status == 403
    assert ws_upstream.connections == []
    token = idp.token("alice", groups=["engineering"])
    client = WsClient.through_proxy(ws_gateway, ws_upstream.host, "/echo", token=token,
                                    headers=[("Authorization", f"Bearer {CLIENT_KEY}"), ("x-api-key", CLIENT_KEY)])
    client.send_text("hello wörld")
    assert client.recv(1) == [("text", "hello wörld".encode())]
    client.send_binary(b"\x00\x01\xfe\xff binary")
    assert client.recv(1) == [("binary", b"\x00\x01\xfe\xff binary")]
    server_bin = os.urandom(64)
    client.send_text(json.dumps({"x_fake": "send", "messages": [{"text": "from the server"},
                                                                {"b64": base64.b64encode(server_bin).decode()}]}))
    assert client.recv(2) == [("text", b"from the server"), ("binary", server_bin)]
    client.close(1000, "done here")
    up = ws_upstream.connection()
    assert up.wait(lambda c: c.closed is not None)
    assert ws_gateway.stop() == 0

    # The upstream's log: the gateway's credential, never the client's key nor its token.
    assert up.header_values("authorization") == [f"Bearer {UPSTREAM_KEY}"]
    sent = json.dumps(up.headers)
    assert CLIENT_KEY not in sent and token not in sent
    assert [(k, d) for k, d, _ in up.messages][:2] == [("text", "hello wörld".encode()),
                                                       ("binary", b"\x00\x01\xfe\xff binary")]
    assert up.closed == (1000, "done here")

    art = Artifacts(ws_gateway.store_dir)
    assert sorted(r["status"] for r in art.records if r["t"] == "auth.refused") == [403, 407]
    recs = the_ws_flow(art)
    types = [r["t"] for r in recs]
    assert types[:4] == ["http.request", "http.response", "http.end", "ws.open"], types
    assert types[-1] == "ws.close" and types.count("ws.close") == 1, types
    req = recs[0]
    assert header(req["headers"], "authorization") == "[credential:fake-ws]"
    assert recs[1]["status"] == 101
    msgs = [r for r in recs if r["t"] == "ws.message"]
    got = [(m["from"], m["kind"], body_bytes(m)) for m in msgs]
    control = json.dumps({"x_fake": "send", "messages": [{"text": "from the server"},
                                                         {"b64": base64.b64encode(server_bin).decode()}]}).encode()
    assert got == [
        ("client", "text", "hello wörld".encode()), ("server", "text", "hello wörld".encode()),
        ("client", "binary", b"\x00\x01\xfe\xff binary"), ("server", "binary", b"\x00\x01\xfe\xff binary"),
        ("client", "text", control), ("server", "text", b"from the server"), ("server", "binary", server_bin),
    ]
    assert [m["n"] for m in msgs if m["from"] == "client"] == [0, 1, 2]
    assert [m["n"] for m in msgs if m["from"] == "server"] == [0, 1, 2, 3]
    assert msgs[2]["body"]["size"] == len(b"\x00\x01\xfe\xff binary")
    close = recs[-1]
    assert close["code"] == 1000 and close["reason"] == "done here" and close["by"] == "client", close
    assert close["messages"] == {"client": 3, "server": 4}
    res = subprocess.run([str(WIRETRAIL), "verify", str(ws_gateway.store_dir)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr
    assert all(s.state in ("sealed", "closed") for s in art.sessions), art.summary()


def test_a_secret_split_across_frames_and_messages_is_masked(ws_gateway, ws_upstream, idp):
    token = idp.token("alice", groups=["engineering"])
    client = WsClient.through_proxy(ws_gateway, ws_upstream.host, "/echo", token=token)
    half = len(SPLIT_SECRET) // 2
    # client -> server: one message in two frames, the secret cut between them
    client.send_text(f"my key is {SPLIT_SECRET} ok", frames=2)
    client.recv(1)
    # server -> client: Responses-style delta events, the secret split between two messages
    deltas = [{"type": "response.output_text.delta", "item_id": "msg_1", "output_index": 0, "content_index": 0,
               "delta": piece} for piece in ("The key: ", SPLIT_SECRET[:half], SPLIT_SECRET[half:], " end")]
    done = {"type": "response.output_text.done", "item_id": "msg_1", "output_index": 0, "content_index": 0,
            "text": "The key: " + SPLIT_SECRET + " end"}
    cmd = {"x_fake": "send", "messages": [{"text_b64": b64(json.dumps(d))} for d in deltas + [done]]}
    client.send_text(json.dumps(cmd))
    got = client.recv(5)
    assert SPLIT_SECRET in "".join(json.loads(d)["delta"] for _, d in got[:4])  # the client got it whole
    # server -> client: plain text, the secret split between two messages, each in two frames
    cmd = {"x_fake": "send", "frames": 2, "messages": [{"text_b64": b64("token " + SPLIT_SECRET[:half])},
                                                       {"text_b64": b64(SPLIT_SECRET[half:] + " !")}]}
    client.send_text(json.dumps(cmd))
    client.recv(2)
    client.close()
    up = ws_upstream.connection()
    assert up.wait(lambda c: c.closed is not None)
    assert up.messages[0] == ("text", f"my key is {SPLIT_SECRET} ok".encode(), 2)  # two frames upstream
    assert ws_gateway.stop() == 0

    store = store_bytes(ws_gateway.store_dir)
    for piece in (SPLIT_SECRET, SPLIT_SECRET[:half], SPLIT_SECRET[half:]):
        assert piece.encode() not in store, f"{piece[:12]}... reached the record"
    recs = the_ws_flow(Artifacts(ws_gateway.store_dir))
    msgs = [r for r in recs if r["t"] == "ws.message"]
    assert len(msgs) == 2 + 1 + 5 + 1 + 2  # message and echo, command, 5 events, command, 2 texts
    texts = [m["body"]["text"] for m in msgs]
    assert "[MASKED:" in texts[0] and texts[0].startswith("my key is ") and texts[0].endswith(" ok")
    events = [json.loads(t) for t in texts[3:8]]  # the recorded events are still JSON, one per message
    assert [e["type"] for e in events] == ["response.output_text.delta"] * 4 + ["response.output_text.done"]
    joined = "".join(e["delta"] for e in events[:4])
    assert joined.startswith("The key: [MASKED:") and joined.endswith(" end"), joined
    assert "[MASKED:" in events[4]["text"]
    plain = texts[9] + texts[10]
    assert plain.startswith("token [MASKED:") and plain.endswith(" !"), plain
    # Nothing was masked in the first delta: it is recorded byte for byte.
    assert texts[3] == json.dumps(deltas[0])


def test_a_client_message_that_cannot_be_recorded_is_not_forwarded_and_the_websocket_closes(
        tmp_path, start_gateway, idp, ws_upstream, key_file):
    with small_tmpfs(tmp_path) as mnt:
        config = ws_config(idp)
        config["storage"] = {"dir": mnt / "store"}
        gw = start_gateway(config=config, extra_toml=ws_connection(ws_upstream, key_file))
        token = idp.token("alice", groups=["engineering"])
        client = WsClient.through_proxy(gw, ws_upstream.host, "/echo", token=token)
        client.send_text("before the disk filled")
        assert client.recv(1) == [("text", b"before the disk filled")]
        filler = fill(mnt)
        marker = "must-not-arrive-" + os.urandom(32 * 1024).hex()  # 64 KiB: no block has room for it
        client.send_text(marker)
        assert client.wait(lambda c: c.closed is not None, timeout=15), "the gateway did not close the WebSocket"
        assert client.closed[0] == 1013 and "not forwarded" in client.closed[1], client.closed
        assert client.received == [("text", b"before the disk filled")]
        up = ws_upstream.connection()
        assert up.wait(lambda c: c.closed is not None)
        assert up.closed[0] == 1013, up.closed  # the upstream was closed too ...
        assert [d for _, d, _ in up.messages] == [b"before the disk filled"]  # ... and never got the message
        log = gw.log_text()
        assert "cannot record (disk full)" in log and "closing the WebSocket" in log, log
        filler.unlink()
        assert gw.stop() == 0
        assert marker.encode() not in store_bytes(mnt / "store")


def test_reverse_mode_websocket_takes_the_identity_token_as_api_key_and_sends_the_gateways(
        start_gateway, idp, ws_upstream, key_file):
    gw = start_gateway(config=ws_config(idp), extra_toml=ws_connection(ws_upstream, key_file),
                       upstream_url=f"https://127.0.0.1:{ws_upstream.port}")
    with pytest.raises(WsRefused) as e:
        WsClient.direct(gw.reverse_port, "/echo", headers=[("Authorization", f"Bearer {CLIENT_KEY}")])
    assert e.value.status == 401 and ws_upstream.connections == []
    token = idp.token("alice", groups=["engineering"])
    client = WsClient.direct(gw.reverse_port, "/echo", headers=[("Authorization", f"Bearer {token}")])
    client.send_text("through the reverse listener")
    assert client.recv(1) == [("text", b"through the reverse listener")]
    client.close()
    up = ws_upstream.connection()
    assert up.wait(lambda c: c.closed is not None)
    assert gw.stop() == 0
    assert up.header_values("authorization") == [f"Bearer {UPSTREAM_KEY}"]
    assert token not in json.dumps(up.headers)
    recs = the_ws_flow(Artifacts(gw.store_dir))
    assert [(r["from"], body_bytes(r)) for r in recs if r["t"] == "ws.message"] == [
        ("client", b"through the reverse listener"), ("server", b"through the reverse listener")]
    assert recs[0]["mode"] == "reverse"


def test_mask_requests_and_mask_responses_mask_websocket_messages_as_they_are_forwarded(
        start_gateway, idp, ws_upstream, key_file):
    config = ws_config(idp)
    config["masking"] = {"mask_requests": True, "mask_responses": True}
    gw = start_gateway(config=config, extra_toml=ws_connection(ws_upstream, key_file))
    client = WsClient.through_proxy(gw, ws_upstream.host, "/echo", token=idp.token("alice", groups=["engineering"]))
    # (reversed: with mask_requests the gateway masks a secret inside base64 of the client's message too)
    client.send_text(json.dumps({"x_fake": "send", "messages": [{"text_rev": f"server says {SPLIT_SECRET}"[::-1]}]}))
    [(kind, got)] = client.recv(1)
    assert SPLIT_SECRET.encode() not in got and got.startswith(b"server says [MASKED:")
    client.send_text(f"client says {SPLIT_SECRET}")
    [(kind, echoed)] = client.recv(1)
    client.close()
    up = ws_upstream.connection()
    assert up.wait(lambda c: c.closed is not None)
    assert gw.stop() == 0
    sent = up.messages[1][1]  # the upstream's own log: what it received
    assert SPLIT_SECRET.encode() not in sent and sent.startswith(b"client says [MASKED:")
    assert SPLIT_SECRET.encode() not in store_bytes(gw.store_dir)
