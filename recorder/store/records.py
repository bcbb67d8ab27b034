"""The one table of record types (format v1): each type's fields, their JSON types, which are
required, and what they mean.

The reader checks every record against it (recorder/forensics/reader.py), writers name types by
its constants and Session.record refuses a type it does not hold, and the field tables of
docs/format.md §4 are generated from it (`python -m recorder.store.records` rewrites them;
tests/unit/test_records_table.py keeps them in step). The database records (`pg.*`) are in the
table too; their fields are described in docs/format.md's own table.
"""
from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path

# -- the type names ---------------------------------------------------------------------------

SESSION_OPEN = "session.open"
SESSION_CLOSE = "session.close"
CHECKPOINT = "checkpoint"
SEAL = "seal"
HTTP_REQUEST = "http.request"
HTTP_RESPONSE = "http.response"
HTTP_CHUNK = "http.chunk"
HTTP_END = "http.end"
HTTP_TRAILERS = "http.trailers"
HTTP_ERROR = "http.error"
AUTH_REFUSED = "auth.refused"
TUNNEL = "tunnel"
WS_OPEN = "ws.open"
WS_MESSAGE = "ws.message"
WS_CLOSE = "ws.close"
TCP_OPEN = "tcp.open"
TCP_MESSAGE = "tcp.message"
TCP_CLOSE = "tcp.close"
TCP_REFUSED = "tcp.refused"
MCP_OPEN = "mcp.open"
MCP_MESSAGE = "mcp.message"
MCP_CLOSE = "mcp.close"
PG_CONNECT = "pg.connect"
PG_REFUSED = "pg.refused"
PG_QUERY = "pg.query"
PG_PARSE = "pg.parse"
PG_BIND = "pg.bind"
PG_EXECUTE = "pg.execute"
PG_FUNCTION = "pg.function"
PG_RESULT = "pg.result"
PG_CANCEL = "pg.cancel"
PG_ERROR = "pg.error"
PG_END = "pg.end"

SIGNING_TYPES = (CHECKPOINT, SEAL)
BODY_TYPES = (HTTP_REQUEST, HTTP_RESPONSE, HTTP_CHUNK, WS_MESSAGE, TCP_MESSAGE, MCP_MESSAGE)

# -- the field types --------------------------------------------------------------------------

# JSON type name -> the Python types a parsed record may hold there. "body" is §5's body object,
# "dest" is http.request's destination object; both are checked further by the reader.
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "int": (int,),
    "number": (int, float),
    "bool": (bool,),
    "object": (dict,),
    "list": (list,),
    "body": (dict,),
    "dest": (dict,),
}
_DOC_TYPE = {"int": "int", "body": "body", "dest": "object"}


@dataclass(frozen=True)
class Field:
    names: tuple[str, ...]  # several names share one row when they share type and meaning
    type: str  # a key of JSON_TYPES
    required: bool = False
    nullable: bool = False
    doc: str = ""
    values: tuple[str, ...] = ()  # the only strings allowed, when the set is closed

    def type_text(self) -> str:
        text = _DOC_TYPE.get(self.type, self.type)
        return text + " or null" if self.nullable else text


def req(names: str, type_: str, doc: str = "", *, null: bool = False, values: tuple[str, ...] = ()) -> Field:
    return Field(tuple(n.strip() for n in names.split(",")), type_, True, null, doc, values)


def opt(names: str, type_: str, doc: str = "", *, null: bool = False, values: tuple[str, ...] = ()) -> Field:
    return Field(tuple(n.strip() for n in names.split(",")), type_, False, null, doc, values)


@dataclass(frozen=True)
class RecordType:
    name: str
    fields: tuple[Field, ...]
    documented: bool = True  # its field table in docs/format.md is generated from this

    def field(self, name: str) -> Field | None:
        return next((f for f in self.fields if name in f.names), None)

    @property
    def required(self) -> tuple[str, ...]:
        return tuple(n for f in self.fields if f.required for n in f.names)

    @property
    def optional(self) -> tuple[str, ...]:
        return tuple(n for f in self.fields if not f.required for n in f.names)


