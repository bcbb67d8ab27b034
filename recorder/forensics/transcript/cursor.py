"""Cursor's agent as a conversation: prompt, streamed text, tool requests and results.

Cursor's agent talks to its backend over `agent.v1.AgentService/Run`, one Connect stream in
both directions. The client sends AgentClientMessages (the run request with the user's
prompt, the results of tools the server asked it to run, heartbeats); the server sends
AgentServerMessages (the model's text as many small deltas, tool requests, the turn's end).
Over HTTP/1.1 (`cursor.general.disableHttp2`, or a proxy that breaks HTTP/2) the same
messages travel apart: the server's as the `agent.v1.AgentService/RunSSE` response stream,
each client message as a unary `aiserver.v1.BidiService/BidiAppend` post whose field 1 is the
client message as hex text, field 2.1 the stream's request id (the RunSSE request carries
the same id) and field 3 a sequence number. `link_fallback` joins those posts to their
RunSSE stream by that shared id, so both modes read as the same conversation.

Cursor publishes no schema. The field paths below come from public reverse engineering of
Cursor's clients; they could not be checked against Cursor itself and may change with any
release (docs/clients.md). A message that does not fit them is shown as its strings with
their field paths, so nothing recorded is hidden by a wrong guess.
"""
from __future__ import annotations

import re
from collections import Counter

from recorder.protocols.connect.wire import json_walk, parse, to_json
from recorder.forensics.exchange import Exchange
from recorder.forensics.transcript.model import Message, Part, Turn
from recorder.forensics.transcript.rpc import (
    Namer,
    RpcMessage,
    describe,
    end_text,
    messages,
    rpc_path,
    strings,
)

PROTOCOL = "cursor.agent"
RUN = "/agent.v1.AgentService/Run"
RUN_SSE = "/agent.v1.AgentService/RunSSE"
BIDI_APPEND = ("/aiserver.v1.BidiService/BidiAppend", "/aiserver.v1.AiService/BidiAppend")

# AgentClientMessage: run_request(1).action(2).user_action(1).message(1).text(1), or a
# follow-up conversation_action(4).user_action(1).message(1).text(1); exec results are field 2.
PROMPT_PATHS = ("1.2.1.1.1", "4.1.1.1")
MODEL_PATH = "1.3.1"
CLIENT_EXEC = 2
# AgentServerMessage: interaction_update(1).text_delta(1).text(1); exec requests are field 2;
# interaction_update.turn_ended is field 14.
TEXT_PATH = "1.1.1"
SERVER_EXEC = 2
TURN_ENDED = "1.14"

_HEX = re.compile(r"(?:[0-9a-f]{2})+\Z")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{5,127}\Z")
_TOOL_NAME = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)+\Z")  # read_file, run_terminal_cmd
_PATH = re.compile(r"(?:[A-Za-z]:)?[\w.~@-]*(?:/[\w.@+-]+)+/?\Z|[\w@+-]+\.[A-Za-z0-9]{1,8}\Z")


def matches(ex: Exchange) -> bool:
    path = rpc_path(ex) or ""
    return path.endswith((RUN, RUN_SSE)) or path.endswith(BIDI_APPEND)


def _top(msg: RpcMessage) -> set[int]:
    return {n.get("f") for n in msg.proto or () if isinstance(n, dict)}


def _ids(msg: RpcMessage) -> set[str]:
    return {t for _, t in strings(msg.proto or []) if _ID.fullmatch(t) and " " not in t}


def _is_path(text: str) -> bool:
    return len(text) < 300 and "\n" not in text and " " not in text and bool(_PATH.fullmatch(text)) and (
        "/" in text or "." in text) and not text.startswith(("http://", "https://"))


# -- the HTTP/1.1 fallback ----------------------------------------------------------------------


def _appended(ex: Exchange) -> tuple[list[RpcMessage], str | None, int | None]:
    """The client messages a BidiAppend post carries (hex-decoded), its request id and seqno."""
    out, rid, seqno = [], None, None
    for msg in messages(ex, "client"):
        for node in msg.proto or ():
            if not isinstance(node, dict):
                continue
            inner = node.get("x") if node.get("f") == 1 else None
            if node.get("f") == 1 and isinstance(node.get("s"), str) and _HEX.fullmatch(node["s"]):
                inner = _hex_message(node["s"])  # too short for the decoder's hex guess, but this field is hex
            if isinstance(inner, list):
                out.append(RpcMessage("client", msg.seq, msg.index, msg.ts, {"n": msg.item.get("n"), "proto": inner,
                                                                             "size": msg.item.get("size")}, RUN))
            elif node.get("f") == 2 and isinstance(node.get("m"), list):
                rid = next((t for _, t in strings(node["m"])), rid)
            elif node.get("f") == 3 and isinstance(node.get("v"), int):
                seqno = node["v"]
    return out, rid, seqno


