"""The Postgres phase of the bench: pgbench direct, through a plain relay, through the gateway.

    python scripts/bench_postgres.py [--quick] [--rounds N] [--seconds S] [--clients 8] [--json FILE]
    python scripts/bench.py --only postgres          # the same, as a phase of the bench

A PostgreSQL cluster of its own (initdb into a temporary directory, as the `postgres` user when
run as root; TLS on, scram-sha-256), initialised by `pgbench -i`. Three paths, all over TLS
(`sslmode=require`):

  direct   pgbench -> PostgreSQL
  plain    pgbench -> mitmdump --mode reverse:tcp://db (no script: a byte relay; TLS end to end)
  gateway  pgbench -> mitmdump -s addons/gateway.py, a connection of kind "postgres" (TLS,
           the token as the password, SCRAM to the database with the gateway's credential,
           every statement recorded before it is forwarded, signed checkpoints and ledger)

pgbench runs the built-in select-only (`-S`: one SELECT per transaction) and simple-update
(`-N`: BEGIN, UPDATE, SELECT, INSERT, END) scripts with 8 clients, simple protocol. The phases
go round-robin over the paths (the order rotating every round), so machine noise hits them all
alike. Latency is from pgbench's per-transaction log (-l). Targets (issue 20): the gateway adds
at most 0.5 ms to the select-only p50 over direct, and sustains at least 2,000 statements/s.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import pwd
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench import Procs, free_port, make_upstream_cert, wait_listening  # noqa: E402

MITMDUMP = Path(sys.executable).parent / "mitmdump"
PATHS = ("direct", "plain", "gateway")
# name -> (pgbench flag, statements per transaction, clients; None = --clients). "select-only, 1
# client" is the latency without queueing for the CPUs: informative, the targets use 8 clients.
SCRIPTS = {"select-only": ("-S", 1, None), "simple-update": ("-N", 5, None), "select-only, 1 client": ("-S", 1, 1)}
ADDED_P50_LIMIT_MS = 0.5
STATEMENTS_PER_S_MIN = 2000.0
ISSUER, AUDIENCE = "wiretrail-bench", "wiretrail"


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(p.split("/")[4]))
    if found:
        return found[-1]
    path = shutil.which(name)
    if not path:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (apt-get install postgresql postgresql-contrib)")
    return path


class Cluster:
    """A throwaway PostgreSQL server on 127.0.0.1 with TLS and scram-sha-256."""

    def __init__(self, work: Path):
        self.root = Path(tempfile.mkdtemp(prefix="wiretrail-bench-pg-"))
        self.work = work
        self.port = free_port()
        self.password = "bench-db-" + secrets.token_urlsafe(18)
        self.as_root = os.geteuid() == 0

    def _as_pg(self, *cmd, **kw):
        if self.as_root:
            cmd = ("runuser", "-u", "postgres", "--", *cmd)
        return subprocess.run(cmd, capture_output=True, text=True, cwd="/", **kw)

    def _own(self, p: Path, mode: int) -> None:
        p.chmod(mode)
        if self.as_root:
            u = pwd.getpwnam("postgres")
            os.chown(p, u.pw_uid, u.pw_gid)

    def start(self) -> None:
        self._own(self.root, 0o700)
        pw = self.root / "pw"
        pw.write_text(self.password + "\n")
        self._own(pw, 0o600)
        data = self.root / "data"
        r = self._as_pg(pg_bin("initdb"), "-D", str(data), "-U", "app", "--auth=scram-sha-256", f"--pwfile={pw}",
                        "-E", "UTF8", "--no-locale", "--no-sync")
        if r.returncode:
            raise RuntimeError(f"initdb failed: {r.stderr}")
        cert, key = make_upstream_cert(self.root)
        for src, name in ((cert, "server.crt"), (key, "server.key")):
            shutil.copy(src, data / name)
            self._own(data / name, 0o600)
        with open(data / "postgresql.conf", "a") as f:
            f.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\nunix_socket_directories = '{self.root}'\n"
                    "ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n"
                    "max_connections = 50\nshared_buffers = 128MB\nsynchronous_commit = off\n")
        (data / "pg_hba.conf").write_text("local all all trust\nhostssl all all 127.0.0.1/32 scram-sha-256\n")
        r = self._as_pg(pg_bin("pg_ctl"), "-D", str(data), "-l", str(self.root / "log"), "-w", "start")
        if r.returncode:
            raise RuntimeError(f"PostgreSQL did not start: {r.stderr}")
        r = subprocess.run([pg_bin("pgbench"), "-i", "-q", "-s", "10", "-h", str(self.root), "-p", str(self.port),
                            "-U", "app", "postgres"], capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError(f"pgbench -i failed: {r.stderr}")

    def stop(self) -> None:
        self._as_pg(pg_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "stop")
        shutil.rmtree(self.root, ignore_errors=True)


def _gateway_config(work: Path, cluster: Cluster, listen: int) -> tuple[Path, str]:
    from recorder.auth.identity import mint_dev_token
    from recorder.store.signing import generate

    signing_key = generate(work / "signing-key")[0]
    secret = secrets.token_urlsafe(48)
    (work / "dev-secret").write_text(secret + "\n")
    (work / "db-password").write_text(cluster.password + "\n")
    for f in ("dev-secret", "db-password"):
        (work / f).chmod(0o600)
    toml = work / "gateway-pg.toml"
    toml.write_text(f"""# written by scripts/bench_postgres.py
