"""Is a gateway writing this store right now? The marker that tells "open" from "stopped".

The gateway that holds a store's ledger (recorder/store/ledger.py, under an exclusive lock) writes
`<store>/gateway.live` when it takes the ledger and removes it when it lets go: its host, its pid
and that process's start time. A reader (`show`, `verify`, `ls`) asks `gateway_state(store)`:

- "running": the marker names this host and a process that is alive with the same start time
  (a reused pid is not mistaken for the gateway);
- "elsewhere": the marker names another host, whose processes this one cannot see;
- "stopped": the marker is there but its process is gone or a zombie (the gateway crashed or
  was killed), or there is no marker (no gateway has the store).

A session that the ledger still has open is then "open" on a running gateway, and "unsealed
(gateway stopped)" otherwise. The marker is a hint for readers, never evidence: verify's verdict
on the chain and signatures does not depend on it.
"""
from __future__ import annotations

import json
import os
import socket
from pathlib import Path

LIVE_NAME = "gateway.live"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat), or None
    if it is gone. A zombie (exited, not yet reaped: the writer process of a gateway killed with
    -9 until init reaps it) is gone: it holds no lock and writes nothing."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    return None if fields[0] == "Z" else fields[19]


def process_running(pid: int) -> bool:
    """`pid` exists and is not a zombie."""
    return _start_time(pid) is not None


def mark_live(store: Path) -> bool:
    """Note that this process writes the store (called with the ledger lock held). Best effort:
    on a full disk the marker is left out (readers then say the gateway stopped), never the ledger."""
    pid = os.getpid()
    data = {"host": socket.gethostname(), "pid": pid, "start": _start_time(pid)}
    tmp = Path(store) / f".{LIVE_NAME}.{pid}"
    try:
        tmp.write_text(json.dumps(data))
        os.replace(tmp, Path(store) / LIVE_NAME)
        return True
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
        return False


def clear_live(store: Path) -> None:
    try:
        data = json.loads((Path(store) / LIVE_NAME).read_text())
        if data.get("pid") == os.getpid():
            (Path(store) / LIVE_NAME).unlink()
    except (OSError, ValueError):
        pass


def gateway_state(store: Path | None) -> str:
    """"running", "elsewhere" or "stopped" (see above)."""
    if store is None:
        return "stopped"
    try:
        data = json.loads((Path(store) / LIVE_NAME).read_text())
    except (OSError, ValueError):
        return "stopped"
    if not isinstance(data, dict):
        return "stopped"
    if data.get("host") != socket.gethostname():
        return "elsewhere"
    pid = data.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return "stopped"
    start = _start_time(pid)
    return "running" if start is not None and start == data.get("start") else "stopped"


def unsealed_state(ledger_state: str | None, store: Path | None) -> str:
    """The honest word for an unsealed session: "open" while its gateway runs, else why not."""
    if ledger_state == "failed":
        return "unsealed (storage error)"
    if ledger_state == "recovered":
        return "unsealed (crash)"
    live = gateway_state(store)
    if ledger_state == "open" and live == "running":
        return "open"
    if ledger_state == "open" and live == "elsewhere":
        return "open (gateway on another host)"
    return "unsealed (gateway stopped)"
