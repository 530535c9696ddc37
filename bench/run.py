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
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import xmlrpc.client
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path

import bcrypt
import pymongo
from bson import ObjectId

from bench import wrk
from bench.loadgen import BIN, call_body, free_port, start_database, stop

STATIC_PING = xmlrpc.client.dumps(
    ({"status": "ok", "message": "RPC Server is running", "mongodb": "connected"},), methodresponse=True,
)
PASSWORD = "bench password 1"  # noqa: S105 - throw-away benchmark accounts
BCRYPT_ROUNDS = 10
WORDS = ("logo design brand modern minimal vector illustration website wordpress landing page seo audit "
         "python script automation data analysis video editing youtube shorts podcast mixing voice over "
         "translation spanish french article writing copy product photo retouch mobile app flutter").split()
CATEGORIES = ("graphic-design", "web-development", "writing", "video", "music-audio", "data")

DAEMON_1 = "worknet (1 worker)"
DAEMON_N = "worknet (--workers auto)"
STDLIB_11 = "stdlib threaded, HTTP/1.1"
STDLIB_10 = "stdlib threaded, HTTP/1.0"
STOCK = "stock twisted.web.xmlrpc"
NGINX = "nginx static (ceiling)"
PEERS = (STDLIB_11, STDLIB_10, STOCK)
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


@dataclass
class Scenario:
    name: str
    title: str
    servers: tuple[str, ...]
    script: str = ""
    note: str = ""


@dataclass
class Row:
    scenario: str
    server: str
    connections: int
    result: wrk.WrkResult
    server_cpu_us: float = float("nan")  # CPU of the server's processes per request (user + system)
    wrk_cpu_us: float = float("nan")  # CPU of the generator per request

    def cpu(self) -> str:
        if self.server_cpu_us != self.server_cpu_us:  # NaN: no answer in the run
            return "–"
        return f"{self.server_cpu_us:,.0f} / {self.wrk_cpu_us:,.0f}"


@dataclass
class Bench:
    workdir: Path
    processes: list[subprocess.Popen] = field(default_factory=list)
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
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:4]} exited with {process.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {port}")


def start_daemon(bench: Bench, name: str, uri: str, db_name: str, secret: str, *extra: str) -> None:
    port = free_port()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "NODE_ENV": "production", "JWT_SECRET": secret,
           "LOG_LEVEL": "INFO", "LOG_FILE": str(bench.workdir / f"rpc-{port}.log"),
           "BCRYPT_ROUNDS": str(BCRYPT_ROUNDS)}
    log = open(bench.workdir / f"daemon-{port}.out", "ab")
    process = subprocess.Popen(
        [str(BIN / "twistd"), "-n", "--pidfile=", "worknet-rpc", "--listen", f"tcp:{port}:interface=127.0.0.1",
         "--mongodb-uri", uri, "--db-name", db_name, *extra],
        env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=bench.workdir,
    )
    bench.processes.append(process)
    deadline = time.monotonic() + 90
    while True:
        if process.poll() is not None:
            said = (bench.workdir / f"daemon-{port}.out").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{name} exited with {process.returncode}\n{said}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as answer:  # noqa: S310
                if answer.status == 200:
                    break
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{name} did not become healthy")
        time.sleep(0.2)
    bench.ports[name] = port
    bench.pids[name] = process.pid


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


# -- data --------------------------------------------------------------------


