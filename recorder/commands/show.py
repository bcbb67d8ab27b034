"""`wiretrail show SESSION`: one session as a transcript a reviewer can read.

Default: who and when, then per exchange the conversation's new messages, tool calls
and results, the reply (assembled from its stream), model, usage and timing
(recorder/forensics/transcript). `--json` gives the same for machines, `--records` one line per
record, `--raw` the stored lines exactly. Everything but `--raw` is masked again with
today's rules (and --config's) before it is printed (recorder/masking/output.py).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import orjson

from recorder.commands.common import (
    SessionNotFound,
    add_session_arguments,
    find_session,
    human_bytes,
    human_duration,
    iso_utc,
    masked_for_output,
    safe,
)
from recorder.forensics.exchange import header as find_header, exchanges as flow_exchanges
from recorder.forensics.reader import SessionRead, read_session
from recorder.forensics.summary import summarize
from recorder.forensics.transcript import build
from recorder.forensics.transcript.render import TEXT_LIMIT, Style, turn_json, turn_lines
from recorder.forensics.transcript.rpc import Namer, body_summary, is_rpc_exchange, tree_lines
from recorder.forensics.verify import unsealed_word
from recorder.protocols.postgres.transcript import sql_log_lines, statements as sql_statements
from recorder.store import format_v1

PREVIEW_CHARS = 200
ENVELOPE = set(format_v1.ENVELOPE)


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "show",
        help="show one session as a transcript",
        description=(
            "Show one session: who, client, when and state, then each exchange: the conversation's new "
            "messages, tool calls and results, the reply (assembled from its stream), model, usage, timing."
        ),
    )
    add_session_arguments(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="the transcript as one JSON document")
    out.add_argument("--records", action="store_true", help="one line per record instead of the transcript")
    out.add_argument("--raw", action="store_true", help="the records as JSON lines, exactly as stored")
    p.add_argument("--full", action="store_true", help=f"do not cut message text at {TEXT_LIMIT} characters")
    p.add_argument("--tree", action="store_true",
                   help="also show each Connect/gRPC message as its whole field tree (field numbers, or names "
                        "with --descriptors)")
    p.add_argument("--descriptors", metavar="FILE", action="append", default=[],
                   help="a FileDescriptorSet (protoc --include_imports --descriptor_set_out) that names protobuf "
                        "fields; repeatable; default: review.descriptor_sets of --config")
    p.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="colour: auto (default) = on a terminal unless NO_COLOR is set",
    )


def body_preview(body) -> str:
    if not isinstance(body, dict):
        return ""
    size = body.get("size")
    size_text = human_bytes(size) if isinstance(size, int) else "? B"
    flags = []
    if body.get("truncated"):
        flags.append("truncated by the gateway")
    if body.get("encoding"):
        flags.append(f"content-encoding {body['encoding']}" + (" (not decoded)" if body.get("decoded") is False else ""))
    note = f" ({', '.join(flags)})" if flags else ""
    if isinstance(body.get("messages"), list):  # Connect/gRPC
        return f"body {size_text}{note}: {body_summary(body)}"
    if isinstance(body.get("text"), str):
        text = body["text"]
        shown = text[:PREVIEW_CHARS]
        more = "..." if len(text) > PREVIEW_CHARS else ""
        return f"body {size_text}{note}: {shown}{more}"
    return f"body {size_text}{note}: <binary>"


def record_details(rec: dict) -> tuple[str, str]:
    """(summary, body preview) of one record."""
    t = rec.get("t")
    if t == "session.open":
        ident = rec.get("identity") or {}
        return f"who {ident.get('sub')}  signing key {rec.get('key') or '(none)'}", ""
    if t == "http.request":
        conn = f"  [{rec['connection']}]" if rec.get("connection") else ""
        body = "(body streamed: see http.chunk)" if rec.get("streamed") and rec.get("body") is None else body_preview(rec.get("body"))
        return f"{rec.get('method')} {rec.get('url')}{conn}", body
    if t == "http.response":
        body = "(body streamed: see http.chunk)" if rec.get("streamed") and rec.get("body") is None else body_preview(rec.get("body"))
        return f"{rec.get('status')} {rec.get('reason') or ''}".rstrip(), body
    if t == "http.chunk":
        return f"{rec.get('dir')} #{rec.get('n')}", body_preview(rec.get("body"))
    if t == "http.end":
        size = rec.get("size")
        sizes = " ".join(f"{k} {human_bytes(v)}" for k, v in size.items() if isinstance(v, int)) if isinstance(size, dict) else ""
        timing = f"{rec.get('duration_ms')} ms"
        if rec.get("ttfb_ms") is not None:
            timing += f" (first byte {rec.get('ttfb_ms')} ms)"
        return f"{timing}  {sizes}".rstrip(), ""
    if t == "http.error":
        return f"{rec.get('phase')}: {rec.get('message')}", ""
    if t == "session.close":
        counts = rec.get("counts") or {}
        parts = " ".join(f"{k}={v}" for k, v in counts.items()) if isinstance(counts, dict) else ""
        return f"reason {rec.get('reason')}  {parts}".rstrip(), ""
    if t in ("checkpoint", "seal"):
        return f"key {rec.get('key')}", ""
    rest = {k: v for k, v in rec.items() if k not in ENVELOPE}
    text = orjson.dumps(rest).decode()
    return text[:PREVIEW_CHARS] + ("..." if len(text) > PREVIEW_CHARS else ""), ""


def _clock(ts) -> str:
    if not isinstance(ts, (int, float)) or isinstance(ts, bool):
        return "?" * 12
    return time.strftime("%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}"


def header(read: SessionRead) -> list[str]:
    s = summarize(read)
    opened = read.open_record or {}
    ident = opened.get("identity") if isinstance(opened.get("identity"), dict) else {}
    who = str(ident.get("sub") or "-")
    if ident.get("email"):
        who += f" <{ident['email']}>"
    if ident.get("groups"):
        who += "  groups: " + ", ".join(map(str, ident["groups"]))
    if ident.get("iss"):
        who += f"  issuer: {ident['iss']}"
    if ident.get("method"):
        who += f"  (identity: {ident['method']}"
        who += ", NOT authenticated)" if ident.get("authenticated") is False else ")"
    gw = opened.get("gateway") if isinstance(opened.get("gateway"), dict) else {}
    state = f"{s.state}  ({s.records} records, last seq {read.last_seq})"
    if s.state == "unsealed":
        word = unsealed_word(read.path, s.session_id)
        state = f"{word}  ({s.records} records, last seq {read.last_seq})" + (
            "  - still being recorded" if word.startswith("open") else
            "  - not closed: the gateway stopped before the session ended")
    if read.truncated_tail:
        state += "  - a partial last write was dropped"
    agents = sorted(
        {ua for r in read.records if r.get("t") == "http.request" and (ua := find_header(r.get("headers"), "user-agent"))}
    )
    lines = [
        f"session   {s.session_id or '-'}",
        f"file      {read.path}",
        f"state     {state}",
        f"who       {who}",
        f"client    {s.client or '-'}" + (f"  user-agent: {'; '.join(agents[:3])}" if agents else ""),
        *([f"agent     {s.agent or '-'}  run {s.run}  (named by the client; groups records only)"] if s.run else []),
        f"gateway   {gw.get('host', '-')} (wiretrail {gw.get('version', '?')})",
        f"when      {iso_utc(s.start, ms=True)} .. {iso_utc(s.end, ms=True)}  ({human_duration(s.duration)})",
        f"traffic   {s.exchanges} exchange(s), {human_bytes(s.bytes)}",
    ]
    if read.problems:
        lines.append(f"PROBLEMS  {len(read.problems)}: this file is damaged or was tampered with")
        lines.extend(f"          {p}" for p in read.problems)
    return lines


def record_lines(rec: dict) -> list[str]:
    flow = rec.get("flow")
    short = flow[:8] if isinstance(flow, str) else ""
    summary, body = record_details(rec)
    seq = rec.get("seq")
    first = f"{seq if isinstance(seq, int) else '?':>5} {_clock(rec.get('ts'))} {str(rec.get('t')):<14} {short:<8}  {summary}"
    out = [safe(first.rstrip())]
    if body:
        out.append(" " * 44 + safe(body))
    return out


def use_colour(choice: str, stream) -> bool:
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR") or os.environ.get("TERM") == "dumb":
        return False
    return hasattr(stream, "isatty") and stream.isatty()


def footer(read: SessionRead) -> list[str]:
    out = []
    checkpoints = sum(1 for r in read.records if r.get("t") == "checkpoint")
    for rec in read.records:
        if rec.get("t") == "session.close":
            counts = rec.get("counts") if isinstance(rec.get("counts"), dict) else {}
            out.append(
                f"closed    {iso_utc(rec.get('ts'), ms=True)}  reason {rec.get('reason')}  "
                + " ".join(f"{k}={v}" for k, v in counts.items())
            )
        elif rec.get("t") == "seal":
            out.append(f"sealed    {iso_utc(rec.get('ts'), ms=True)}  key {rec.get('key')}  ({checkpoints} checkpoint(s) before it)")
    if checkpoints and not any(r.get("t") == "seal" for r in read.records):
        out.append(f"signed    {checkpoints} checkpoint(s), no seal")
    return out


def mcp_sessions(records: list[dict]) -> tuple[list, dict, str | None]:
    """The MCP sessions of a session file (recorder/protocols/mcp), which flow is whose, and why
    they could not be read (recorded data is untrusted: then each exchange is shown on its own)."""
    from recorder.protocols.mcp.session import sessions_of

    try:
        sessions, of_flow = sessions_of(records, flow_exchanges(records))
        return sessions, of_flow, None
    except Exception as e:  # noqa: BLE001 - a reader bug must not hide the exchanges
        return [], {}, f"the MCP tool-call log could not be built ({type(e).__name__}: {e}); exchanges shown one by one"


def mcp_lines(session, style, limit, safe) -> list[str]:
    from recorder.protocols.mcp.render import session_lines

    return session_lines(session, style, limit, safe)


def load_descriptors(args: argparse.Namespace):
    """The descriptor sets of --descriptors, or of review.descriptor_sets in --config; None if none.
    Raises SessionNotFound with a message when one cannot be read."""
    from recorder.protocols.connect.descriptors import DescriptorError, Descriptors

    paths = list(args.descriptors)
    if not paths and args.config:
        from recorder.config import ConfigError, load_config

        try:
            paths = list(load_config(args.config, read_secrets=False).review.descriptor_sets)
        except (ConfigError, OSError) as e:
            raise SessionNotFound(str(e)) from e
    if not paths:
        return None
    try:
        return Descriptors(paths)
    except DescriptorError as e:
        raise SessionNotFound(str(e)) from e


def transcript_json(read: SessionRead, descriptors=None) -> dict:
    from recorder.protocols.mcp.render import session_json

    s = summarize(read)
    sessions, of_flow, mcp_problem = mcp_sessions(read.records)
    numbers = {id(m): k for k, m in enumerate(sessions)}
    opened = read.open_record or {}
    return {
        "session": s.session_id,
        "file": str(read.path),
        "state": s.state,
        "problems": [str(p) for p in read.problems],
        "identity": opened.get("identity"),
        "client": opened.get("client"),
        "gateway": opened.get("gateway"),
        "start": s.start,
        "end": s.end,
        "duration_s": s.duration,
        "exchanges": [turn_json(t) | ({"mcp_session": numbers[id(of_flow[t.exchange.flow])]}
                                      if t.exchange.flow in of_flow else {}) for t in build(read.records, descriptors)],
        "mcp": [session_json(m) for m in sessions],
        **({"mcp_problem": mcp_problem} if mcp_problem else {}),
        "database": [{k: v for k, v in e.items() if k != "record"} | ({"record": {
            k: v for k, v in e["record"].items() if k not in ENVELOPE}} if "record" in e else {})
            for e in sql_statements(read.records)],
        "close": next((
            {k: v for k, v in r.items() if k not in ENVELOPE} for r in read.records if r.get("t") == "session.close"
        ), None),
        "sealed": any(r.get("t") == "seal" for r in read.records),
        "checkpoints": sum(1 for r in read.records if r.get("t") == "checkpoint"),
    }


def run(args: argparse.Namespace) -> int:
    try:
        path = find_session(args.session, args.dir, args.config)
        descriptors = load_descriptors(args)
    except SessionNotFound as e:
        print(f"wiretrail show: {e}", file=sys.stderr)
        return 2
    read = read_session(path)
    if not args.raw:
        read = masked_for_output(read, args.config)
        if read is None:
            return 2
    if args.raw:
        out = sys.stdout.buffer
        for line in read.lines:
            out.write(line + b"\n")
        out.flush()
        for p in read.problems:
            print(f"wiretrail show: {path}: {p}", file=sys.stderr)
        return 0
    if args.json:
        sys.stdout.write(orjson.dumps(transcript_json(read, descriptors), option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    for line in header(read):
        print(safe(line))
    print()
    if args.records:
        for rec in read.records:
            for line in record_lines(rec):
                print(line)
        return 0
    style = Style(use_colour(args.color, sys.stdout))
    limit = None if args.full else TEXT_LIMIT
    last_system: dict = {}
    turns = build(read.records, descriptors)
    sql_log = sql_log_lines(read.records)  # database connections (recorder/protocols/postgres)
    # MCP: each session's exchanges read as one tool-call log, where its first exchange was.
    sessions, of_flow, mcp_problem = mcp_sessions(read.records)
    if mcp_problem:
        print(style("warn", safe(mcp_problem)))
    shown: set[int] = set()
    if not turns and not sql_log and not sessions:
        print("(no exchanges)")
    namer = Namer(descriptors)
    for i, turn in enumerate(turns):
        mcp = of_flow.get(turn.exchange.flow)
        if mcp is not None:
            if id(mcp) in shown:
                continue
            shown.add(id(mcp))
            lines = mcp_lines(mcp, style, limit, safe)
        else:
            lines = turn_lines(turn, style, limit, safe, last_system)
        for line in lines:
            print(line)
        ex = turn.exchange
        if args.tree and is_rpc_exchange(ex) and (i + 1 == len(turns) or turns[i + 1].exchange is not ex):
            for line in tree_lines(ex, namer):
                print(safe(line))
        print()
    for mcp in sessions:  # over stdio (wiretrail mcp-stdio): no HTTP exchange
        if id(mcp) not in shown:
            for line in mcp_lines(mcp, style, limit, safe):
                print(line)
            print()
    if sql_log:
        for line in sql_log:
            print(safe(line))
        print()
    for line in footer(read):
        print(safe(line))
    return 0