def _hex_message(text: str) -> list | None:
    try:
        return to_json(parse(bytes.fromhex(text)))
    except (ValueError, RecursionError):
        return None


def link_fallback(exs: list[Exchange]) -> dict[str, Exchange]:
    """BidiAppend flow -> the RunSSE exchange whose request carries the same request id."""
    runs = [(ex, set().union(*(_ids(m) for m in messages(ex, "client"))) if messages(ex, "client") else set())
            for ex in exs if (rpc_path(ex) or "").endswith(RUN_SSE)]
    linked: dict[str, Exchange] = {}
    for ex in exs:
        if not (rpc_path(ex) or "").endswith(BIDI_APPEND):
            continue
        _, rid, _ = _appended(ex)
        for run, ids in reversed(runs):  # the newest stream with that id
            if rid is not None and rid in ids:
                linked[ex.flow] = run
                break
    return linked


# -- turns --------------------------------------------------------------------------------------


def turns(ex: Exchange, namer: Namer, appends: list[Exchange] = ()) -> list[Turn]:
    path = rpc_path(ex) or ""
    if path.endswith(BIDI_APPEND):  # a post whose stream is not in this session
        client, rid, seqno = _appended(ex)
        server = messages(ex, "server")
        note = f"BidiAppend #{seqno} for request id {rid}: its RunSSE stream is not in this session"
    else:
        client = [] if path.endswith(RUN_SSE) else messages(ex, "client")
        server = messages(ex, "server")
        note = None
        if path.endswith(RUN_SSE):
            posts = []
            for post in appends:
                got, rid, seqno = _appended(post)
                posts.append((seqno if seqno is not None else 1 << 62, post.index, got, rid))
            posts.sort(key=lambda p: (p[0], p[1]))
            client = [m for p in posts for m in p[2]]
            if posts:
                note = (f"HTTP/1.1 fallback: {len(posts)} BidiAppend post(s) joined to this RunSSE stream by their "
                        f"request id {posts[0][3]}")
    out = _conversation(ex, client, server, namer)
    if note:
        out[0].notes.insert(0, note)
    return out


def _text_path(server: list[RpcMessage]) -> str | None:
    """Where the streamed text is: the known path, or else the path most server messages carry
    exactly one string at (the deltas of a stream)."""
    single = Counter()
    for msg in server:
        found = strings(msg.proto or [])
        if any(p == TEXT_PATH for p, _ in found):
            return TEXT_PATH
        if len(found) == 1:
            single[found[0][0]] += 1
    path, count = single.most_common(1)[0] if single else (None, 0)
    return path if count >= 3 else None


def causal(client: list[RpcMessage], server: list[RpcMessage]) -> list[RpcMessage]:
    """Both sides in the order they happened. Records keep the order they were written in,
    and a streamed batch is written up to capture.chunk_interval after its bytes came, so a
    fast reply can be on file before the message it answers. Two rules put that right: the
    stream starts with the client's first message (the server answers a request), and a
    client message that quotes an id first sent by the server (a tool result naming its
    call) comes after that server message."""
    timeline = sorted(client + server, key=lambda m: m.order)
    if client:
        first = min(client, key=lambda m: m.order)
        timeline.remove(first)
        timeline.insert(0, first)
    introduced: dict[str, int] = {}
    for i, msg in enumerate(timeline):
        if msg.side == "server":
            for ident in _ids(msg):
                introduced.setdefault(ident, i)
    out: list[RpcMessage] = []
    waiting: dict[int, list[RpcMessage]] = {}
    for i, msg in enumerate(timeline):
        later = [introduced[x] for x in _ids(msg) if introduced.get(x, -1) > i] if msg.side == "client" else []
        if later:
            waiting.setdefault(min(later), []).append(msg)
        else:
            out.append(msg)
        out.extend(waiting.pop(i, ()))
    return out


