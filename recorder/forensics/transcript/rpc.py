"""Connect and gRPC exchanges as turns, from the messages the recorder stored.

Without a schema a message is a tree of field numbers (recorder/protocols/connect/wire.py): it is
shown as its readable strings in wire order, each with its field path ("1.2.1: hello"),
never as a hex dump. With a FileDescriptorSet (`--descriptors`) the paths carry the real
field names. Cursor's agent streams get turns of their own (recorder/forensics/transcript/cursor.py).
`tree_lines` is `wiretrail show --tree`: every message as its whole field tree.
"""
from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import urlsplit

from recorder.protocols.connect import descriptors as desc_mod
from recorder.protocols.connect.envelopes import framing_of
from recorder.protocols.connect.wire import json_walk
from recorder.forensics.exchange import Exchange
from recorder.forensics.transcript.model import Message, Part, Turn

PREVIEW = 500  # characters of one string in the generic view


@dataclass
class RpcMessage:
    """One stored message of an RPC exchange, with where it sits in the session."""

    side: str  # "client" or "server"
    seq: int  # the seq of the record that holds it: the session's order
    index: int  # its place within that record
    ts: float | None
    item: dict  # as stored: n, flags, size, proto | end | text | b64 | omitted ...
    rpc_path: str | None = None  # "/pkg.Service/Method" of its exchange

    @property
    def proto(self) -> list | None:
        p = self.item.get("proto")
        return p if isinstance(p, list) else None

    @property
    def order(self) -> tuple:
        """When it happened: its arrival time at the gateway (`at`, on streamed messages), else
        its record's time (a buffered body is recorded as it arrives), then its place in the file."""
        for t in (self.item.get("at"), self.ts):
            if isinstance(t, (int, float)) and not isinstance(t, bool):
                return (float(t), self.seq, self.index)
        return (float("inf"), self.seq, self.index)


def is_rpc_exchange(ex: Exchange) -> bool:
    return ex.kind == "http" and ex.request is not None and (
        framing_of(ex.request_header("content-type")) is not None
        or framing_of(ex.response_header("content-type")) is not None
        or any(_stored(b) for b in _bodies(ex)))


def _stored(body) -> bool:
    return isinstance(body, dict) and isinstance(body.get("messages"), list)


def _bodies(ex: Exchange):
    for head in (ex.request, ex.response):
        if head is not None:
            yield head.get("body")
    for c in ex.request_chunks + ex.response_chunks:
        yield c.get("body")


def rpc_path(ex: Exchange) -> str | None:
    return urlsplit(ex.url or "").path or None


def messages(ex: Exchange, side: str) -> list[RpcMessage]:
    """The stored messages of one direction ("client" = request), in order."""
    head = ex.request if side == "client" else ex.response
    chunks = ex.request_chunks if side == "client" else ex.response_chunks
    records = [head] if head is not None and _stored(head.get("body")) else list(chunks)
    out = []
    path = rpc_path(ex)
    # A message that masking held back is recorded later, naming the chunk it arrived in.
    arrived = {rec.get("n"): rec for rec in chunks if isinstance(rec.get("n"), int)}
    for rec in records:
        body = rec.get("body")
        if not _stored(body):
            continue
        for i, item in enumerate(body["messages"]):
            if isinstance(item, dict):
                at = arrived.get(item.get("chunk"), rec)
                seq = at.get("seq") if isinstance(at.get("seq"), int) else 0
                n = item.get("n") if isinstance(item.get("n"), int) else i
                out.append(RpcMessage(side, seq, n, at.get("ts"), item, path))
    return out


def timeline(ex: Exchange) -> list[RpcMessage]:
    """Both directions of one exchange in the order they were recorded."""
    return sorted(messages(ex, "client") + messages(ex, "server"), key=lambda m: m.order)


def strings(nodes) -> list[tuple[str, str]]:
    """(field path, text) of every non-empty string in a stored message, in wire order."""
    return [(path, node["s"]) for path, node in json_walk(nodes) if isinstance(node.get("s"), str) and node["s"]]


class Namer:
    """Field paths as names, where a descriptor set knows the message type."""

    def __init__(self, descriptors=None):
        self.descriptors = descriptors

    def root(self, msg: RpcMessage):
        if self.descriptors is None:
            return None
        types = self.descriptors.method(msg.rpc_path)
        if types is None:
            return None
        return types[0] if msg.side == "client" else types[1]

    def path(self, msg: RpcMessage, path: str) -> str:
        desc = self.root(msg)
        if desc is None:
            return path
        names = []
        for part in path.split("."):
            f = desc_mod.field_of(desc, int(part))
            if f is None:
                names.extend(path.split(".")[len(names):])
                break
            names.append(f.name)
            desc = desc_mod.child(desc, int(part))
        return ".".join(names)


def _cut(text: str, limit: int = PREVIEW) -> str:
    return text if len(text) <= limit else text[:limit] + f"... [{len(text) - limit} more characters]"


