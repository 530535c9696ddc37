"""Soak: a marketplace mix on one daemon and its embedded database for a long time.

``make soak`` (``python -m bench.soak --minutes 10``) starts the daemon as a
user does on a laptop -- no ``MONGODB_URI``, so it runs its embedded SecantusDB
in a data directory of its own (``--mongodb-uri`` points it at another server
instead) -- seeds a small marketplace through the API, then drives it with
``--threads`` (16) client threads, each an ``xmlrpc.client`` on a keep-alive
connection.  Every thread owns a buyer and a seller with a gig (``--sellers``
fewer shares them) and repeats a round: an order flow with
an idempotency key (create, a payment with a client-chosen id, process it,
complete the order: the seller is credited through the ledger; a flow cut short
cancels its order), a message
with a client-chosen id, the seller reading it, two reads (by id, a search,
the categories, unread counts) and, every tenth round, a gig create.

Every minute (``--sample`` seconds) it records successful calls/s, the answers by code
(``UNAVAILABLE`` apart), latency percentiles, the database's and the daemon's
resident memory (``/proc``), the database's CPU share and the load average;
per method, the mean latency of the first and the last sample.  It writes
``soak.md`` and ``soak.png`` (the curves) into ``--out`` (default ``bench/``)
and checks the targets:

* throughput of the last sample within 20 % of the first one's;
* no ``UNAVAILABLE`` answer (nor any other failure);
* the database's memory bounded: its peak resident size in the second half
  of the run is less than 25 % above its peak in the first half (data is
  added all along; a cost that grows with it shows as a growing curve).  The
  database is read every ``WATCH_SECONDS`` and followed across the restarts
  the daemon makes past ``EMBEDDED_MAX_MEMORY_MB`` (counted per sample).

Exit 1 when a target is not met.  Loopback only, bounded by ``--minutes``;
not part of ``make test``.
"""

from __future__ import annotations

import argparse
import http.client
import os
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
import xmlrpc.client
from collections import Counter, defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymongo
from bson import ObjectId

from bench.loadgen import percentile
from tests.harness import Daemon, cpu_seconds, rss_mib

HERE = Path(__file__).resolve().parent
WATCH_SECONDS = 2.0  # how often the embedded database's memory and CPU are read
PRICE = "40.00"
CLIENT_TIMEOUT = 30.0
THROUGHPUT_KEPT = 0.8  # the last sample's calls/s at least this share of the first one's
DB_GROWTH_MAX = 25.0  # % growth of the database's RSS over the second half of the run
READS = (
    "gigsService.get_by_id", "ordersService.get_by_id", "gigsService.search", "categoriesService.get_all",
    "notificationsService.get_unread_count", "messagesService.get_unread_count", "gigsService.get_by_user",
    "messagesService.get_conversation",
)


class Transport(xmlrpc.client.Transport):
    """Keep-alive HTTP/1.1 with a socket timeout."""

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        connection = super().make_connection(host)
        connection.timeout = CLIENT_TIMEOUT
        return connection


def proxy(url: str) -> xmlrpc.client.ServerProxy:
    return xmlrpc.client.ServerProxy(url, transport=Transport(), allow_none=True)


# -- the daemon ------------------------------------------------------------------


@contextmanager
def soak_daemon(uri: str | None = None, source: Path | None = None) -> Iterator[Daemon]:
    """``twistd -n worknet-rpc`` in a throw-away folder: the embedded database unless ``uri`` is given;
    ``source``: another checkout whose worknet package the daemon runs (before/after figures)."""
    path = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    env = {"HOME": str(path), "LOG_LEVEL": "WARNING", "LOG_FILE": "", "BCRYPT_ROUNDS": "4",
           "DB_TIMEOUT_SECONDS": "5", "DATA_DIR": str(path / "db")}
    if source is not None:
        env["PYTHONPATH"] = str(source.resolve())
    daemon = Daemon(path, uri or "", "soak", **env)
    try:
        daemon.start(timeout=120)
        yield daemon
    finally:
        daemon.stop()
        shutil.rmtree(path, ignore_errors=True)


# -- the marketplace -------------------------------------------------------------