def seed(uri: str, db_name: str, port: int, gigs: int, buyers: int) -> dict:
    """Categories, sellers and gigs through the daemon's API; buyers straight into the database.

    The catalogue goes through ``gigsService.create`` (batched in ``system.multicall``) so that
    every search structure the daemon keeps is built as in production.  Buyers are plain user
    documents with one bcrypt hash (cost ``BCRYPT_ROUNDS``) shared by all: they log in and order.
    """
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2", allow_none=True)
    for slug in CATEGORIES:
        answer = proxy.categoriesService.create(slug.replace("-", " ").title(), slug, f"All about {slug}")
        assert answer["success"], answer
    sellers = []
    for i in range(20):
        answer = proxy.usersService.register(f"seller{i}", f"seller{i}@example.com", PASSWORD, "freelancer")
        assert answer["success"], answer
        sellers.append(answer["user_id"])
    client: pymongo.MongoClient = pymongo.MongoClient(uri, directConnection=True)
    db = client[db_name]
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
    moment = datetime.now(UTC)
    buyer_docs = [{
        "_id": ObjectId(), "username": f"buyer{i}", "usernameLower": f"buyer{i}", "email": f"buyer{i}@example.com",
        "passwordHash": hashed, "role": "client", "isSeller": False, "rating": 0.0, "reviewCount": 0,
        "tokenVersion": 0, "createdAt": moment, "updatedAt": moment, "deletedAt": None,
    } for i in range(buyers)]
    db.users.insert_many(buyer_docs)
    rng = random.Random(11)
    gig_ids: list[tuple[str, str]] = []
    batch = 100
    for start in range(0, gigs, batch):
        calls = []
        for i in range(start, min(gigs, start + batch)):
            words = rng.sample(WORDS, 4)
            price = f"{rng.randint(5, 500)}.{rng.choice(('00', '50', '99'))}"
            calls.append({"methodName": "gigsService.create", "params": [sellers[i % len(sellers)], {
                "title": " ".join(words[:3]).capitalize() + f" #{i}",
                "description": f"I will do {' '.join(words)} for you, fast and with care ({i}).",
                "category": CATEGORIES[i % len(CATEGORIES)], "price": float(price), "deliveryTime": rng.randint(1, 30),
                "tags": words[2:],
            }]})
        for answer in proxy.system.multicall(calls):
            assert isinstance(answer, list) and answer[0]["success"], answer
            gig_ids.append((answer[0]["gig_id"], f"{answer[0]['gig']['price']:.2f}"))
    client.close()
    return {"gigs": gig_ids, "buyers": [str(d["_id"]) for d in buyer_docs],
            "emails": [d["email"] for d in buyer_docs]}


def scenarios(data: dict, run_tag: str) -> list[Scenario]:
    path = "/RPC2"
    gig_ids = [g for g, _ in data["gigs"]]
    searches = [call_body("gigsService.search", f"{a} {b}", {}, 1, 20)
                for a, b in (("logo", "design"), ("python", "script"), ("video", "editing"), ("seo", "audit"))]
    browses = [call_body("gigsService.search", "", {"category": slug}, 1, 20) for slug in CATEGORIES]
    daemons = (DAEMON_1, DAEMON_N)
    every = daemons + PEERS
    no_stock = daemons + (STDLIB_11, STDLIB_10)
    return [
        Scenario("ping", "ping", every + (NGINX,), wrk.static_script(path, [call_body("ping")]),
                 "nginx answers a static ping body: the generator's ceiling"),
        Scenario("calculate_fees", "paymentsService.calculate_fees(100.0) (no database)", every,
                 wrk.static_script(path, [call_body("paymentsService.calculate_fees", 100.0)])),
        Scenario("get_by_slug", "categoriesService.get_by_slug (one indexed read)", every,
                 wrk.static_script(path, [call_body("categoriesService.get_by_slug", s) for s in CATEGORIES])),
        Scenario("gig_get_by_id", "gigsService.get_by_id (gig + seller)", every,
                 wrk.static_script(path, [call_body("gigsService.get_by_id", g) for g in gig_ids[:500]])),
        Scenario("search", "gigsService.search, two words, page 1", every, wrk.static_script(path, searches)),
        Scenario("browse", "gigsService.search, no words, a category (browse)", every,
                 wrk.static_script(path, browses)),
        Scenario("write_flow", "ordersService.create + paymentsService.create + process (one request = one step)",
                 no_stock, wrk.write_flow_script(path, data["buyers"], data["gigs"][:50], run_tag),
                 "stock twisted peer not built for writes"),
        Scenario("login", f"usersService.login (bcrypt cost {BCRYPT_ROUNDS}), the login storm", no_stock,
                 wrk.static_script(path, [call_body("usersService.login", e, PASSWORD) for e in data["emails"][:64]]),
                 "bound: cores / one bcrypt check"),
    ]


