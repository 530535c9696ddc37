"""``make bench``: the daemon next to its peers under ``wrk``, in one run, on the same data.

    .venv/bin/python -m bench [--duration 3] [--connections 16,64,256] [--gigs 500] [--out bench]

Starts a throw-away SecantusDB, generates a modest catalogue through the
daemon's own API, then starts on it, side by side:

- the daemon with one worker and with ``--workers auto``;
- the stdlib threaded server (``SimpleXMLRPCServer`` + ``ThreadingMixIn`` +
  pymongo doing the same queries) at its best (HTTP/1.1 keep-alive) and as the
  original ran it (HTTP/1.0, one connection per call);
- stock ``twisted.web.xmlrpc`` with txmongo (the floor under the daemon's
  plumbing; database reads only);
- nginx answering a static XML-RPC body: the ceiling row, which shows the
  generator (``wrk -t1``, the same kind of Lua script) reaches at least 10x
  the fastest server measured.

Every scenario runs at each connection count for ``--duration`` seconds, one
server after the other (the daemons first, each server all its scenarios in
turn); every block starts once the shared database is idle again, so that no
server's abandoned queries are measured against another.
Writes ``results.md`` (requests/s, p50, p99, errors, ratios to each peer,
the targets met or not, machine and versions) and ``results.png``
(throughput against connections, one line per server).  Loopback only.

This module starts the servers and runs the plan; ``bench.plan`` names the
servers and scenarios, ``bench.seeding`` makes the data, ``bench.sampling``
reads CPU, threads and memory between runs, ``bench.report`` and
``bench.plot`` write the results.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import xmlrpc.client
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

from bench import wrk
from bench.loadgen import call_body
from bench.plan import DAEMON_1, DAEMON_N, NGINX, PEERS, STDLIB_10, STDLIB_11, STOCK, Row, scenarios
from bench.plot import plot
from bench.report import write_report
from bench.sampling import cpu_seconds, database_idle, generator_cpu_seconds, idle_connections_rss, settle, threads_of
from bench.seeding import BCRYPT_ROUNDS, seed
from tests.harness import Daemon, Database, free_port, stop_process, wait_for

STATIC_PING = xmlrpc.client.dumps(
    ({"status": "ok", "message": "RPC Server is running", "mongodb": "connected"},), methodresponse=True,
)


@dataclass
class Bench:
    workdir: Path
    processes: list[Database | Daemon | subprocess.Popen] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)


# -- tools -------------------------------------------------------------------


def ensure_tools() -> tuple[str, str | None]:
    """wrk (required) and nginx (the ceiling row); installed from Debian when missing and we are root."""
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if wrk.find_wrk() is None or nginx is None:
        if os.geteuid() == 0 and shutil.which("apt-get"):
            print("installing wrk and nginx-light from Debian (apt-get) ...", flush=True)
            subprocess.run(["apt-get", "update", "-q"], check=False, stdout=subprocess.DEVNULL)
            subprocess.run(["apt-get", "install", "-y", "-q", "wrk", "nginx-light"], check=False,
                           stdout=subprocess.DEVNULL, env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    found = wrk.find_wrk()
    if found is None:
        raise SystemExit(f"make bench: {wrk.WRK_MISSING}")
    return found, nginx


def version_of(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return "absent"
    text = (done.stdout + done.stderr).strip().splitlines()
    return text[0] if text else "?"


# -- processes ---------------------------------------------------------------


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 60) -> None:
    def listening() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}")
        with socket.socket() as s:
            return s.connect_ex(("127.0.0.1", port)) == 0

    wait_for(listening, timeout, f"a server listening on {port}", interval=0.1)


def start_daemon(bench: Bench, name: str, uri: str, db_name: str, secret: str, *extra: str) -> None:
    daemon = Daemon(bench.workdir, uri, db_name, *extra, NODE_ENV="production", JWT_SECRET=secret,
                    BCRYPT_ROUNDS=str(BCRYPT_ROUNDS), DB_TIMEOUT_SECONDS=None)
    daemon.env["LOG_FILE"] = str(bench.workdir / f"rpc-{daemon.port}.log")
    bench.processes.append(daemon)
    try:
        daemon.start(timeout=90)
    except AssertionError as e:  # exited, or not healthy in time
        raise RuntimeError(f"{name}: {e}") from None
    bench.ports[name] = daemon.port
    bench.pids[name] = daemon.pid


def start_peer(bench: Bench, name: str, module: str, uri: str, db_name: str, *extra: str) -> None:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", f"bench.peers.{module}", str(port), uri, db_name, *extra],
                               stdout=open(bench.workdir / f"{module}-{port}.log", "ab"), stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, cwd=Path(__file__).resolve().parent.parent)
    bench.processes.append(process)
    wait_for_port(port, process)
    bench.ports[name] = port
    bench.pids[name] = process.pid


def start_nginx(bench: Bench, nginx: str) -> None:
    port = free_port()
    workdir = bench.workdir / "nginx"
    workdir.mkdir()
    body = STATIC_PING.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "")
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 10000000;
        location / {{ default_type text/xml; return 200 '{body}'; }}
    }}
}}
""")
    process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)], stdout=subprocess.DEVNULL,
                               stderr=open(workdir / "nginx.out", "ab"), stdin=subprocess.DEVNULL)
    bench.processes.append(process)
    wait_for_port(port, process)
    bench.ports[NGINX] = port
    bench.pids[NGINX] = process.pid


def stop_all(bench: Bench) -> None:
    for process in reversed(bench.processes):
        if isinstance(process, subprocess.Popen):
            stop_process(process)
        else:
            with contextlib.suppress(AssertionError):  # killed after its timeout: nothing more to do
                process.stop()


# -- main --------------------------------------------------------------------