def expect(answer: Any, what: str) -> dict:
    if not isinstance(answer, dict) or not answer.get("success"):
        raise RuntimeError(f"seeding failed at {what}: {answer}")
    return answer


def seed(url: str, threads: int, seller_count: int) -> dict[str, Any]:
    """A category, ``seller_count`` sellers with a gig each, one buyer per thread with a conversation with a
    seller (thread n buys from seller n mod ``seller_count``)."""
    rpc = proxy(url)
    tag = secrets.token_hex(3)
    expect(rpc.categoriesService.create("Soak testing", "soak-testing", "Long runs"), "category")
    sellers, gigs = [], []
    for s in range(seller_count):
        seller = expect(rpc.usersService.register(f"seller{s}_{tag}", f"seller{s}.{tag}@soak.example",
                                                  "a long password 1", "freelancer"), "seller")["user_id"]
        sellers.append(seller)
        gig = expect(rpc.gigsService.create(seller, {
            "title": f"Load testing number {s} for your service",
            "description": "I will soak your XML-RPC server for hours and report its curves.",
            "category": "soak-testing", "price": PRICE, "deliveryTime": 3,
        }), "gig")["gig_id"]
        gigs.append((gig, seller))
    buyers = []
    for b in range(threads):
        buyer = expect(rpc.usersService.register(f"buyer{b}_{tag}", f"buyer{b}.{tag}@soak.example",
                                                 "a long password 1", "client"), "buyer")["user_id"]
        gig, seller = gigs[b % len(gigs)]
        conversation = expect(rpc.messagesService.start_conversation(buyer, seller), "conversation")
        buyers.append({"buyer": buyer, "seller": seller, "gig": gig, "conversation": conversation["conversation_id"]})
    return {"sellers": sellers, "gigs": gigs, "buyers": buyers}


@dataclass
class Call:
    at: float  # seconds since the load started, when the call was sent
    method: str
    ms: float
    outcome: str  # "ok", an error code, "FAULT" or "TRANSPORT"


@dataclass
class Log:
    calls: list[Call] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Client(threading.Thread):
    def __init__(self, url: str, me: dict[str, Any], n: int, log: Log, started: float, stop_at: float) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.rpc = proxy(url)
        self.me, self.n, self.log, self.started, self.stop_at = me, n, log, started, stop_at
        self.round = 0

    def call(self, method: str, *params: Any) -> dict | None:
        began = time.monotonic()
        answer: Any = None
        try:
            answer = getattr(self.rpc, method)(*params)
            outcome = "ok" if answer.get("success") else str(answer.get("code"))
        except xmlrpc.client.Fault:
            outcome = "FAULT"
        except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError):
            outcome = "TRANSPORT"
            self.rpc = proxy(self.url)
        ended = time.monotonic()
        with self.log.lock:
            self.log.calls.append(Call(began - self.started, method, (ended - began) * 1000, outcome))
        return answer if outcome == "ok" else None

    def run(self) -> None:
        me = self.me
        while time.monotonic() < self.stop_at:
            self.round += 1
            key = f"soak-{self.n}-{self.round}-{secrets.token_hex(4)}"
            order = self.call("ordersService.create", me["gig"], me["buyer"], 1, PRICE, {"idempotency_key": key})
            if order is not None:
                me["order"] = order["order_id"]
                pid = str(ObjectId())
                done = (self.call("paymentsService.create", pid, me["order"], PRICE, "stripe") is not None
                        and self.call("paymentsService.process", pid, "completed") is not None
                        and self.call("ordersService.update_status", me["order"], "completed", "delivered") is not None)
                if not done:  # a flow cut short: cancel its order (refunded if paid), as a client would,
                    # else every later round of this buyer meets its pending order (CONFLICT)
                    self.call("ordersService.cancel", me["order"], "the flow failed")
            mid = str(ObjectId())
            if self.call("messagesService.create", mid, me["conversation"], me["buyer"],
                         {"text": f"round {self.round}: how is it going?"}) is not None:
                self.call("messagesService.mark_as_read", mid, me["seller"])
            for step in range(2):
                self.read(READS[(self.round * 2 + step + self.n) % len(READS)])
            if self.round % 10 == 0:
                self.call("gigsService.create", me["seller"], {
                    "title": f"Soak gig {self.n} {self.round}", "category": "soak-testing", "price": PRICE,
                    "description": "Another gig created while the soak runs, to grow the catalogue.",
                    "deliveryTime": 2,
                })

    def read(self, method: str) -> None:
        me = self.me
        args: dict[str, tuple] = {
            "gigsService.get_by_id": (me["gig"],),
            "ordersService.get_by_id": (me.get("order") or str(ObjectId()),),
            "gigsService.search": ("load testing", {}, 1, 20),
            "categoriesService.get_all": (1, 20),
            "notificationsService.get_unread_count": (me["buyer"],),
            "messagesService.get_unread_count": (me["seller"],),
            "gigsService.get_by_user": (me["seller"], 1, 20),
            "messagesService.get_conversation": (me["conversation"], 1, 20),
        }
        self.call(method, *args[method])