def _conversation(ex: Exchange, client: list[RpcMessage], server: list[RpcMessage], namer: Namer) -> list[Turn]:
    text_path = _text_path(server)
    timeline = causal(client, server)
    out: list[Turn] = []
    calls: dict[str, Part] = {}  # tool call ids -> the call, to name its result
    state = {"turn": None, "text": []}
    counts = Counter()
    files: list[str] = []

    def turn() -> Turn:
        if state["turn"] is None:
            state["turn"] = Turn(ex, PROTOCOL, streamed=True)
            out.append(state["turn"])
        return state["turn"]

    def flush_text() -> None:
        if state["text"]:
            turn().reply.append(Message("assistant", [Part("text", text="".join(state["text"]))]))
            state["text"] = []

    for msg in timeline:
        found = strings(msg.proto or [])
        for _, t in found:
            if _is_path(t) and t not in files:
                files.append(t)
        if msg.side == "client":
            counts["client"] += 1
            prompt = next((t for p, t in found if p in PROMPT_PATHS), None)
            if prompt is not None:
                flush_text()
                state["turn"] = None
                t = turn()
                t.ts = msg.ts
                t.model = next((s for p, s in found if p == MODEL_PATH), None)
                t.messages.append(Message("user", [Part("text", text=prompt)]))
                continue
            if CLIENT_EXEC in _top(msg) and found:
                flush_text()
                ids = _ids(msg)
                call = next((calls[i] for i in ids if i in calls), None)
                body = "\n".join(f"{namer.path(msg, p)}: {t}" for p, t in found if call is None or t != call.id)
                turn().reply.append(Message("tool", [Part("tool_result", text=body, id=call.id if call else None,
                                                          name=call.name if call else None)]))
                continue
            if not found and msg.proto is not None:
                counts["client without text"] += 1  # heartbeats, acknowledgements
                continue
            flush_text()
            turn().reply.append(Message("client", [Part("text", text=describe(msg, namer))]))
            continue
        counts["server"] += 1
        if "end" in msg.item:
            flush_text()
            err = msg.item["end"].get("error") if isinstance(msg.item["end"], dict) else None
            if err:
                turn().notes.append(end_text(msg.item["end"]))
            continue
        deltas = [t for p, t in found if p == text_path]
        if deltas and len(deltas) == len(found):
            state["text"].extend(deltas)
            continue
        if SERVER_EXEC in _top(msg) and found:
            flush_text()
            ids = sorted(_ids(msg), key=len)
            ident = next((i for i in ids if not _is_path(i) and not _TOOL_NAME.fullmatch(i)), None)
            name = next((t for _, t in found if _TOOL_NAME.fullmatch(t)), None) or _exec_kind(msg, namer)
            args = "\n".join(f"{namer.path(msg, p)}: {t}" for p, t in found if t not in (ident, name))
            part = Part("tool_call", name=name, id=ident, arguments=args)
            if ident:
                calls[ident] = part
            turn().reply.append(Message("assistant", [part]))
            continue
        if any(p.startswith(TURN_ENDED) for p, _ in json_walk(msg.proto or [])) and not found:
            flush_text()
            counts["turn ended"] += 1
            continue
        if not found and msg.proto is not None:
            counts["server without text"] += 1
            continue
        flush_text()
        turn().reply.append(Message("server", [Part("text", text=describe(msg, namer))]))
    flush_text()
    if not out:
        turn()
    first = out[0]
    first.notes.append(
        f"Cursor agent stream: {counts['client']} client and {counts['server']} server message(s)"
        + "".join(f", {v} {k}" for k, v in counts.items() if k not in ("client", "server"))
        + "; field paths from public reverse engineering (no schema): --tree shows every field")
    if files:
        out[-1].notes.append("files: " + ", ".join(files[:20]) + (f" (+{len(files) - 20} more)" if len(files) > 20 else ""))
    return out


def _exec_kind(msg: RpcMessage, namer: Namer) -> str:
    """A tool request names its tool by which field of the exec message it fills: that
    field's name with a descriptor set, its number without."""
    for node in msg.proto or ():
        if isinstance(node, dict) and node.get("f") == SERVER_EXEC and isinstance(node.get("m"), list):
            kinds = [c.get("f") for c in node["m"] if isinstance(c, dict) and isinstance(c.get("m"), list)]
            if kinds:
                path = f"{SERVER_EXEC}.{kinds[0]}"
                named = namer.path(msg, path)
                return named.rsplit(".", 1)[-1] if named != path else f"exec field {path}"
    return "exec"
