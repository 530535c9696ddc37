"""Load generator and the throw-away servers shared by the benchmarks.

``run_load`` opens ``concurrency`` keep-alive HTTP/1.1 connections to a
loopback port and has each send XML-RPC request bodies back to back until the
duration or the request count runs out; it records the latency of every
request.  One asyncio process drives all connections, so the client costs
little CPU next to the server it measures.  Loopback only, always bounded.
``Workspace`` is a folder with a SecantusDB and daemons on it, started with
the tests' harness (``tests.harness``).
"""

from __future__ import annotations

import asyncio
import random
import re
import shutil
import statistics
import tempfile
import threading
import time
import xmlrpc.client
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo

from tests.harness import Daemon, Database
from worknet.store.indexes import INDEXES

Bodies = Sequence[bytes] | Callable[[int], bytes]
FAILED = re.compile(rb"<name>success</name>\s*<value><boolean>0")  # an answer with success false


def call_body(method: str, *params: object) -> bytes:
    """An XML-RPC request body."""
    return xmlrpc.client.dumps(params, method, allow_none=True, encoding="utf-8").encode("utf-8")


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, max(0, round(pct / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[index]


@dataclass
class Result:
    count: int = 0
    errors: int = 0
    faults: int = 0
    elapsed: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.count / self.elapsed if self.elapsed else 0.0

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def p99_ms(self) -> float:
        return percentile(sorted(self.latencies_ms), 99)

    def row(self, name: str) -> str:
        return f"{name:<44} {self.rps:>9.0f} {self.p50_ms:>9.2f} {self.p99_ms:>9.2f} {self.count:>8} {self.errors + self.faults:>6}"


HEADER = f"{'scenario':<44} {'req/s':>9} {'p50 ms':>9} {'p99 ms':>9} {'count':>8} {'errors':>6}"


async def _worker(host: str, port: int, path: str, body_at: Callable[[int], bytes], counter: list[int],
                  stop_at: float, max_requests: int | None, result: Result, headers: dict[str, str]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    try:
        while time.perf_counter() < stop_at and (max_requests is None or counter[0] < max_requests):
            i = counter[0]
            counter[0] += 1
            body = body_at(i)
            head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: text/xml\r\n"
                    f"Content-Length: {len(body)}\r\n{extra}\r\n").encode()
            started = time.perf_counter()
            writer.write(head + body)
            status_line = await reader.readline()
            length = 0
            while True:
                line = await reader.readline()
                if line in (b"\r\n", b""):
                    break
                name, _, value = line.decode("latin-1").partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value.strip())
            payload = await reader.readexactly(length)
            result.latencies_ms.append((time.perf_counter() - started) * 1000)
            if not status_line.startswith(b"HTTP/1.1 200"):
                result.errors += 1
            elif b"<fault>" in payload or FAILED.search(payload):
                result.faults += 1
            result.count += 1
    except (OSError, asyncio.IncompleteReadError):
        result.errors += 1
    finally:
        writer.close()


async def _run(host: str, port: int, bodies: Bodies, concurrency: int, duration: float,
               max_requests: int | None, path: str, headers: dict[str, str]) -> Result:
    body_at = bodies if callable(bodies) else (lambda i: bodies[i % len(bodies)])
    result = Result()
    counter = [0]
    started = time.perf_counter()
    stop_at = started + duration
    await asyncio.gather(*(
        _worker(host, port, path, body_at, counter, stop_at, max_requests, result, headers)
        for _ in range(concurrency)
    ))
    result.elapsed = time.perf_counter() - started
    return result


def run_load(port: int, bodies: Bodies, concurrency: int, duration: float, max_requests: int | None = None,
             host: str = "127.0.0.1", path: str = "/RPC2", headers: dict[str, str] | None = None) -> Result:
    """Drive ``concurrency`` keep-alive connections for ``duration`` seconds (and at most ``max_requests``)."""
    assert host.startswith("127.") or host in ("localhost", "::1"), "benchmarks only target loopback"
    duration = min(duration, 600.0)
    return asyncio.run(_run(host, port, bodies, concurrency, duration, max_requests, path, headers or {}))


class Workspace:
    """A throw-away folder with a SecantusDB server in it, and daemons on it.

    ``with Workspace("bench-x") as ws:`` starts the database (``ws.uri``);
    ``ws.daemon(db_name, **env)`` starts a daemon and returns its port. On
    exit every daemon and the database stop and the folder is removed.
    """

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.processes: list[Database | Daemon] = []

    def __enter__(self) -> Workspace:
        self.path = Path(tempfile.mkdtemp(prefix=f"{self.prefix}-"))
        database = Database(self.path / "db")
        self.processes.append(database)
        try:
            database.start(timeout=60)
        except BaseException:
            self.__exit__()
            raise
        self.uri = database.uri
        return self

    def daemon(self, db_name: str, **env: str) -> int:
        daemon = Daemon(self.path, self.uri, db_name, **{
            "LOG_LEVEL": "WARNING", "LOG_FILE": "", "DB_TIMEOUT_SECONDS": None, **env})
        self.processes.append(daemon)
        daemon.start(timeout=60)
        return daemon.port

    def log_path(self, port: int) -> Path:
        """The log of the daemon on ``port``."""
        return self.path / f"daemon-{port}.log"

    def __exit__(self, *exc_info: object) -> None:
        for process in reversed(self.processes):
            process.stop()
        shutil.rmtree(self.path, ignore_errors=True)


def direct_load(uri: str, db_name: str, concurrency: int, duration: float,
                operation: Callable[[Any, random.Random], None]) -> Result:
    """``operation(db, rng)`` back to back in ``concurrency`` threads sharing one pymongo client."""
    client: pymongo.MongoClient = pymongo.MongoClient(uri, directConnection=True, maxPoolSize=concurrency)
    db = client[db_name]
    result = Result()
    lock = threading.Lock()
    stop_at = time.perf_counter() + duration

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        latencies = []
        while time.perf_counter() < stop_at:
            began = time.perf_counter()
            operation(db, rng)
            latencies.append((time.perf_counter() - began) * 1000)
        with lock:
            result.latencies_ms.extend(latencies)
            result.count += len(latencies)

    began = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        list(pool.map(worker, range(concurrency)))
    result.elapsed = time.perf_counter() - began
    client.close()
    return result


def create_indexes(db: Any) -> None:
    """The daemon's own index definitions, so its startup ``create_index`` calls are no-ops."""
    for collection, specs in INDEXES.items():
        for keys, options in specs:
            db[collection].create_index(keys, **options)


def plan_summary(explained: dict) -> str:
    """``IXSCAN(index) <- FETCH`` style summary of a winning plan, plus keys/docs examined."""
    planner = explained.get("queryPlanner") or explained["stages"][0]["$cursor"]["queryPlanner"]
    stages = []
    node = planner["winningPlan"]
    while node:
        stages.append(node["stage"] + (f"({node['indexName']})" if "indexName" in node else ""))
        node = node.get("inputStage")
    stats = explained.get("executionStats", {})
    examined = ""
    if stats:
        examined = f"; keys examined {stats.get('totalKeysExamined')}, docs examined {stats.get('totalDocsExamined')}, returned {stats.get('nReturned')}"
    return " <- ".join(reversed(stages)) + examined