def machine(wrk_path: str, nginx: str | None, duration: float) -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    versions = {name: metadata.version(name) for name in ("Twisted", "txmongo", "pymongo", "SecantusDB",
                                                          "prometheus_client")}
    return {
        "cpu": f"{os.cpu_count()} x {cpu}",
        "memory": next((line.split(":", 1)[1].strip() for line in Path("/proc/meminfo").read_text().splitlines()
                        if line.startswith("MemTotal")), "?"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "packages": ", ".join(f"{k} {v}" for k, v in versions.items()),
        "wrk": version_of([wrk_path, "--version"]),
        "nginx": version_of([nginx, "-v"]) if nginx else "absent",
        "load before (uptime)": Path("/proc/loadavg").read_text().strip(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run (default 3, 1-60)")
    parser.add_argument("--connections", default="16,64,256", help="connection counts (default 16,64,256)")
    parser.add_argument("--gigs", type=int, default=500, help="generated gigs (default 500)")
    parser.add_argument("--only", default="", help="comma-separated scenario names (default: all)")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="where results.md/png go")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(1))  # stop every server started here
    duration = min(max(args.duration, 1.0), 60.0)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)  # 1,000 idle connections from here
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 8192)), hard))
    connections = [int(c) for c in args.connections.split(",")]
    began = time.monotonic()
    wrk_path, nginx = ensure_tools()
    meta = {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"), "duration": duration,
            "machine": machine(wrk_path, nginx, duration)}
    bench = Bench(Path(tempfile.mkdtemp(prefix="worknet-bench-")))
    rows: list[Row] = []
    memory: dict = {}
    try:
        database = Database(bench.workdir / "db")
        bench.processes.append(database)
        database.start(timeout=60)
        uri = database.uri
        db_name = "bench"
        secret = secrets.token_urlsafe(48)
        start_daemon(bench, DAEMON_1, uri, db_name, secret)
        print(f"seeding {args.gigs} gigs ...", flush=True)
        seeded = time.monotonic()
        data = seed(uri, db_name, bench.ports[DAEMON_1], args.gigs, buyers=400)
        print(f"  seeded in {time.monotonic() - seeded:.1f} s", flush=True)
        try:
            start_daemon(bench, DAEMON_N, uri, db_name, secret, "--workers", "auto")
        except RuntimeError as e:
            print(f"(--workers auto did not start: {str(e)[:300]})", flush=True)
        start_peer(bench, STDLIB_11, "seed_server", uri, db_name, "HTTP/1.1")
        start_peer(bench, STDLIB_10, "seed_server", uri, db_name, "HTTP/1.0")
        start_peer(bench, STOCK, "stock_twisted", uri, db_name)
        if nginx:
            start_nginx(bench, nginx)
        plan = scenarios(data, f"b{secrets.token_hex(3)}")  # 7 hex digits: the head of the flows' payment ids
        if args.only:
            wanted = set(args.only.split(","))
            plan = [s for s in plan if s.name in wanted]
        warm = wrk.static_script("/RPC2", [call_body("ping")])
        for port in bench.ports.values():  # first calls pay imports and pool connections
            wrk.run(port, warm, 16, 1.0)
        time.sleep(1.0)
        daemon_ports = [bench.ports[name] for name in (DAEMON_1, DAEMON_N) if name in bench.ports]
        idle_threads = {bench.pids[name]: threads_of(bench.pids[name]) for name in (STDLIB_11, STDLIB_10)}
        waited = 0.0
        print(f"{'scenario':<16} {'server':<28} {'conns':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>9} {'errors':>7}",
              flush=True)
        # One database serves every server: a server's abandoned queries (the naive peers' searches
        # are scans of seconds each, a backlog of a minute at 256 connections) must not land on
        # another server's runs. So one server at a time runs every scenario, each at every
        # connection count; the daemons first; each block starts once the database is idle.
        order = [server for server in (DAEMON_1, DAEMON_N, *PEERS, NGINX) if server in bench.ports]
        for server in order:
            for sc in plan:
                if server not in sc.servers:
                    continue
                waited += database_idle(database.pid)
                for c in connections:
                    server_before, wrk_before = cpu_seconds(bench.pids[server]), generator_cpu_seconds()
                    result = wrk.run(bench.ports[server], sc.script, c, duration)
                    requests = result.requests or float("nan")  # no answer at all: no cost per answer
                    rows.append(Row(sc.name, server, c, result,
                                    (cpu_seconds(bench.pids[server]) - server_before) / requests * 1e6,
                                    (generator_cpu_seconds() - wrk_before) / requests * 1e6))
                    waited += settle(daemon_ports, idle_threads)
                    print(f"{sc.name:<16} {server:<28} {c:>5} {result.rps:>9,.0f} {result.p50_ms:>8.2f} "
                          f"{result.p99_ms:>9.2f} {result.errors + result.faults:>7}", flush=True)
        for name in (DAEMON_1, DAEMON_N):
            if name in bench.ports:
                try:
                    memory[name] = idle_connections_rss(bench.ports[name], bench.pids[name])
                except OSError as e:
                    memory[name] = f"not measured: {e}"
        meta["machine"]["load after (uptime)"] = Path("/proc/loadavg").read_text().strip()
        meta["machine"]["waiting for servers and the database to finish abandoned calls between runs"] = f"{waited:.0f} s"
    finally:
        stop_all(bench)
        shutil.rmtree(bench.workdir, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    elapsed = time.monotonic() - began
    write_report(out, rows, plan, meta, memory, elapsed)
    plot(out, rows, plan)
    print(f"\nwrote {out / 'results.md'} and {out / 'results.png'} in {elapsed / 60:.1f} minutes", flush=True)


if __name__ == "__main__":
    main()
