"""A conversation in the shape of Cursor's agent stream, for tests.

Cursor publishes no schema. MIMIC_PROTOS is a test-only stand-in written from public
reverse-engineering notes of Cursor's clients (agent.v1.AgentService/Run and the HTTP/1.1
fallback, RunSSE plus aiserver.v1.BidiService/BidiAppend): message and field numbers as
those notes give them, nothing of Cursor's own. Messages are built with the official
protobuf package from it, so the tests never encode with the code under test.

`conversation(pb, secret)` is one turn: the prompt (with `secret` pasted in), the model's
text as deltas, a read_file tool request, its result, more text, the turn's end.
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.protos import compile_files

AISERVER_PROTO = """
syntax = "proto3";
package aiserver.v1;

message BidiRequestId { string request_id = 1; }
message BidiAppendRequest {
  string data = 1;               // the AgentClientMessage, as hex text
  BidiRequestId request_id = 2;
  int64 append_seqno = 3;
}
message BidiAppendResponse {}

service BidiService {
  rpc BidiAppend(BidiAppendRequest) returns (BidiAppendResponse);
}
"""

AGENT_PROTO = """
syntax = "proto3";
package agent.v1;
import "wt_aiserver.proto";

message UserMessage { string text = 1; string message_id = 2; }
message UserMessageAction { UserMessage message = 1; }
message ConversationAction { UserMessageAction user_action = 1; }
message ModelDetails { string model_id = 1; }
message AgentRunRequest {
  bytes conversation_state = 1;
  ConversationAction action = 2;
  ModelDetails model = 3;
  string conversation_id = 5;
}
message ReadFileArgs { string path = 1; }
message ReadFileResult { string content = 1; }
message ExecServerMessage {
  uint32 id = 1;
  oneof args { ReadFileArgs read_file = 2; }
  string exec_id = 15;
}
message ExecClientMessage {
  uint32 id = 1;
  oneof result { ReadFileResult read_file = 2; }
  string exec_id = 15;
}
message ClientHeartbeat {}
message AgentClientMessage {
  oneof message {
    AgentRunRequest run_request = 1;
    ExecClientMessage exec_client_message = 2;
    ConversationAction conversation_action = 4;
    ClientHeartbeat client_heartbeat = 7;
  }
}
message TextDeltaUpdate { string text = 1; }
message TurnEndedUpdate { uint64 output_tokens = 1; }
message InteractionUpdate {
  TextDeltaUpdate text_delta = 1;
  TurnEndedUpdate turn_ended = 14;
}
message AgentServerMessage {
  oneof message {
    InteractionUpdate interaction_update = 1;
    ExecServerMessage exec_server_message = 2;
  }
}

