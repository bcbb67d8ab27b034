"""The bench's fleet phases (issue 23), called by scripts/bench.py:

- `sessions`: N sessions opening at once. N clients, each from its own loopback address (a
  session is one identity from one address, so each opens a new session), connect first; then
  all send one SSE request at the same moment, and each times its first event. Plain and the
  gateway take turns, with fresh addresses every round, so every gateway round opens N new
  sessions. The figure is the p50 over the clients; the ratio is gateway / plain.
- `streamcpu`: CPU per streamed reply. Concurrent SSE replies through each proxy in rotated
  slices; the proxy's CPU time (utime + stime of the process and its writer process, from
  /proc) divided by the replies it carried.
- `scale`: requests/s through a load balancer (HAProxy, scripts/fleet_lb.py) in front of one
  and then two gateway processes writing to one store, in rotated slices; the ratio two / one.
  Each gateway runs on a CPU of its own (`--scale-cpus one-each`, taskset), as
  docs/deployment.md runs them; `--scale-cpus shared` lets them use every CPU.

How to read them: docs/performance.md.
"""
from __future__ import annotations

import asyncio
import gc
import os
import shutil
import time
from pathlib import Path

import fleet_lb

CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- helpers ------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and of the children it waited for... and of its live children
    (the writer process with storage.writer = "process")."""
    total = 0.0
    for p in [pid, *children(pid)]:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
    return total


def children(pid: int) -> list[int]:
    out = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out.extend(int(x) for x in f.read().split())
    except OSError:
        pass
    return out


def address(round_: int, k: int) -> str:
    """A loopback client address of its own for client k of a round (127.r.x.y, never 127.0.0.1)."""
    return f"127.{10 + round_}.{k // 250}.{2 + k % 250}"


# -- sessions opening at once ---------------------------------------------------------------


def run_sessions(bench, sizes_burst: tuple[int, ...], rounds: int) -> None:
    """Fresh plain and gateway processes, so the sessions other phases opened do not count."""
    from bench import _ms, pct

    plain = bench.start_proxy("plain", "burst-plain")
    gateway = bench.start_proxy("gateway", "burst-gateway")
    for t, what in ((plain, "plain mitmdump (sessions)"), (gateway, "the gateway (sessions)")):
        bench.ready(t, what)
        bench.preflight(t)
    try:
        r = 0
        for n in sizes_burst:
            firsts: dict[str, list[float]] = {"plain": [], "gateway": []}
            for i in range(rounds):
                order = (plain, gateway) if i % 2 == 0 else (gateway, plain)
                for t in order:
                    firsts[t.name].extend(asyncio.run(_burst(bench, t, n, r)))
                    r += 1
            for path, v in firsts.items():
                bench.put(f"burst{n}_first_p50_ms", path, _ms(pct(v, 50)))
                bench.put(f"burst{n}_first_p99_ms", path, _ms(pct(v, 99)))
                bench.put(f"burst{n}_ok", path, len(v))
            for t in (plain, gateway):
                if len(firsts[t.name]) != n * rounds:
                    bench.notes.append(f"sessions phase: {t.name} completed {len(firsts[t.name])} of "
                                       f"{n * rounds} streams in bursts of {n}")
    finally:
        for t in (plain, gateway):
            bench.check_log(t, "sessions")
            bench.procs.stop(t.proc)


async def _burst(bench, t, n: int, round_: int) -> list[float]:
    from bench import IO_TIMEOUT, AsyncConn, SSECollector

    conns = [AsyncConn(t, address(round_, k)) for k in range(n)]
    opened = await asyncio.gather(*(c.open() for c in conns), return_exceptions=True)
    for e in opened:
        if isinstance(e, BaseException):
            t.note_error("sessions", e)
    live = [c for c, e in zip(conns, opened) if not isinstance(e, BaseException)]
    await asyncio.sleep(0.3)  # the accepts are done; the proxy is quiet
    go = asyncio.Event()
    out: list[float] = []

    async def one(c) -> None:
        col = SSECollector()
        await go.wait()
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(c.request(bench.req.sse(t, 2, 0.0), col), IO_TIMEOUT)
            if col.arrivals:
                out.append(col.arrivals[0] - t0)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as e:
            t.note_error("sessions", e)
        finally:
            c.close()

    tasks = [asyncio.ensure_future(one(c)) for c in live]
    await asyncio.sleep(0)
    gc.disable()
    try:
        go.set()
        await asyncio.gather(*tasks)
    finally:
        gc.enable()
    return out


# -- CPU per streamed reply ---------------------------------------------------------------


def run_stream_cpu(bench, replies: int, concurrency: int = 8, slices: int = 6) -> None:
    """CPU per streamed reply of the main plain and gateway processes (their other phases are done)."""
    asyncio.run(_stream_cpu(bench, replies, concurrency, slices))


async def _stream_cpu(bench, replies: int, concurrency: int, slices: int) -> None:
    from bench import AsyncConn, SSECollector, rotated

    targets = [bench.targets[p] for p in ("plain", "gateway") if p in bench.targets]
    cpu = {t.name: 0.0 for t in targets}
    done = {t.name: 0 for t in targets}
    per_slice = max(concurrency, replies // slices)
    conns = {t.name: [AsyncConn(t) for _ in range(concurrency)] for t in targets}
    for cs in conns.values():
        await asyncio.gather(*(c.open() for c in cs))

    async def worker(t, c, todo: list) -> None:
        while todo:
            todo.pop()
            col = SSECollector()
            try:
                await c.request(bench.req.sse(t), col)
                if len(col.arrivals) == bench.sizes.sse_events:
                    done[t.name] += 1
            except (OSError, asyncio.IncompleteReadError, ValueError) as e:
                t.note_error("streamcpu", e)

    gc.disable()
    try:
        for i in range(slices):
            for t in rotated(targets, i):
                todo = list(range(per_slice))
                await asyncio.sleep(0.2)  # what the previous slice left (acks, fsyncs) is done
                c0 = cpu_seconds(t.proc.pid)
                await asyncio.gather(*(worker(t, c, todo) for c in conns[t.name]))
                await asyncio.sleep(0.2)  # its records are written: the writer's share counts
                cpu[t.name] += cpu_seconds(t.proc.pid) - c0
    finally:
        gc.enable()
        for cs in conns.values():
            for c in cs:
                c.close()
    for t in targets:
        n = done[t.name]
        bench.put("stream_cpu_ms", t.name, round(cpu[t.name] / n * 1000, 3) if n else None)
        bench.put("stream_cpu_n", t.name, n)


# -- one and two gateways behind the load balancer -------------------------------------------


def run_scale(bench, seconds: float, concurrency: int, slice_s: float = 1.0) -> None:
    """Requests/s through HAProxy in front of one gateway, then of two writing to one store."""
    if shutil.which("haproxy") is None:
        bench.notes.append("scale phase skipped: haproxy is not installed (apt-get install haproxy; "
                           ".ci/run installs it)")
        return
    store = bench.work / "sessions-fleet"
    store.mkdir()
    # One gateway per CPU, as docs/deployment.md runs them: the figure is then what a core adds.
    # Unpinned, one gateway with the process writer already spreads over both of this machine's cores.
    ncpu = len(os.sched_getaffinity(0))
    pin = bench.args.scale_cpus == "one-each" and ncpu > 1 and shutil.which("taskset") is not None
    if bench.args.scale_cpus == "one-each" and not pin:
        bench.notes.append("scale phase: gateways not pinned (one CPU, or no taskset)")
    gws = [bench.start_proxy("gateway", f"fleet-gw{i + 1}", storage=store, gateway_id=f"gw{i + 1}",
                             cpu=i % ncpu if pin else None)
           for i in range(2)]
    for t in gws:
        bench.ready(t, f"gateway {t.gateway_id} (scale)")
    lbs = {}
    try:
        for n in (1, 2):
            lb = fleet_lb.HAProxy([("127.0.0.1", t.port) for t in gws[:n]], bench.work / f"haproxy-{n}")
            lb.start(bench.procs.spawn)
            lbs[n] = lb
        targets = {n: bench.lb_target(lb, f"lb{n}") for n, lb in lbs.items()}
        for t in targets.values():
            bench.preflight(t)
        rps = asyncio.run(_scale(bench, targets, seconds, concurrency, slice_s))
        for n, v in rps.items():
            bench.put("scale_rps", f"{n}gw", v)
        if rps.get(1) and rps.get(2):
            bench.put("scale_ratio", "gateway", round(rps[2] / rps[1], 3))
    finally:
        for lb in lbs.values():
            lb.stop(bench.procs)
        for t in gws:
            bench.check_log(t, "scale")
            bench.procs.stop(t.proc)
    summary = fleet_summary(store)
    bench.put("scale_recorded", "gateway", summary["requests"])
    sent = sum(t.sent for t in targets.values()) if lbs else 0
    bench.put("scale_sent", "gateway", sent)
    if summary["requests"] != sent or not summary["clean"]:
        bench.notes.append(f"scale phase: {summary['requests']} http.request records for {sent} requests sent; "
                           f"files closed cleanly: {summary['clean']} {summary.get('error') or ''}")


async def _scale(bench, targets: dict, seconds: float, concurrency: int, slice_s: float) -> dict[int, float]:
    from bench import AsyncConn, rotated

    conns = {n: [AsyncConn(t) for _ in range(concurrency)] for n, t in targets.items()}
    for cs in conns.values():
        await asyncio.gather(*(c.open() for c in cs))
    done = {n: 0 for n in targets}
    elapsed = {n: 0.0 for n in targets}

    async def worker(c, data: bytes, deadline: float, count: list) -> None:
        while time.monotonic() < deadline:
            try:
                await c.request(data)
                count[0] += 1
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as e:
                c.t.note_error("scale", e)
                await asyncio.sleep(0.01)

    async def slice_(n: int, s: float) -> tuple[int, float]:
        count = [0]
        t = targets[n]
        data = bench.req.small(t)
        t0 = time.monotonic()
        await asyncio.gather(*(worker(c, data, t0 + s, count) for c in conns[n]))
        return count[0], time.monotonic() - t0

    for n in targets:  # warm-up, not counted
        await slice_(n, 0.3)
    gc.disable()
    try:
        for i in range(max(1, round(seconds / slice_s))):
            for n in rotated(list(targets), i):
                k, dt = await slice_(n, slice_s)
                done[n] += k
                elapsed[n] += dt
    finally:
        gc.enable()
        for cs in conns.values():
            for c in cs:
                c.close()
    return {n: round(done[n] / elapsed[n], 1) if elapsed[n] else 0.0 for n in targets}


def fleet_summary(store: Path) -> dict:
    from bench import summarize_store

    return summarize_store(store)