# -- the database's own counters ----------------------------------------------------

TOP_KINDS = ("queries", "insert", "update", "remove", "commands")
Top = dict[tuple[str, str], tuple[int, int]]  # (collection, kind) -> (count, microseconds)


def read_top(client: Any, db_name: str) -> Top:
    """The server's ``top`` counters of ``db_name`` (MongoDB and SecantusDB both keep them): time per command kind."""
    try:
        totals = client.admin.command("top")["totals"]
    except Exception:  # noqa: BLE001 - a server without top: no per-command table
        return {}
    found: Top = {}
    for ns, counters in totals.items():
        if not ns.startswith(f"{db_name}.") or ns.endswith(".system.profile"):
            continue
        for kind in TOP_KINDS:
            entry = counters.get(kind) or {}
            if entry.get("count"):
                found[(ns.split(".", 1)[1], kind)] = (int(entry["count"]), int(entry["time"]))
    return found


def top_delta(before: Top, after: Top) -> Top:
    """What ran between two readings; a counter lower than before was reset (the database restarted): all of it."""
    delta: Top = {}
    for key, (count, micros) in after.items():
        was_count, was_micros = before.get(key, (0, 0))
        if count < was_count:
            delta[key] = (count, micros)
        elif count > was_count:
            delta[key] = (count - was_count, micros - was_micros)
    return delta


class DatabaseWatch(threading.Thread):
    """The embedded database read every ``WATCH_SECONDS``, followed across its restarts (the daemon restarts it
    past ``EMBEDDED_MAX_MEMORY_MB``): its peak resident size and its CPU seconds (summed over its processes)
    since the last :meth:`take`, and how many times it was restarted."""

    def __init__(self, daemon: Daemon) -> None:
        super().__init__(daemon=True)
        self.daemon_ = daemon
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.pid: int | None = None
        self.cpu_of_pid = 0.0  # the current process's CPU seconds at the last reading
        self.cpu = 0.0  # CPU seconds since the last take()
        self.peak = float("nan")
        self.restarts = 0

    def read(self) -> None:
        found = self.daemon_.embedded_database()
        if found is None:
            return
        pid = found[0]
        rss, cpu = rss_mib(pid), cpu_seconds(pid)
        with self.lock:
            if pid != self.pid:
                if self.pid is not None:
                    self.restarts += 1
                self.pid, self.cpu_of_pid = pid, 0.0
            if cpu == cpu:
                self.cpu += cpu - self.cpu_of_pid
                self.cpu_of_pid = cpu
            if rss == rss and not rss <= self.peak:
                self.peak = rss

    def run(self) -> None:
        while not self.stopped.wait(WATCH_SECONDS):
            self.read()

    def take(self) -> tuple[float, float, int]:
        """(peak RSS MiB, CPU seconds, restarts) since the last take, then start over."""
        self.read()
        with self.lock:
            taken = (self.peak, self.cpu, self.restarts)
            self.peak, self.cpu, self.restarts = float("nan"), 0.0, 0
        return taken


# -- the report -------------------------------------------------------------------