service AgentService {
  rpc Run(stream AgentClientMessage) returns (stream AgentServerMessage);
  rpc RunSSE(aiserver.v1.BidiRequestId) returns (stream AgentServerMessage);
}
"""

RUN = "/agent.v1.AgentService/Run"
RUN_SSE = "/agent.v1.AgentService/RunSSE"
BIDI_APPEND = "/aiserver.v1.BidiService/BidiAppend"
PROMPT = "Why does src/app.py crash? My key is {secret}, if it matters."
DELTAS_1 = ["Let me ", "look at ", "the file."]
DELTAS_2 = ["The crash is ", "a missing ", "import."]
FILE_PATH = "src/app.py"
FILE_CONTENT = "import os\n\ndef main():\n    return json.dumps(os.environ)\n"
EXEC_ID = "exec-7f3a9c21"


@dataclass
class Mimic:
    agent: object  # the agent.v1 module
    aiserver: object  # the aiserver.v1 module
    descriptor_set: Path


def compile_mimic(directory: Path) -> Mimic:
    modules, fds = compile_files(directory, {"wt_aiserver.proto": AISERVER_PROTO, "wt_agent.proto": AGENT_PROTO},
                                 "cursor-mimic.pb")
    return Mimic(modules["wt_agent"], modules["wt_aiserver"], fds)


def envelope(payload: bytes, flags: int = 0) -> bytes:
    return bytes([flags]) + len(payload).to_bytes(4, "big") + payload


def gz_envelope(payload: bytes) -> bytes:
    return envelope(gzip.compress(payload), 0x01)


def end_stream(error: dict | None = None) -> bytes:
    return envelope(json.dumps({"error": error} if error else {}).encode(), 0x02)


@dataclass
class Conversation:
    """The messages of one turn, serialized; `steps` says who sends what in which order."""

    client: list[bytes] = field(default_factory=list)
    server: list[bytes] = field(default_factory=list)
    # ("client", i) / ("server", i), in the order they happen
    steps: list[tuple[str, int]] = field(default_factory=list)


def conversation(m: Mimic, secret: str, conversation_id: str = "conv-0001",
                 tool_secret: str | None = None) -> Conversation:
    """One agent turn; `secret` is pasted into the prompt, `tool_secret` (if any) is in the file
    the read_file tool returns."""
    A = m.agent
    c = Conversation()

    def client(msg):
        c.client.append(msg.SerializeToString())
        c.steps.append(("client", len(c.client) - 1))

    def server(msg):
        c.server.append(msg.SerializeToString())
        c.steps.append(("server", len(c.server) - 1))

    run = A.AgentClientMessage()
    run.run_request.action.user_action.message.text = PROMPT.format(secret=secret)
    run.run_request.action.user_action.message.message_id = "msg-0001"
    run.run_request.model.model_id = "claude-4-sonnet"
    run.run_request.conversation_id = conversation_id
    client(run)
    for d in DELTAS_1:
        server(A.AgentServerMessage(interaction_update=A.InteractionUpdate(text_delta=A.TextDeltaUpdate(text=d))))
    call = A.AgentServerMessage()
    call.exec_server_message.id = 1
    call.exec_server_message.exec_id = EXEC_ID
    call.exec_server_message.read_file.path = FILE_PATH
    server(call)
    result = A.AgentClientMessage()
    result.exec_client_message.id = 1
    result.exec_client_message.exec_id = EXEC_ID
    result.exec_client_message.read_file.content = FILE_CONTENT + (f'ANTHROPIC_API_KEY = "{tool_secret}"\n'
                                                                  if tool_secret else "")
    client(result)
    client(A.AgentClientMessage(client_heartbeat=A.ClientHeartbeat()))
    for d in DELTAS_2:
        server(A.AgentServerMessage(interaction_update=A.InteractionUpdate(text_delta=A.TextDeltaUpdate(text=d))))
    server(A.AgentServerMessage(interaction_update=A.InteractionUpdate(turn_ended=A.TurnEndedUpdate(output_tokens=42))))
    return c


def bidi_append(m: Mimic, client_message: bytes, request_id: str, seqno: int) -> bytes:
    return m.aiserver.BidiAppendRequest(data=client_message.hex(), request_id=m.aiserver.BidiRequestId(
        request_id=request_id), append_seqno=seqno).SerializeToString()


def run_sse_request(m: Mimic, request_id: str) -> bytes:
    return m.aiserver.BidiRequestId(request_id=request_id).SerializeToString()


# -- a recorded session, written with recorder's real writer and masker -------------------------

T0 = 1767225600.0


class SessionWriter:
    """Writes one session as the gateway would (bodies rendered, masked, on the writer thread)."""

    def __init__(self, store: Path, masker):
        from recorder.store.sessions import SessionRegistry
        from recorder.store.writer import RecordWriter

        self.masker = masker
        self.writer = RecordWriter(fsync="never")
        self.writer.start()
        self.t = T0
        self.reg = SessionRegistry(self.writer, store, idle_timeout=60, max_duration=600, clock=lambda: self.t)
        ident = {"sub": "alice", "email": None, "groups": ["eng"], "iss": "wiretrail-dev", "method": "jwt",
                 "authenticated": True}
        self.session = self.reg.begin_flow("alice", ident, ("127.0.0.1", 50000))
        self.flows = 0

    def record(self, t: str, fields: dict) -> None:
        self.t += 0.01
        self.session.record(t, fields, ts=self.t)

    def new_flow(self) -> str:
        self.flows += 1
        return f"c{self.flows:07d}-0000-4000-8000-000000000000"

    def request(self, flow: str, url: str, headers: list, body=None) -> None:
        self.record("http.request", {"flow": flow, "conn": "conn-1", "connection": "cursor", "method": "POST",
                                     "url": url, "http_version": "HTTP/2.0", "headers": headers, "body": body,
                                     "streamed": body is None, "mode": "regular"})

    def response(self, flow: str, headers: list, body=None) -> None:
        self.record("http.response", {"flow": flow, "status": 200, "reason": "", "http_version": "HTTP/2.0",
                                      "headers": headers, "body": body, "streamed": body is None})

    def end(self, flow: str) -> None:
        self.record("http.end", {"flow": flow, "status": 200, "size": {"request": 0, "response": 0},
                                 "duration_ms": 10.0, "ttfb_ms": 1.0})


CONNECT = [["content-type", "application/connect+proto"], ["connect-protocol-version", "1"],
           ["connect-content-encoding", "gzip"], ["authorization", "[MASKED:authorization:0123abcd]"]]


def write_h2_session(store: Path, m: Mimic, conv: Conversation, masker, end_error: dict | None = None) -> None:
    """The Run stream of `conv` as one bidirectional flow: request and response chunks interleaved."""
    from recorder.store.bodies import BodyStream, ChunkBytes

    w = SessionWriter(store, masker)
    flow = w.new_flow()
    w.request(flow, "https://agent.api5.cursor.sh" + RUN, CONNECT)
    req = BodyStream(None, masker=masker, content_type="application/connect+proto", message_encoding="gzip")
    resp = BodyStream(None, masker=masker, content_type="application/connect+proto", message_encoding="gzip")
    n = {"request": 0, "response": 0}
    responded = False

    def chunk(direction, st, data, final=False):
        w.record("http.chunk", {"flow": flow, "dir": direction, "n": n[direction], "body": ChunkBytes(data, st, final)})
        n[direction] += 1

    for side, i in conv.steps:
        if side == "client":
            chunk("request", req, gz_envelope(conv.client[i]))
        else:
            if not responded:
                w.response(flow, [["content-type", "application/connect+proto"]])
                responded = True
            chunk("response", resp, envelope(conv.server[i]))
    chunk("request", req, b"", final=True)
    chunk("response", resp, end_stream(end_error), final=True)
    w.end(flow)
    w.reg.close_all("shutdown")
    assert w.writer.stop(timeout=30)


def write_h1_session(store: Path, m: Mimic, conv: Conversation, masker, request_id: str = "req-5c1d2e3f") -> None:
    """The same conversation over HTTP/1.1: the server's messages as the RunSSE stream, each
    client message as its own BidiAppend post carrying the request id."""
    from recorder.store.bodies import BodyBytes, BodyStream, ChunkBytes

    w = SessionWriter(store, masker)
    sse = w.new_flow()
    h1 = [["content-type", "application/connect+proto"], ["connect-protocol-version", "1"]]
    w.request(sse, "https://api2.cursor.sh" + RUN_SSE, h1,
              BodyBytes(envelope(run_sse_request(m, request_id)), masker=masker,
                        content_type="application/connect+proto"))
    w.response(sse, [["content-type", "application/connect+proto"]])
    resp = BodyStream(None, masker=masker, content_type="application/connect+proto")
    n = 0
    for seqno, (side, i) in enumerate(conv.steps):
        if side == "server":
            w.record("http.chunk", {"flow": sse, "dir": "response", "n": n, "body": ChunkBytes(envelope(conv.server[i]), resp)})
            n += 1
            continue
        post = w.new_flow()
        w.request(post, "https://api2.cursor.sh" + BIDI_APPEND, [["content-type", "application/proto"]],
                  BodyBytes(gzip.compress(bidi_append(m, conv.client[i], request_id, seqno)), "gzip", masker=masker,
                            content_type="application/proto"))
        w.response(post, [["content-type", "application/proto"]], BodyBytes(b"", masker=masker,
                                                                           content_type="application/proto"))
        w.end(post)
    w.record("http.chunk", {"flow": sse, "dir": "response", "n": n, "body": ChunkBytes(end_stream(), resp, True)})
    w.end(sse)
    w.reg.close_all("shutdown")
    assert w.writer.stop(timeout=30)
