"""Transport benchmark: the daemon next to its peers, in one run.

Peers: the origin system's shape (SimpleXMLRPCServer + ThreadingMixIn +
pymongo), stock ``twisted.web.xmlrpc`` + txmongo doing the same queries
(the floor under the daemon's plumbing), and nginx answering a static
XML-RPC response (the transport ceiling; skipped when nginx is not
installed: ``apt-get install nginx-light``).  Scenarios: ``ping`` (one
database ping) and ``categoriesService.get_by_slug`` (one indexed find).

    .venv/bin/python -m bench.transport [--duration 10] [--concurrency 32]

Loopback only, bounded in time.  Timings are noisy on shared machines:
compare within one run.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import xmlrpc.client
from pathlib import Path

import pymongo

from bench.loadgen import HEADER, Result, call_body, free_port, run_load, start_daemon, start_database, stop

STATIC_PING = xmlrpc.client.dumps(
    ({"status": "ok", "message": "RPC Server is running", "mongodb": "connected"},), methodresponse=True,
)


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 30) -> None:
    import socket
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"peer exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def start_peer(module: str, port: int, uri: str, db_name: str, log: Path) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-m", f"bench.peers.{module}", str(port), uri, db_name],
                               stdout=open(log, "ab"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_for_port(port, process)
    return process


def start_nginx(port: int, workdir: Path) -> subprocess.Popen | None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None:
        return None
    body = STATIC_PING.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "")
    conf = workdir / "nginx.conf"
    conf.write_text(f"""
daemon off;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {workdir}/body;
    server {{
        listen 127.0.0.1:{port};
        keepalive_requests 1000000;
        location / {{ default_type text/xml; return 200 '{body}'; }}
    }}
}}
""")
    process = subprocess.Popen([nginx, "-c", str(conf), "-p", str(workdir)], stdout=subprocess.DEVNULL,
                               stderr=open(workdir / "nginx.out", "ab"), stdin=subprocess.DEVNULL)
    wait_for_port(port, process)
    return process


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per scenario (default 10, max 120)")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections (default 32)")
    args = parser.parse_args()
    duration = min(max(args.duration, 1.0), 120.0)

    workdir = Path(tempfile.mkdtemp(prefix="worknet-bench-"))
    processes: list[subprocess.Popen] = []
    try:
        database, uri = start_database(workdir / "db")
        processes.append(database)
        db_name = "bench_transport"
        port = free_port()
        processes.append(start_daemon(uri, db_name, port, log_path=workdir / "daemon.log"))
        created = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2").categoriesService.create(
            "Graphic Design", "graphic-design", "Logos and more")
        assert created["success"], created
        client: pymongo.MongoClient = pymongo.MongoClient(uri)
        assert client[db_name].categories.count_documents({"slug": "graphic-design"}) == 1
        client.close()

        servers = {"worknet daemon": port}
        for name, module in (("seed-style (threads+pymongo)", "seed_server"), ("stock twisted.web.xmlrpc", "stock_twisted")):
            peer_port = free_port()
            processes.append(start_peer(module, peer_port, uri, db_name, workdir / f"{module}.log"))
            servers[name] = peer_port
        nginx_port = free_port()
        nginx = start_nginx(nginx_port, workdir)
        if nginx is not None:
            processes.append(nginx)

        scenarios = {
            "ping": [call_body("ping")],
            "get_by_slug": [call_body("categoriesService.get_by_slug", "graphic-design")],
        }
        results: dict[tuple[str, str], Result] = {}
        print(f"{args.concurrency} keep-alive connections, {duration:.0f} s per scenario\n")
        print(HEADER)
        for scenario, bodies in scenarios.items():
            for name, server_port in servers.items():
                result = run_load(server_port, bodies, args.concurrency, duration)
                results[(scenario, name)] = result
                print(result.row(f"{scenario} / {name}"), flush=True)
        if nginx is not None:
            result = run_load(nginx_port, scenarios["ping"], args.concurrency, duration)
            results[("ping", "nginx static")] = result
            print(result.row("static response / nginx"), flush=True)
        else:
            print("(nginx not installed: the transport ceiling is not measured; apt-get install nginx-light)")

        print("\nratios (worknet daemon / peer, requests per second; p99 latency)")
        for scenario in scenarios:
            ours = results[(scenario, "worknet daemon")]
            for name in servers:
                if name == "worknet daemon":
                    continue
                peer = results[(scenario, name)]
                print(f"  {scenario:<12} vs {name:<30} rps x{ours.rps / peer.rps:5.2f}   p99 x{ours.p99_ms / peer.p99_ms:5.2f}")
        if nginx is not None:
            ceiling = results[("ping", "nginx static")]
            print(f"  ping         vs nginx static response         rps x{results[('ping', 'worknet daemon')].rps / ceiling.rps:5.2f}")
    finally:
        for process in reversed(processes):
            stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