_DEST_DOC = (
    "where the request went, which policy matched ([identity.md](identity.md#policy-by-destination)): "
    "`host` (the CONNECT target, reverse target or proxied URL's host, lowercase, without a trailing dot, "
    "an IP literal in its canonical form), `port` (integer), `address` (the IP address the gateway connects "
    "to, or `null` when it connects by name, to a registered name or a reverse-mode target, and is not "
    "connected yet; `http.end.address` then has it)"
)
_DIRS = ("request", "response")
_SIDES = ("client", "server")

_TABLE = [
    RecordType(SESSION_OPEN, (
        req("session", "string", "the session id"),
        req("identity", "object", "`sub`, `email`, `name`, `groups` (list), `iss`, `method` (`\"jwt\"`, `\"none\"` …), "
            "`authenticated` (false for `identity.mode = \"none\"`)"),
        req("client", "object", "`ip`, `port` of the client connection"),
        req("gateway", "object", "`host`, `version`; `id` when the gateway is one of several sharing a store "
            "(`[gateway] id`, docs/deployment.md)"),
        req("key", "string", "id of the signing key, `null` when none is configured", null=True),
        opt("opened", "number", "Unix seconds at open"),
        opt("agent", "object", "the agent run the client named, `{\"name\", \"run\", \"by\"}` (`by`: the header it "
            "came in); present only in a session opened for a run"),
        opt("remasked_from", "object", "only in a copy made by `wiretrail mask` ([masking.md](masking.md)): the "
            "original's `session` id, `head` (hash of its last intact line), `state`, `records` and `file` name"),
        opt("remasked_at", "number", "with `remasked_from`: Unix seconds when the copy was made"),
    )),
    RecordType(HTTP_REQUEST, (
        req("flow", "string", "flow id; every record of one exchange carries it"),
        req("conn", "string", "client connection id"),
        req("connection", "string", "the registered connection's name, `null` if none matched", null=True),
        req("method, url, http_version", "string",
            "`url` is the URL the client named (its Host header or h2 `:authority`)"),
        req("headers", "list", "`[[name, value], …]`, order and case as sent, credentials replaced (§6)"),
        req("body", "body", "the buffered body (§5), `null` when the body streams", null=True),
        opt("streamed", "bool", "true when the body is recorded in `http.chunk` records"),
        opt("mode", "string", "proxy mode: `\"regular\"`, `\"reverse\"` …"),
        opt("dest", "dest", _DEST_DOC, null=True),
    )),
    RecordType(HTTP_RESPONSE, (
        req("flow", "string"),
        req("status", "int"),
        req("headers", "list"),
        req("body", "body", "`null` when streamed", null=True),
        req("streamed", "bool"),
        opt("reason, http_version", "string"),
    )),
    RecordType(HTTP_CHUNK, (
        req("flow", "string"),
        req("dir", "string", "`\"request\"` or `\"response\"`", values=_DIRS),
        req("body", "body", "the **decoded** bytes of the batch (Content-Encoding undone)"),
        opt("n", "int", "index of the chunk record within flow + dir, from 0, with no gap"),
    )),
    RecordType(HTTP_END, (
        req("flow", "string"),
        req("size", "object", "body bytes per direction as they crossed the wire (still content-encoded), "
            "`{\"request\": n, \"response\": n}`; the decoded sizes are in each body's `size`"),
        req("duration_ms", "number"),
        req("ttfb_ms", "number", "time to the first response byte", null=True),
        opt("status", "int", "the response status, if any", null=True),
        opt("address", "string", "the IP address of the upstream connection the flow used; `null` if none was made",
            null=True),
    )),
    RecordType(HTTP_TRAILERS, (
        req("flow", "string"),
        req("dir", "string", "`\"request\"` or `\"response\"`", values=_DIRS),
        req("headers", "list", "`[[name, value], …]`, masked as headers are (§6)"),
        opt("stripped", "list", "request trailers only: the names of the fields the gateway removed (credentials "
            "never go upstream in a trailer)"),
    )),
    RecordType(HTTP_ERROR, (
        req("flow", "string"),
        req("phase", "string", "where it ended: `\"connect\"`, `\"request\"`, `\"response\"`, `\"client\"` (the client "
            "went away or reset it), `\"shutdown\"`, `\"request_header\"` / `\"idle\"` (a [timeout](configuration.md"
            "#timeouts-no-connection-or-exchange-holds-the-gateway-without-end)), `\"record\"` (a record of the flow "
            "could not be written) …"),
        req("message", "string"),
        opt("by", "string", "which side ended it, where known: `\"client\"`, `\"server\"` (the upstream: it refused the "
            "connection, closed it, or reset the stream) or `\"gateway\"` (a timeout, a record that could not be "
            "written, a storage failure mid-body)"),
        opt("conn", "string", "the client connection, for a `request_header` timeout (no request existed; its `flow` "
            "id is new)"),
        opt("lost", "string", "`phase` `\"record\"` only: the type of the record that could not be written and is "
            "missing (§5a); `wiretrail verify` reports it as a gap"),
    )),
    RecordType(AUTH_REFUSED, (
        req("flow", "string", "the refused flow's id"),
        req("conn", "string", "client connection id"),
        opt("mode", "string", "proxy mode"),
        req("method, url", "string", "`url` is `host:port` for a refused CONNECT"),
        req("status", "int", "what the client got: 401, 403, 407 or 503"),
        req("reason", "string", "a reason code ([identity.md](identity.md)): `expired`, `bad_signature`, "
            "`forbidden`, `unregistered` …"),
        req("message", "string", "the message the client got (never contains the token)"),
        opt("headers", "list", "the request's headers, credentials masked (§6)"),
        opt("dest", "dest", "as in `http.request`, when the destination was checked before the refusal", null=True),
    )),
    RecordType(TUNNEL, (
        req("conn", "string", "client connection id"),
        req("host", "string", "the CONNECT target, canonical (as `dest.host`)"),
        req("port", "int"),
        opt("address", "string", "the address the tunnel is connected to (`null` for a name mitmproxy resolves)",
            null=True),
        opt("sni", "string", "the TLS server name the client sent, if any", null=True),
    )),
    RecordType(WS_OPEN, (
        req("flow", "string"),
        req("conn", "string", "client connection id"),
        req("connection", "string", "the registered connection", null=True),
        req("url", "string", "the upgrade's URL, masked"),
        opt("subprotocol, extensions", "string", "`Sec-WebSocket-Protocol` / `-Extensions` of the 101", null=True),
    )),
    RecordType(WS_MESSAGE, (
        req("flow", "string"),
        req("from", "string", "`\"client\"` (client to upstream) or `\"server\"`", values=_SIDES),
        req("n", "int", "index of the message within flow + `from`, from 0"),
        req("kind", "string", "`\"text\"` or `\"binary\"` (the WebSocket opcode)", values=("text", "binary")),
        req("body", "body", "the whole message (all its frames, permessage-deflate undone), masked (§5, §6); "
            "`kind` says text or binary, not the body's `text`/`b64`"),
    )),
    RecordType(WS_CLOSE, (
        req("flow", "string"),
        req("code", "int", "the close code (1006 when a side went away without a close frame)", null=True),
        req("by", "string", "`\"client\"`, `\"server\"` or `\"gateway\"`", null=True),
        req("messages", "object", "messages per direction, `{\"client\": n, \"server\": n}`"),
        opt("reason", "string", "the close reason, masked"),
        opt("size", "object", "message bytes per direction"),
        opt("duration_ms", "number", "from `ws.open`", null=True),
        opt("message", "string", "why the gateway closed it, when it did"),
        opt("not_forwarded", "int", "`n` of the client message that was recorded but not forwarded (the gateway "
            "closed)"),
    )),
    RecordType(TCP_OPEN, (
        req("flow", "string"),
        req("conn", "string"),
        req("connection", "string", null=True),
        req("host", "string", "the destination", null=True),
        req("port", "int", null=True),
        opt("mode", "string", "proxy mode"),
        opt("via", "string", "`\"connect\"` (a tunnel), `\"upgrade\"` (after an HTTP 101), or the proxy mode "
            "(`\"reverse\"` …)"),
        opt("upgrade_of", "string", "with `via = \"upgrade\"`: the `flow` of the HTTP exchange that switched protocols"),
        opt("sni, alpn", "string", "of the client's TLS, when it used TLS", null=True),
    )),
    RecordType(TCP_MESSAGE, (
        req("flow", "string"),
        req("from", "string", "`\"client\"` or `\"server\"`", values=_SIDES),
        req("n", "int", "index within flow + `from`"),
        req("body", "body", "masked. A client read is recorded whole, before it is forwarded. A server read's masked "
            "text may move to a later record of its direction (as `http.chunk` bodies do); a last, possibly empty, "
            "server record at the end flushes it"),
    )),
    RecordType(TCP_CLOSE, (
        req("flow", "string"),
        req("messages, size", "object", "reads and bytes per direction"),
        opt("duration_ms", "number", null=True),
        opt("error", "string", "why it ended, if not cleanly (for instance bytes that could not be recorded, so the "
            "gateway closed it)"),
    )),
    RecordType(TCP_REFUSED, (
        req("conn", "string"),
        req("host", "string", null=True),
        req("port", "int", null=True),
        req("reason", "string", "`raw_tcp` (policy), `credential` (the connection injects one), `forbidden`, "
            "`unauthenticated`, `unregistered`, `protocol` (UDP, DNS, QUIC), `ignored` …"),
        req("message", "string"),
        opt("connection", "string", "the registered connection, if one matched", null=True),
        opt("protocol", "string", "`\"tcp\"`, `\"udp\"`, `\"dns\"` or `\"quic\"`"),
    )),
    RecordType(MCP_OPEN, (
        req("flow", "string"),
        req("command", "list", "the server command and its arguments (masked)"),
        req("pid", "int", "the server's process id"),
        opt("name", "string", "`--name`, a name for the server in the record", null=True),
        opt("parent_pid", "int", "the process that launched mcp-stdio (the MCP client)"),
        opt("cwd", "string", "the working directory"),
    )),
    RecordType(MCP_MESSAGE, (
        req("flow", "string"),
        req("from", "string", "`\"client\"` or `\"server\"`", values=_SIDES),
        req("n", "int", "index within flow + `from`"),
        req("body", "body", "the line without its newline, masked"),
        opt("partial", "bool", "a line longer than 16 MiB, recorded in parts"),
    )),
    RecordType(MCP_CLOSE, (
        req("flow", "string"),
        req("by", "string", "`\"client\"` (it closed the server's stdin), `\"server\"` (it exited), `\"signal\"`, "
            "`\"error\"` (recording failed)"),
        opt("exit", "int", "the server's exit status", null=True),
        opt("messages, size", "object", "lines and bytes per direction"),
        opt("duration_ms", "number"),
        opt("message", "string", "what went wrong, when something did"),
    )),
    RecordType(SESSION_CLOSE, (
        req("reason", "string", "`\"idle\"`, `\"max_duration\"`, `\"shutdown\"`, `\"storage_error\"` …"),
        req("counts", "object", "`flows`, `records` (including this one), `errors`"),
        opt("duration_s", "number", "seconds from open to close"),
        opt("remasked", "object", "only in a copy made by `wiretrail mask`: `dropped`, the original's signing "
            "records left out (per type)"),
    )),
    RecordType(CHECKPOINT, (
        req("key", "string", "signing key id"),
        req("sig", "string", "base64 Ed25519 signature"),
    )),
    RecordType(SEAL, (
        req("key", "string", "signing key id"),
        req("sig", "string", "base64 Ed25519 signature"),
    )),
    # Database records: docs/format.md describes them in one table of its own (type, fields, when).
    RecordType(PG_CONNECT, (req("conn", "string"), req("connection", "string"), req("client", "object"),
                            req("upstream", "object"), opt("server_version", "string")), documented=False),
    RecordType(PG_REFUSED, (req("conn", "string"), req("connection", "string"), req("reason", "string"),
                            req("sqlstate", "string"), req("message", "string")), documented=False),
    RecordType(PG_QUERY, (req("conn", "string"), req("n", "int"), req("sql", "string")), documented=False),
    RecordType(PG_PARSE, (req("conn", "string"), req("n", "int"), req("statement", "string"), req("sql", "string"),
                          req("param_types", "list")), documented=False),
    RecordType(PG_BIND, (req("conn", "string"), req("n", "int"), req("portal", "string"), req("statement", "string"),
                         req("params", "list")), documented=False),
    RecordType(PG_EXECUTE, (req("conn", "string"), req("n", "int"), req("portal", "string")), documented=False),
    RecordType(PG_FUNCTION, (req("conn", "string"), req("n", "int"), req("oid", "int"), req("args", "list")),
               documented=False),
    RecordType(PG_RESULT, (req("conn", "string"), req("n", "int", null=True), req("tag", "string", null=True),
                           req("rows", "int", null=True)), documented=False),
    RecordType(PG_CANCEL, (req("conn", "string"), req("forwarded", "bool")), documented=False),
    RecordType(PG_ERROR, (req("conn", "string"), req("phase", "string"), req("message", "string")), documented=False),
    RecordType(PG_END, (req("conn", "string"), req("reason", "string")), documented=False),
]

