"""HAProxy in front of several gateway processes: the configuration docs/deployment.md shows,
written and started here, for the bench's scale phase and the tests (one place for it).

    python scripts/fleet_lb.py --listen 127.0.0.1:8080 127.0.0.1:8081 127.0.0.1:8082

prints the configuration (what deployment.md describes) and, with --run, runs HAProxy in the
foreground with it.

Why TCP mode: the gateway terminates the client's TLS itself (it must see the requests to record
them), and a CONNECT tunnel's identity is checked once per client connection, so the balancer
must hand whole connections to one gateway and never look inside. Every request of a connection
then reaches the gateway that checked its identity. `balance leastconn` evens out long-lived
agent connections better than round robin. The gateways see the balancer's address as the
client's: mitmproxy 11 cannot read a PROXY protocol header, so none is sent (docs/deployment.md
says what that means for sessions).
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

TEMPLATE = """\
global
    # two file descriptors per connection: raise both with the open-files limit (systemd LimitNOFILE)
    maxconn 4000
    log stderr format short local0 notice

defaults
    mode tcp
    log global
    option tcplog
    timeout connect 5s
    # agent streams and CONNECT tunnels stay open for a long time
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h

frontend wiretrail
    bind {listen}
    default_backend gateways

backend gateways
    balance leastconn
{servers}
"""


def config(listen: str, gateways: list[tuple[str, int]], check: bool = True) -> str:
    extra = " check inter 1s" if check else ""
    servers = "\n".join(f"    server gw{i + 1} {host}:{port}{extra}" for i, (host, port) in enumerate(gateways))
    return TEMPLATE.format(listen=listen, servers=servers)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class HAProxy:
    """One HAProxy process with `config()`, listening on 127.0.0.1 (a free port unless given)."""

    def __init__(self, gateways: list[tuple[str, int]], workdir: Path, *, port: int | None = None):
        self.port = port or free_port()
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.cfg = self.workdir / "haproxy.cfg"
        self.cfg.write_text(config(f"127.0.0.1:{self.port}", gateways))
        self.log = self.workdir / "haproxy.log"
        self.proc: subprocess.Popen | None = None

    def start(self, spawn=None, timeout: float = 15.0) -> None:
        exe = shutil.which("haproxy")
        if exe is None:
            raise RuntimeError("haproxy is not installed (Debian: apt-get install haproxy)")
        check = subprocess.run([exe, "-c", "-q", "-f", str(self.cfg)], capture_output=True, text=True)
        if check.returncode != 0:
            raise RuntimeError(f"haproxy rejects {self.cfg}: {check.stderr or check.stdout}")
        cmd = [exe, "-db", "-f", str(self.cfg)]  # -db: foreground, no daemon
        if spawn is not None:
            self.proc = spawn(cmd, self.log)
        else:
            self.proc = subprocess.Popen(cmd, stdout=open(self.log, "wb"), stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"haproxy did not listen on {self.port} within {timeout} s")

    def stop(self, procs=None) -> None:
        if self.proc is None:
            return
        if procs is not None:
            procs.stop(self.proc)
        elif self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


def _hostport(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True, help="where HAProxy listens, HOST:PORT")
    p.add_argument("gateways", nargs="+", help="the gateways, HOST:PORT each")
    p.add_argument("--run", action="store_true", help="run HAProxy in the foreground with this config")
    a = p.parse_args(argv)
    text = config(a.listen, [_hostport(g) for g in a.gateways])
    if not a.run:
        sys.stdout.write(text)
        return 0
    cfg = Path(os.environ.get("TMPDIR", "/tmp")) / f"wiretrail-haproxy-{os.getpid()}.cfg"
    cfg.write_text(text)
    os.execvp("haproxy", ["haproxy", "-db", "-f", str(cfg)])
    return 1


if __name__ == "__main__":
    sys.exit(main())