[storage]
dir = "{work / 'store'}"
signing_key = "{signing_key}"

[identity]
mode = "jwt"
issuer = "{ISSUER}"
audience = "{AUDIENCE}"
hs256_secret = "file:{work / 'dev-secret'}"

[[connections]]
name = "benchdb"
kind = "postgres"
listen = "127.0.0.1:{listen}"
upstream = "127.0.0.1:{cluster.port}"
user = "app"
credential = "file:{work / 'db-password'}"
upstream_tls = "require"
allow_groups = ["bench"]
""")
    token = mint_dev_token(secret, sub="bench", groups=["bench"], issuer=ISSUER, audience=AUDIENCE, ttl=12 * 3600)
    return toml, token


def _pgbench(port: int, user: str, password: str, flag: str, clients: int, seconds: float, log_prefix: Path) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSWORD=password, PGSSLMODE="require", PGUSER=user, PGHOST="127.0.0.1", PGPORT=str(port),
               PGDATABASE="postgres")
    cmd = [pg_bin("pgbench"), "-n", flag, "-c", str(clients), "-j", str(min(clients, 2)), "-T", str(int(seconds)),
           "-l", f"--log-prefix={log_prefix}"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=seconds + 120)
    if r.returncode:
        raise RuntimeError(f"pgbench {flag} on port {port} failed: {r.stderr[-2000:]}")
    return r.stdout


def _latencies(prefix: Path) -> list[float]:
    """Per-transaction latencies (ms) from pgbench -l files."""
    out = []
    for f in glob.glob(str(prefix) + "*"):
        with open(f) as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 3:
                    out.append(int(parts[2]) / 1000.0)
        os.unlink(f)
    return out


def _pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def run(rounds: int = 3, seconds: float = 10.0, clients: int = 8, keep: bool = False, log=print) -> dict:
    """Run the phase; returns the results (and prints progress with `log`)."""
    procs = Procs()
    work = Path(tempfile.mkdtemp(prefix="wiretrail-bench-pg-work-"))
    cluster = Cluster(work)
    results: dict = {"rounds": rounds, "seconds": seconds, "clients": clients, "scripts": {},
                     "load_average_before": os.getloadavg()[0]}
    try:
        log("bench postgres: starting PostgreSQL and pgbench -i (scale 10)")
        cluster.start()
        confdir = work / "mitmproxy"
        relay_port, gw_port, gw_http = free_port(), free_port(), free_port()
        relay_log = work / "relay.log"
        relay = procs.spawn([str(MITMDUMP), "-q", "--listen-host", "127.0.0.1",
                             "--mode", f"reverse:tcp://127.0.0.1:{cluster.port}@{relay_port}",
                             "--set", f"confdir={confdir}-plain"], relay_log)
        wait_listening(relay_port, relay, relay_log, "the plain relay")
        toml, token = _gateway_config(work, cluster, gw_port)
        gw_log = work / "gateway.log"
        gw = procs.spawn([str(MITMDUMP), "-s", str(ROOT / "addons" / "gateway.py"), "--listen-host", "127.0.0.1",
                          "--mode", f"regular@{gw_http}", "--set", f"confdir={confdir}",
                          "--set", f"wiretrail_config={toml}"], gw_log)
        wait_listening(gw_port, gw, gw_log, "the gateway's database listener")
        ports = {"direct": cluster.port, "plain": relay_port, "gateway": gw_port}
        passwords = {"direct": cluster.password, "plain": cluster.password, "gateway": token}
        lat: dict = {s: {p: [] for p in PATHS} for s in SCRIPTS}
        tx: dict = {s: {p: 0 for p in PATHS} for s in SCRIPTS}
        wall: dict = {s: {p: 0.0 for p in PATHS} for s in SCRIPTS}
        for r in range(rounds):
            order = PATHS[r % 3:] + PATHS[:r % 3]
            for i, (script, (flag, _, n_clients)) in enumerate(SCRIPTS.items()):
                for path in order:
                    log(f"bench postgres: round {r + 1}/{rounds} {script} {path}")
                    prefix = work / f"{path}-{i}-{r}"
                    _pgbench(ports[path], "bench" if path == "gateway" else "app", passwords[path], flag,
                             n_clients or clients, seconds, prefix)
                    values = _latencies(prefix)
                    lat[script][path] += values
                    tx[script][path] += len(values)
                    wall[script][path] += seconds
        rss_kib = None
        try:
            with open(f"/proc/{gw.pid}/status") as fh:
                rss_kib = next(int(ln.split()[1]) for ln in fh if ln.startswith("VmHWM:"))
        except (OSError, StopIteration):
            pass
        procs.stop(gw)
        for script, (flag, per_tx, _) in SCRIPTS.items():
            out = {}
            for path in PATHS:
                values = lat[script][path]
                tps = tx[script][path] / wall[script][path]
                out[path] = {"p50_ms": _pct(values, 50), "p90_ms": _pct(values, 90), "p99_ms": _pct(values, 99),
                             "tps": round(tps, 1), "statements_per_s": round(tps * per_tx, 1),
                             "transactions": tx[script][path]}
            d, g = out["direct"]["p50_ms"], out["gateway"]["p50_ms"]
            out["gateway_added_p50_ms"] = None if d is None or g is None else round(g - d, 3)
            out["gateway_added_p50_per_statement_ms"] = None if d is None or g is None else round((g - d) / per_tx, 3)
            out["statements_per_transaction"] = per_tx
            out["gateway_over_plain_statements"] = round(
                out["gateway"]["statements_per_s"] / out["plain"]["statements_per_s"], 3) if out["plain"]["statements_per_s"] else None
            results["scripts"][script] = out
        results["gateway_peak_rss_mib"] = round(rss_kib / 1024, 1) if rss_kib else None
        # Everything the gateway forwarded is on the record.
        from recorder.forensics.reader import iter_session_files, read_session
        recorded = 0
        for f in iter_session_files(work / "store"):
            recorded += sum(1 for rec in read_session(f).records if rec.get("t") == "pg.query")
        ran = sum(results["scripts"][s]["gateway"]["transactions"] * SCRIPTS[s][1] for s in SCRIPTS)
        results["load_average_after"] = os.getloadavg()[0]
        results["gateway_recorded_queries"] = recorded
        results["gateway_statements_run"] = ran
    finally:
        procs.stop_all()
        cluster.stop()
        if keep:
            log(f"bench postgres: work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return results


def checks(results: dict) -> list[dict]:
    sel = results["scripts"]["select-only"]
    upd = results["scripts"]["simple-update"]
    added = sel["gateway_added_p50_ms"]
    rate = max(sel["gateway"]["statements_per_s"], upd["gateway"]["statements_per_s"])
    return [
        {"target": f"gateway adds <= {ADDED_P50_LIMIT_MS} ms to the select-only p50 over direct", "value": added,
         "status": "PASS" if added is not None and added <= ADDED_P50_LIMIT_MS else "FAIL"},
        {"target": f"gateway sustains >= {STATEMENTS_PER_S_MIN:.0f} statements/s (8 clients)", "value": rate,
         "status": "PASS" if rate >= STATEMENTS_PER_S_MIN else "FAIL"},
        {"target": "every statement the gateway forwarded is recorded", "value": results["gateway_recorded_queries"],
         "status": "PASS" if results["gateway_recorded_queries"] >= results["gateway_statements_run"] else "FAIL"},
    ]


def render(results: dict, markdown: bool = False) -> str:
    rows = [("script", "path", "p50 ms", "p90 ms", "p99 ms", "tx/s", "statements/s")]
    for script, out in results["scripts"].items():
        for path in PATHS:
            r = out[path]
            rows.append((script, path, f"{r['p50_ms']:.3f}", f"{r['p90_ms']:.3f}", f"{r['p99_ms']:.3f}",
                         f"{r['tps']:.0f}", f"{r['statements_per_s']:.0f}"))
    if markdown:
        lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        lines += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    else:
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
    for script, out in results["scripts"].items():
        lines.append(f"{'- ' if markdown else ''}{script}: gateway - direct p50 = {out['gateway_added_p50_ms']:+.3f} ms "
                     f"per transaction ({out['gateway_added_p50_per_statement_ms']:+.3f} ms per statement); "
                     f"gateway / direct statements/s = "
                     f"{out['gateway']['statements_per_s'] / out['direct']['statements_per_s']:.2f}, "
                     f"gateway / plain relay = {out['gateway']['statements_per_s'] / out['plain']['statements_per_s']:.2f}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="1 round of 3 s per script and path")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=10.0, help="pgbench -T per script, path and round")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--json", metavar="FILE")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--check", action="store_true", help="exit 1 if a target fails")
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds = 1, 3.0
    started = time.monotonic()
    try:
        results = run(args.rounds, args.seconds, args.clients, args.keep,
                      log=lambda m: print(m, file=sys.stderr, flush=True))
    except RuntimeError as e:
        print(f"bench postgres: {e}", file=sys.stderr)
        return 1
    print(f"\nwiretrail bench, postgres phase ({args.rounds} rounds x {args.seconds:g} s, {args.clients} clients, "
          f"{os.cpu_count()} CPUs; {time.monotonic() - started:.0f} s)\n")
    print(render(results))
    cs = checks(results)
    print("\ntargets (issue 20):")
    for c in cs:
        print(f"  {c['status']:4}  {c['target']}  ({c['value']})")
    print(f"\ngateway peak RSS {results['gateway_peak_rss_mib']} MiB; recorded {results['gateway_recorded_queries']} "
          f"queries for {results['gateway_statements_run']} statements pgbench ran")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "targets": cs,
                                               "table_markdown": render(results, markdown=True)}, indent=2) + "\n")
    return 1 if args.check and any(c["status"] == "FAIL" for c in cs) else 0


if __name__ == "__main__":
    sys.exit(main())
