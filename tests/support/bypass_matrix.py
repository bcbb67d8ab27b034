"""The bypass matrix (issue 15): every way in, and what the gateway must do with it.

One list of cells (mode x protocol x destination x policy) and the outcome each must have.
tests/e2e/test_bypass_matrix_e2e.py drives every cell against real gateways and asserts that
outcome; `markdown_table()` renders the same list for docs/integrity.md, and a test keeps the
two in step. `python -m tests.support.bypass_matrix` prints the table.

Outcomes:
  recorded   the marker reached the upstream and is in the artifact
  refused    the marker never reached the upstream; the client was told so
  tunnelled  an unregistered host under policy.unregistered = "tunnel": the connection passes
             uninspected (that is the policy), and a `tunnel` record names host and caller; a
             registered host is never tunnelled
  n/a        the combination does not exist (the reason is in the table)
"""
from __future__ import annotations

from dataclasses import dataclass

MODES = ("regular", "reverse")
PROTOCOLS = ("http1", "h2", "h2-trailers", "websocket", "raw-tcp")
DESTINATIONS = ("name", "alias", "unregistered")
POLICIES = ("deny", "tunnel", "record")

PROTOCOL_TEXT = {
    "http1": "HTTP/1.1 (marker in the body)",
    "h2": "HTTP/2 (marker in the body)",
    "h2-trailers": "HTTP/2 with request trailers (marker in a trailer only)",
    "websocket": "WebSocket (marker in a client message)",
    "raw-tcp": "raw TCP, not HTTP (marker in the bytes)",
}
DESTINATION_TEXT = {
    "name": "registered host by name (`localhost`)",
    "alias": "registered host by address alias (`127.0.0.1`)",
    "unregistered": "unregistered host (`127.0.0.1`, another port)",
}
MODE_TEXT = {
    "regular": "regular (CONNECT)",
    "reverse": "reverse",
}


@dataclass(frozen=True)
class Cell:
    mode: str
    protocol: str
    destination: str
    policy: str

    @property
    def id(self) -> str:
        return f"{self.mode}-{self.protocol}-{self.destination}-{self.policy}"


@dataclass(frozen=True)
class Expect:
    outcome: str  # recorded | refused | tunnelled | n/a
    status: int | None = None  # the HTTP status the client gets when refused, where there is one
    how: str = ""  # for the table: how it is refused, or why n/a


def cells() -> list[Cell]:
    return [Cell(m, p, d, pol) for m in MODES for p in PROTOCOLS for d in DESTINATIONS for pol in POLICIES]


def expected(cell: Cell) -> Expect:
    """What the gateway must do. The gateways of the test record raw TCP (policy.raw_tcp =
    "record"): with the default ("refuse") every raw-TCP cell is refused (test_raw_tcp_e2e.py)."""
    if cell.destination != "unregistered":
        return Expect("recorded")  # a registered host, by any name and under any policy
    if cell.policy == "record":
        return Expect("recorded")
    if cell.policy == "deny":
        if cell.mode == "regular":
            return Expect("refused", 403, "403 at the CONNECT")
        if cell.protocol == "raw-tcp":
            return Expect("refused", None, "closed, `tcp.refused`")
        return Expect("refused", 403, "403")
    # tunnel
    if cell.mode == "regular":
        return Expect("tunnelled")
    if cell.protocol == "raw-tcp":
        return Expect("tunnelled", None, "a `reverse:tcp://` listener the operator set up")
    return Expect("recorded", None, "reverse mode always terminates HTTP: nothing to tunnel")


def _label(e: Expect) -> str:
    text = e.outcome
    if e.how:
        text += f" ({e.how})"
    return text


def markdown_table() -> str:
    """The matrix for docs/integrity.md: one row per mode, protocol and destination; one column
    per policy."""
    head = ["mode", "protocol", "destination", *(f"`{p}`" for p in POLICIES)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in MODES:
        for p in PROTOCOLS:
            for d in DESTINATIONS:
                row = [MODE_TEXT[m], PROTOCOL_TEXT[p], DESTINATION_TEXT[d]]
                row += [_label(expected(Cell(m, p, d, pol))) for pol in POLICIES]
                lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def figures() -> dict[str, int]:
    out: dict[str, int] = {}
    for c in cells():
        out[expected(c).outcome] = out.get(expected(c).outcome, 0) + 1
    return out


def figures_sentence() -> str:
    f = figures()
    return (f"{len(cells())} cells: {f.get('recorded', 0)} recorded, {f.get('refused', 0)} refused, "
            f"{f.get('tunnelled', 0)} tunnelled, {f.get('n/a', 0)} not applicable.")


if __name__ == "__main__":
    print(figures_sentence())
    print()
    print(markdown_table())