@dataclass
class Sample:
    minute: float
    calls: int
    seconds: float
    outcomes: Counter
    p50: float
    p99: float
    worst: float
    db_rss: float  # the database's peak resident size during the sample
    daemon_rss: float
    db_cpu: float  # % of one core over the sample
    load: float
    db_restarts: int = 0  # restarts of the embedded database during the sample (its memory cap)

    @property
    def rate(self) -> float:
        """Successful answers per second (a failure that answers fast must not look like throughput)."""
        return self.outcomes.get("ok", 0) / self.seconds if self.seconds else 0.0

    @property
    def db_cpu_per_call(self) -> float:
        """Milliseconds of the database's CPU per call: what the load costs it, whatever else runs on the machine."""
        return self.db_cpu / 100 * self.seconds / self.calls * 1000 if self.calls else float("nan")


def summarize(calls: list[Call], start: float, end: float, db_rss: float, daemon_rss: float, db_cpu: float,
              load: float, db_restarts: int = 0) -> Sample:
    """The calls sent in ``[start, end)`` (seconds into the load), with what was read from /proc at ``end``."""
    mine = [c for c in calls if start <= c.at < end]
    latencies = sorted(c.ms for c in mine)
    return Sample(
        minute=end / 60, calls=len(mine), seconds=end - start, outcomes=Counter(c.outcome for c in mine),
        p50=statistics.median(latencies) if latencies else float("nan"),
        p99=percentile(latencies, 99), worst=latencies[-1] if latencies else float("nan"),
        db_rss=db_rss, daemon_rss=daemon_rss, db_cpu=db_cpu, load=load, db_restarts=db_restarts,
    )


def by_method(calls: list[Call], start: float, end: float) -> dict[str, tuple[int, float]]:
    groups: dict[str, list[float]] = defaultdict(list)
    for c in calls:
        if start <= c.at < end:
            groups[c.method].append(c.ms)
    return {m: (len(v), statistics.fmean(v)) for m, v in groups.items()}


