"""What ``make bench`` reads from its servers between and after runs: CPU, threads, calls in flight, memory."""

from __future__ import annotations

import resource
import socket
import time
import urllib.request
from pathlib import Path

from bench.loadgen import call_body
from tests.harness import cpu_seconds, process_tree, rss_mib


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


def settle(daemons: list[int], threaded: dict[int, int], limit: float = 5.0) -> float:
    """Wait (at most ``limit`` s) until no server still works on the calls of the last run.

    wrk stops at its deadline, but slow calls it gave up on go on in the servers
    and the database; the next run must not pay for them. Daemons: /metrics
    says nothing is in flight (``daemons``: their ports); threaded peers: back to their idle thread
    count (``threaded``: PID -> idle threads).
    """
    began = time.monotonic()
    while time.monotonic() - began < limit:
        busy = [port for port in daemons if in_flight(port) > 0]
        busy += [pid for pid, idle in threaded.items() if threads_of(pid) > idle]
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


def generator_cpu_seconds() -> float:
    """CPU used so far by the finished children of this process (every wrk run)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- memory ------------------------------------------------------------------


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
            figures.append((p, "worker" if "worknet.workers" in cmd else "parent", rss_mib(p)))
        return figures, answered
    finally:
        for s in sockets:
            s.close()