# -- between runs ------------------------------------------------------------


def threads_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def in_flight(port: int) -> float:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:  # noqa: S310
            text = answer.read().decode()
    except OSError:
        return 0.0
    for line in text.splitlines():
        if line.startswith("worknet_rpc_in_flight_requests "):
            return float(line.split()[1])
    return 0.0


def settle(bench: Bench, baseline_threads: dict[str, int], limit: float = 5.0) -> float:
    """Wait (at most ``limit`` s) until no server still works on the calls of the last run.

    wrk stops at its deadline, but slow calls it gave up on go on in the servers
    and the database; the next run must not pay for them. Daemons: /metrics
    says nothing is in flight; threaded peers: back to their idle thread count.
    """
    began = time.monotonic()
    while time.monotonic() - began < limit:
        busy = [name for name in (DAEMON_1, DAEMON_N) if name in bench.ports and in_flight(bench.ports[name]) > 0]
        busy += [name for name, idle in baseline_threads.items() if threads_of(bench.pids[name]) > idle]
        if not busy:
            break
        time.sleep(0.25)
    return time.monotonic() - began


def database_idle(pid: int, limit: float = 20.0, busy: float = 0.05) -> float:
    """Wait (at most ``limit`` s) until the database process uses under ``busy`` of a core."""
    began = time.monotonic()
    before = cpu_seconds(pid)
    while time.monotonic() - began < limit:
        time.sleep(0.25)
        now = cpu_seconds(pid)
        if now - before < busy * 0.25:
            break
        before = now
    return time.monotonic() - began