def plot(samples: list[Sample], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    minutes = [s.minute for s in samples]
    figure, (top, middle, bottom) = plt.subplots(3, 1, sharex=True, figsize=(8, 8))
    top.plot(minutes, [s.rate for s in samples], marker="o", label="successful calls/s")
    top.plot(minutes, [s.outcomes.get("UNAVAILABLE", 0) / s.seconds for s in samples], marker="x",
             color="tab:red", label="UNAVAILABLE/s")
    top.set_ylabel("calls/s")
    top.set_ylim(bottom=0)
    top.legend(loc="lower left")
    middle.plot(minutes, [s.p50 for s in samples], marker="o", color="tab:orange", label="p50")
    middle.plot(minutes, [s.p99 for s in samples], marker="o", color="tab:red", label="p99")
    middle.set_ylim(bottom=0)
    middle.set_ylabel("latency ms")
    middle.legend(loc="upper left")
    bottom.plot(minutes, [s.db_rss for s in samples], marker="o", color="tab:green", label="database")
    bottom.plot(minutes, [s.daemon_rss for s in samples], marker="o", color="tab:blue", label="daemon")
    bottom.set_ylabel("RSS MiB")
    bottom.set_xlabel("minutes")
    bottom.set_ylim(bottom=0)
    bottom.legend(loc="upper left")
    top.set_title(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)


def verdicts(samples: list[Sample], baseline_rss: float) -> list[tuple[str, bool]]:
    first, last = samples[0], samples[-1]
    half = next(s for s in samples if s.minute >= last.minute / 2)
    unavailable = sum(s.outcomes.get("UNAVAILABLE", 0) for s in samples)
    failed = sum(n for s in samples for code, n in s.outcomes.items() if code != "ok")
    first_peak = max((s.db_rss for s in samples if s.minute <= half.minute), default=float("nan"))
    second_peak = max((s.db_rss for s in samples if s.minute > half.minute), default=float("nan"))
    growth = (second_peak - first_peak) / first_peak * 100 if first_peak == first_peak else float("nan")
    restarts = sum(s.db_restarts for s in samples)
    kept = last.rate / first.rate if first.rate else 0.0
    return [
        (f"throughput (successful calls) of the last sample {last.rate:.1f}/s = {kept:.0%} of the first one's "
         f"{first.rate:.1f} (target >= {THROUGHPUT_KEPT:.0%})", kept >= THROUGHPUT_KEPT),
        (f"UNAVAILABLE answers: {unavailable} (target 0); failures of any kind: {failed}", unavailable == 0),
        (f"database RSS {baseline_rss:.0f} MiB before the load, at most {first_peak:.0f} MiB up to minute "
         f"{half.minute:.1f}, at most {second_peak:.0f} MiB after: {growth:+.1f} % over the second half "
         f"(target < {DB_GROWTH_MAX:g} %; {restarts} restarts of the database for its memory)",
         growth < DB_GROWTH_MAX),
    ]


def top_table(tops: list[Top]) -> list[str]:
    """The database's time per (collection, command kind) in the first and the last sample (``top``)."""
    if len(tops) < 2 or not tops[0] or not tops[-1]:
        return []
    first, last = tops[0], tops[-1]
    keys = sorted(set(first) | set(last), key=lambda k: -max(last.get(k, (0, 0))[1], first.get(k, (0, 0))[1]))[:20]

    def cell(top: Top, key: tuple[str, str]) -> str:
        count, micros = top.get(key, (0, 0))
        return f"{count} | {micros / count / 1000:.1f} | {micros / 1e6:.1f}" if count else "0 | - | 0"

    return [
        "The database's own time per collection and command kind (its `top` counters; statements inside "
        "transactions included, waits for the transaction registry not), first and last sample:",
        "",
        "| collection | kind | count (first) | mean ms | total s | count (last) | mean ms | total s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
        *(f"| {c} | {k} | {cell(first, (c, k))} | {cell(last, (c, k))} |" for c, k in keys),
        "",
    ]


def report(args: argparse.Namespace, samples: list[Sample], calls: list[Call], baseline_rss: float,
           where: str, tops: list[Top]) -> bool:
    checks = verdicts(samples, baseline_rss)
    first_methods = by_method(calls, 0, samples[0].minute * 60)
    last_methods = by_method(calls, samples[-1].minute * 60 - samples[-1].seconds, samples[-1].minute * 60)
    codes = sorted({code for s in samples for code in s.outcomes} - {"ok"})
    failed_methods = Counter(c.method for c in calls if c.outcome != "ok")
    title = f"WorkNet RPC soak: {args.threads} threads, marketplace mix, {where}"
    lines = [
        f"# Soak: {args.minutes:g} minutes, {args.threads} client threads, {where}",
        "",
        f"`{' '.join(['python -m bench.soak', *sys.argv[1:]])}`; {os.cpu_count()} cores shared; "
        "load average (1 min) at the end of each sample in the last column.",
        "",
        "| minute | successful calls/s | UNAVAILABLE | other failures | p50 ms | p99 ms | max ms | database peak RSS MiB "
        "| database restarts | database CPU % | database CPU ms per call | daemon RSS MiB | load |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {s.minute:.1f} | {s.rate:.1f} | {s.outcomes.get('UNAVAILABLE', 0)} | "
          f"{sum(n for c, n in s.outcomes.items() if c not in ('ok', 'UNAVAILABLE'))} | {s.p50:.0f} | {s.p99:.0f} | "
          f"{s.worst:.0f} | {s.db_rss:.0f} | {s.db_restarts} | {s.db_cpu:.0f} | {s.db_cpu_per_call:.1f} | "
          f"{s.daemon_rss:.0f} | {s.load:.2f} |" for s in samples),
        "",
        *([f"Failures by code: {', '.join(f'{c} {sum(s.outcomes.get(c, 0) for s in samples)}' for c in codes)}; "
           f"by method: {', '.join(f'{m} {n}' for m, n in failed_methods.most_common())}.", ""] if codes else []),
        "Targets:",
        "",
        *(f"- {'met' if good else 'NOT met'}: {text}" for text, good in checks),
        "",
        "Mean latency per method, first and last sample:",
        "",
        "| method | calls (first) | mean ms (first) | calls (last) | mean ms (last) |",
        "|---|---:|---:|---:|---:|",
        *(f"| {m} | {first_methods.get(m, (0, 0))[0]} | {first_methods.get(m, (0, float('nan')))[1]:.0f} | "
          f"{last_methods.get(m, (0, 0))[0]} | {last_methods.get(m, (0, float('nan')))[1]:.0f} |"
          for m in sorted(set(first_methods) | set(last_methods))),
        "",
        *top_table(tops),
        f"![soak]({args.name}.png)",
    ]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    plot(samples, args.out / f"{args.name}.png", title)
    for text, good in checks:
        print(f"{'met' if good else 'NOT met'}: {text}", flush=True)
    print(f"wrote {args.out / (args.name + '.md')} and {args.out / (args.name + '.png')}", flush=True)
    return all(good for _text, good in checks)