RECORDS: dict[str, RecordType] = {r.name: r for r in _TABLE}


def known(rtype: str) -> bool:
    return rtype in RECORDS


# -- checking one record ----------------------------------------------------------------------


def type_ok(value, f: Field) -> bool:
    if value is None:
        return f.nullable
    types = JSON_TYPES[f.type]
    if isinstance(value, bool) and bool not in types:
        return False  # JSON true/false is not a number
    if not isinstance(value, types):
        return False
    if f.values and value not in f.values:
        return False
    if f.type == "dest":
        return (isinstance(value.get("host"), str) and isinstance(value.get("port"), int)
                and not isinstance(value.get("port"), bool) and isinstance(value.get("address"), (str, type(None))))
    return True


def field_problems(rec: dict) -> list[str]:
    """What is wrong with a record's fields against the table (the envelope is checked elsewhere).
    A type the table does not hold has no field checks (a newer gateway's records)."""
    t = rec.get("t")
    spec = RECORDS.get(t) if isinstance(t, str) else None
    if spec is None:
        return []
    out = []
    for f in spec.fields:
        for name in f.names:
            if name not in rec:
                if f.required:
                    out.append(f"{t}: missing field \"{name}\"")
            elif not type_ok(rec[name], f):
                value = rec[name]
                if f.values and isinstance(value, str):
                    allowed = " or ".join(f'"{v}"' for v in f.values)
                    out.append(f"{t}: {name} {value!r} is not {allowed}")
                else:
                    out.append(f"{t}: field \"{name}\" has the wrong type ({type(value).__name__}), "
                               f"expected {f.type_text()}")
    return out


# -- docs/format.md ----------------------------------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "format.md"
_MARK = re.compile(r"<!-- fields:(?P<t>[a-z.]+) -->\n.*?<!-- /fields -->\n", re.S)


def fields_markdown(rtype: str) -> str:
    rows = ["| field | type | |", "|---|---|---|"]
    for f in RECORDS[rtype].fields:
        names = ", ".join(f"`{n}`" for n in f.names)
        what = "*required*" if f.required else ""
        if f.doc:
            what = f"{what}: {f.doc}" if what else f.doc
        rows.append(f"| {names} | {f.type_text()} | {what} |".replace(" |  |", " | |"))
    return "\n".join(rows) + "\n"


def render_doc(text: str) -> str:
    """docs/format.md with every `<!-- fields:TYPE -->` block regenerated from the table."""
    return _MARK.sub(lambda m: f"<!-- fields:{m['t']} -->\n{fields_markdown(m['t'])}<!-- /fields -->\n", text)


def documented_types(text: str) -> list[str]:
    return [m["t"] for m in _MARK.finditer(text)]


if __name__ == "__main__":
    DOC.write_text(render_doc(DOC.read_text()))
    print(f"rewrote the field tables in {DOC}", file=sys.stderr)