# -- memory ------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = child.read_text().split()
        except OSError:  # a thread that ended meanwhile (the threaded peers start one per connection)
            continue
        for text in children:
            pids.extend(process_tree(int(text)))
    return pids


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (threads included) so far."""
    ticks = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / CLOCK_TICKS


def generator_cpu_seconds() -> float:
    """CPU used so far by the finished children of this process (every wrk run)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def idle_connections_rss(port: int, pid: int, count: int = 1000) -> tuple[list[tuple[int, str, float]], int]:
    """Open ``count`` keep-alive connections (one ping each, then idle); RSS of the daemon's processes."""
    body = call_body("ping")
    request = (f"POST /RPC2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body
    sockets = []
    answered = 0
    try:
        for _ in range(count):
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(request)
            sockets.append(s)
        for s in sockets:
            if s.recv(65536).startswith(b"HTTP/1.1 200"):
                answered += 1
        time.sleep(0.5)
        figures = []
        for p in process_tree(pid):
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "secantusd" in cmd:
                continue
            figures.append((p, "worker" if "worknet.workers" in cmd else "parent", rss_mb(p)))
        return figures, answered
    finally:
        for s in sockets:
            s.close()


# -- report ------------------------------------------------------------------


def fmt_ratio(ours: wrk.WrkResult | None, peer: wrk.WrkResult | None) -> str:
    if ours is None or peer is None or not peer.rps:
        return "–"
    return f"{ours.rps / peer.rps:.2f}x"


def write_report(out: Path, rows: list[Row], plan: list[Scenario], meta: dict, memory: dict, seconds: float) -> None:
    table = {(r.scenario, r.server, r.connections): r.result for r in rows}
    cpu = {(r.scenario, r.server, r.connections): r.cpu() for r in rows}
    conns = sorted({r.connections for r in rows})
    lines = [
        "# Benchmark results",
        "",
        f"Generated by `make bench` on {meta['date']} in {seconds / 60:.1f} minutes "
        f"({meta['duration']:g} s per run, `wrk -t1 -c<connections>` with Lua scripts, keep-alive). "
        "Regenerate with `make bench`; see bench/README.md. Figures from one run on one machine: compare "
        "within this file only.",
        "",
        "## Machine and versions",
        "",
        *[f"- {k}: {v}" for k, v in meta["machine"].items()],
        "",
        "## Targets (issue 11), at 64 connections unless said",
        "",
        "| target | figure | met |",
        "|---|---|---|",
    ]

    def get(s: str, server: str, c: int) -> wrk.WrkResult | None:
        return table.get((s, server, c))

    for s in ("ping", "calculate_fees"):
        ours, peer = get(s, DAEMON_N, 64), get(s, STDLIB_11, 64)
        if ours and peer and peer.rps:
            ratio = ours.rps / peer.rps
            lines.append(f"| `{s}` with --workers auto ≥ 1.5x stdlib HTTP/1.1 | {ratio:.2f}x "
                         f"({ours.rps:,.0f} vs {peer.rps:,.0f} req/s) | {'yes' if ratio >= 1.5 else 'NO'} |")
        ours, peer = get(s, DAEMON_1, 64), get(s, STOCK, 64)
        if ours and peer and peer.rps:
            ratio = ours.rps / peer.rps
            lines.append(f"| `{s}` with 1 worker ≥ 1.0x stock twisted.web.xmlrpc | {ratio:.2f}x "
                         f"({ours.rps:,.0f} vs {peer.rps:,.0f} req/s) | {'yes' if ratio >= 1.0 else 'NO'} |")
    for server in (DAEMON_1, DAEMON_N):
        for s in ("ping", "calculate_fees"):
            r = get(s, server, 256)
            if r:
                ok = r.p99_ms < 250 and r.errors + r.faults == 0
                lines.append(f"| `{s}` {server}, 256 connections: p99 < 250 ms, zero errors | p99 {r.p99_ms:.1f} ms, "
                             f"{r.errors + r.faults} errors | {'yes' if ok else 'NO'} |")
    for label, figures in memory.items():
        if isinstance(figures, str):
            lines.append(f"| RSS per worker < 150 MB, 1,000 idle keep-alive connections ({label}) | {figures} | – |")
            continue
        procs, answered = figures
        workers = [f for f in procs if f[1] == "worker"] or [f for f in procs if f[1] == "parent"]
        worst = max(mb for _, _, mb in workers)
        detail = ", ".join(f"{kind} {mb:.0f} MB" for _, kind, mb in procs)
        lines.append(f"| RSS per worker < 150 MB, 1,000 idle keep-alive connections ({label}; {answered} answered) "
                     f"| {detail} | {'yes' if worst < 150 else 'NO'} |")
    nginx_top = max((r.result.rps for r in rows if r.server == NGINX), default=0.0)
    fastest = max((r.result.rps for r in rows if r.server != NGINX), default=0.0)
    if nginx_top and fastest:
        lines.append(f"| generator headroom: nginx ceiling ≥ 10x the fastest server | {nginx_top / fastest:.1f}x "
                     f"({nginx_top:,.0f} vs {fastest:,.0f} req/s) | {'yes' if nginx_top >= 10 * fastest else 'NO'} |")
    catalogue = out / "catalogue.json"  # written by python -m bench.search (100,000 gigs: beyond this run's budget)
    if catalogue.exists():
        figures = json.loads(catalogue.read_text())
        for t in figures["targets"]:
            lines.append(f"| catalogue at 100,000 gigs — {t['target']} | {t['figure']} | {'yes' if t['met'] else 'NO'} |")
        lines += ["", f"The catalogue rows come from [catalogue.md](catalogue.md): `{figures['command']}`, generated "
                  f"{figures['generated']} ({figures['summary']}), not from this run."]
    lines += ["", "CPU per request (user + system time of the server's processes, threads and workers included, "
              "over the run at 64 connections), and what it allows:", ""]
    rows_at = {(r.scenario, r.server, r.connections): r for r in rows}
    cores = os.cpu_count() or 1
    for s in ("ping", "calculate_fees"):
        ours, naive, stock = (rows_at.get((s, server, 64)) for server in (DAEMON_1, STDLIB_11, STOCK))
        if ours is None or naive is None or not ours.server_cpu_us > 0:
            continue
        bound = cores * 1e6 / ours.server_cpu_us
        lines.append(f"- `{s}`: worknet {ours.server_cpu_us:,.0f} µs, stdlib HTTP/1.1 {naive.server_cpu_us:,.0f} µs"
                     + (f", stock twisted {stock.server_cpu_us:,.0f} µs" if stock else "")
                     + f"; with all {cores} cores busy (the generator needs {ours.wrk_cpu_us:,.0f} µs too) worknet "
                     f"could serve at most {bound:,.0f} req/s = {bound / naive.result.rps:.2f}x the stdlib rate "
                     "measured here")
    lines += ["", "![throughput against connections](results.png)", ""]

    for sc in plan:
        lines += [f"## {sc.title}", ""]
        if sc.note:
            lines += [f"{sc.note}.", ""]
        lines += ["| server | conns | req/s | p50 ms | p99 ms | errors | CPU µs/req server / wrk "
                  "| vs stdlib 1.1 | vs stdlib 1.0 | vs stock twisted |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for server in sc.servers:
            for c in conns:
                r = get(sc.name, server, c)
                if r is None:
                    continue
                if r.skipped:
                    lines.append(f"| {server} | {c} | – | – | – | {r.skipped} | | | | |")
                    continue
                ratios = ["", "", ""]
                if server in (DAEMON_1, DAEMON_N):
                    ratios = [fmt_ratio(r, get(sc.name, p, c)) for p in PEERS]
                extra = f" ({r.flows / r.seconds:,.0f} flows/s)" if r.flows else ""
                errors = f"{r.errors + r.faults}" + (f" ({r.faults} faults/envelopes)" if r.faults else "")
                lines.append(f"| {server} | {c} | {r.rps:,.0f}{extra} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {errors} | "
                             f"{cpu[sc.name, server, c]} | " + " | ".join(ratios) + " |")
        samples = {r.result.sample for r in rows if r.scenario == sc.name and r.result.sample}
        if samples:
            lines += ["", "First failed answer seen: `" + sorted(samples)[0][:300] + "`"]
        lines.append("")
    (out / "results.md").write_text("\n".join(lines) + "\n")
    (out / "results.json").write_text(json.dumps(
        [{"scenario": r.scenario, "server": r.server, "connections": r.connections, "rps": round(r.result.rps, 1),
          "p50_ms": r.result.p50_ms, "p99_ms": r.result.p99_ms, "errors": r.result.errors,
          "faults": r.result.faults, "server_cpu_us": round(r.server_cpu_us, 1), "wrk_cpu_us": round(r.wrk_cpu_us, 1)}
         for r in rows], indent=1) + "\n")


def plot(out: Path, rows: list[Row], plan: list[Scenario]) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (pip install -e '.[bench]'): no results.png", flush=True)
        return
    columns = 4
    lines = (len(plan) + columns - 1) // columns
    fig, axes = plt.subplots(lines, columns, figsize=(5 * columns, 4 * lines), squeeze=False)
    for index, sc in enumerate(plan):
        ax = axes[index // columns][index % columns]
        for server in sc.servers:
            if server == NGINX:
                continue
            points = sorted((r.connections, r.result.rps) for r in rows
                            if r.scenario == sc.name and r.server == server and not r.result.skipped)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=server)
        ax.set_title(sc.name)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r.connections for r in rows}))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.set_xlabel("connections")
        ax.set_ylabel("requests/s")
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    for index in range(len(plan), lines * columns):
        axes[index // columns][index % columns].axis("off")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels))
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    fig.savefig(out / "results.png", dpi=80)
    plt.close(fig)


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
        database, uri = start_database(bench.workdir / "db")
        bench.processes.append(database)
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
        idle_threads = {name: threads_of(bench.pids[name]) for name in (STDLIB_11, STDLIB_10)}
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
                    waited += settle(bench, idle_threads)
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
        for process in reversed(bench.processes):
            stop(process)
        shutil.rmtree(bench.workdir, ignore_errors=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    elapsed = time.monotonic() - began
    write_report(out, rows, plan, meta, memory, elapsed)
    plot(out, rows, plan)
    print(f"\nwrote {out / 'results.md'} and {out / 'results.png'} in {elapsed / 60:.1f} minutes", flush=True)


if __name__ == "__main__":
    main()