def describe(msg: RpcMessage, namer: Namer, limit: int | None = PREVIEW) -> str:
    """One message as text: its strings with their field paths, or what it is."""
    item = msg.item
    n = item.get("n")
    if "omitted" in item:
        return f"[message {n} ({item.get('size')} bytes) not recorded: {item['omitted']}]"
    if item.get("incomplete"):
        return f"[the stream ended inside message {n}: {item.get('size')} of {item.get('expected', '?')} bytes]"
    if "end" in item:
        return end_text(item["end"])
    lines = []
    if "undecoded" in item:
        lines.append(f"[message {n}: {item['undecoded']}]")
    if isinstance(item.get("text"), str):
        lines.append(item["text"] if limit is None else _cut(item["text"], limit))
    elif isinstance(item.get("b64"), str):
        lines.append(f"[{item.get('size')} bytes, not text]")
    found = strings(msg.proto or [])
    for path, text in found:
        lines.append(f"{namer.path(msg, path)}: {text if limit is None else _cut(text, limit)}")
    if msg.proto is not None and not found:
        lines.append(f"[message {n}: {len(list(json_walk(msg.proto)))} field(s), no text]")
    if item.get("masked_as_bytes"):
        lines.append(f"[masked as bytes at {', '.join(map(str, item['masked_as_bytes']))}]")
    return "\n".join(lines)


def end_text(end) -> str:
    """A Connect end-of-stream message: ok, or its error."""
    err = end.get("error") if isinstance(end, dict) else None
    if isinstance(err, dict):
        return f"end of stream: error {err.get('code') or '?'}: {err.get('message') or ''}".rstrip(": ")
    return "end of stream: ok"


def generic_turn(ex: Exchange, namer: Namer) -> Turn:
    framing = framing_of(ex.request_header("content-type")) or framing_of(ex.response_header("content-type"))
    turn = Turn(ex, framing[0] if framing else "rpc", streamed=ex.request_streamed or ex.response_streamed)
    for msg in timeline(ex):
        text = describe(msg, namer)
        if not text:
            continue
        target = turn.messages if msg.side == "client" else turn.reply
        target.append(Message(msg.side, [Part("text", text=text)]))
    turn.notes.append(f"{len(messages(ex, 'client'))} client message(s), {len(messages(ex, 'server'))} "
                      "server message(s); no schema: strings are shown with their field paths (--tree shows every field)")
    return turn


def messages_text(body: dict) -> str:
    """A stored RPC body as text: each message with its strings and their field paths."""
    lines = []
    for item in body.get("messages") or ():
        if isinstance(item, dict):
            msg = RpcMessage("?", 0, 0, None, item)
            lines.append(f"message {item.get('n')}:")
            lines.extend("  " + line for line in describe(msg, Namer(), None).split("\n"))
    if body.get("held"):
        lines.append(f"({body['held']} message(s) held for masking: in a later chunk)")
    return "\n".join(lines)


def body_summary(body: dict, limit: int = 200) -> str:
    """A stored RPC body in one line, for `wiretrail show --records`."""
    items = [i for i in body.get("messages") or () if isinstance(i, dict)]
    texts = []
    for item in items:
        if "end" in item:
            texts.append(end_text(item["end"]))
        texts.extend(f"{p}: {t}" for p, t in strings(item.get("proto") or []))
    text = " | ".join(texts)
    held = f", {body['held']} held for masking" if body.get("held") else ""
    return f"{len(items)} message(s){held}" + (f": {text[:limit]}{'...' if len(text) > limit else ''}" if text else "")


# -- --tree ----------------------------------------------------------------------------------


def tree_lines(ex: Exchange, namer: Namer, indent: str = "    ") -> list[str]:
    out = []
    for msg in timeline(ex):
        item = msg.item
        head = f"{indent}{msg.side} message {item.get('n')}"
        facts = [f"{item.get('size')} bytes"]
        if item.get("compressed"):
            facts.append(f"compressed {item['compressed']}")
        out.append(f"{head} ({', '.join(facts)})")
        if msg.proto is None:
            out.append(f"{indent}  {describe(msg, namer, None)}".replace("\n", "\n" + indent + "  "))
            continue
        out.extend(_node_lines(msg.proto, namer.root(msg), indent + "  "))
    return out


def _node_lines(nodes, desc, indent: str) -> list[str]:
    lines = []
    stack = [(nodes, desc, indent, 0)]
    while stack:
        items, d, ind, i = stack.pop()
        if i >= len(items):
            continue
        stack.append((items, d, ind, i + 1))
        node = items[i]
        if not isinstance(node, dict) or not isinstance(node.get("f"), int):
            continue
        field = desc_mod.field_of(d, node["f"])
        label = f"{node['f']}" + (f" {field.name}" if field is not None else "")
        for kind, what in (("m", ":"), ("x", " (a message sent as hex text):"), ("g", " (group):")):
            if isinstance(node.get(kind), list):
                lines.append(f"{ind}{label}{what}")
                stack.append((node[kind], desc_mod.child(d, node["f"]), ind + "  ", 0))
                break
        else:
            lines.append(f"{ind}{label}: {_scalar(node, field)}")
    return lines


def _scalar(node: dict, field) -> str:
    typed = desc_mod.value_text(field, node)
    if "s" in node:
        return repr(node["s"])
    if "b64" in node:
        hint = f" (varints {node['varints']})" if isinstance(node.get("varints"), list) else ""
        return f"bytes {node['b64']}{hint}"
    for kind, what in (("v", "varint"), ("i64", "fixed64"), ("i32", "fixed32")):
        if kind in node:
            return f"{node[kind]} ({what}{', ' + typed if typed is not None else ''})"
    return "?"