def main() -> None:
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop the daemon and its database on the way out
    signal.signal(signal.SIGINT, signal.default_int_handler)  # also when started in the background
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--sellers", type=int, default=0,
                        help="sellers the threads buy from (default: one per thread, as users' load spreads; "
                             "fewer make their documents hot spots that every sale writes)")
    parser.add_argument("--sample", type=float, default=60.0, help="seconds per row (default a minute)")
    parser.add_argument("--mongodb-uri", default=None, help="run against this server instead of the embedded one")
    parser.add_argument("--source", type=Path, default=None,
                        help="run the daemon of another checkout (its worknet package), e.g. an export of an older "
                             "commit, to compare curves with the same command")
    parser.add_argument("--out", type=Path, default=HERE, help="where the report goes (default bench/)")
    parser.add_argument("--name", default="soak", help="file name of the report, without .md/.png (default soak)")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    where = "embedded SecantusDB" if not args.mongodb_uri else "the server of --mongodb-uri"
    log = Log()
    with soak_daemon(args.mongodb_uri, args.source) as daemon:
        data = seed(daemon.url, args.threads, args.sellers or args.threads)
        db_pid, db_port = (None, None) if args.mongodb_uri else (daemon.embedded_database() or (None, None))
        baseline_rss = rss_mib(db_pid) if db_pid else float("nan")
        print(f"seeded; database pid {db_pid}, port {db_port or '-'}, RSS {baseline_rss:.0f} MiB", flush=True)
        started = time.monotonic()
        stop_at = started + args.minutes * 60
        clients = [Client(daemon.url, dict(me), n, log, started, stop_at) for n, me in enumerate(data["buyers"])]
        for client in clients:
            client.start()
        readings: list[tuple[float, float, float, float, float, float, int]] = []  # + database restarts
        watch = DatabaseWatch(daemon) if db_pid else None
        if watch is not None:
            watch.take()
            watch.start()
        monitor = pymongo.MongoClient(args.mongodb_uri or f"mongodb://127.0.0.1:{db_port}/",
                                      directConnection=not args.mongodb_uri, serverSelectionTimeoutMS=5000)
        tops: list[Top] = []
        top_before = read_top(monitor, "soak")
        begin = 0.0
        while begin < args.minutes * 60 - 1:
            end = min(begin + args.sample, args.minutes * 60)
            time.sleep(max(0.0, started + end - time.monotonic()))
            peak, cpu, restarts = watch.take() if watch is not None else (float("nan"), float("nan"), 0)
            readings.append((begin, end, peak, rss_mib(daemon.pid), cpu / (end - begin) * 100, os.getloadavg()[0],
                             restarts))
            top_now = read_top(monitor, "soak")
            tops.append(top_delta(top_before, top_now))
            top_before = top_now
            with log.lock:
                calls = list(log.calls)
            s = summarize(calls, *readings[-1])  # provisional: calls still running are counted at the end
            print(f"{s.minute:5.1f} min {s.rate:7.1f} calls/s  UNAVAILABLE {s.outcomes.get('UNAVAILABLE', 0):4d}  "
                  f"failed {s.calls - s.outcomes.get('ok', 0):4d}  p50 {s.p50:6.0f} p99 {s.p99:6.0f} "
                  f"max {s.worst:6.0f} ms  db RSS {s.db_rss:6.0f} MiB ({s.db_restarts} restarts)  "
                  f"db CPU {s.db_cpu:3.0f} % ({s.db_cpu_per_call:.1f} ms/call)  "
                  f"load {s.load:.2f}",
                  flush=True)
            begin = end
        if watch is not None:
            watch.stopped.set()
        for client in clients:
            client.join(CLIENT_TIMEOUT + 5)
        monitor.close()
    samples = [summarize(log.calls, *reading) for reading in readings]
    if not report(args, samples, log.calls, baseline_rss, where, tops):
        sys.exit(1)


if __name__ == "__main__":
    main()
