"""The database crashed under load: calls/s and the slowest call, second by second, around the kill.

``python -m bench.db_crash`` starts a SecantusDB and a daemon on free loopback
ports (``--mode external``: the daemon on ``MONGODB_URI``, and the database
started again on the same data directory right after it died; ``--mode
embedded``: the daemon's own database, which the daemon starts again), seeds
one buyer, seller and gig per caller, and has ``--threads`` callers run a
marketplace mix over keep-alive XML-RPC connections: an order with an
idempotency key, a payment with a client-chosen id, processed, a message
with a client-chosen id, the order completed, a gig read and a ping.  A call
answered ``UNAVAILABLE`` (or cut off) is sent again with the same ids after
0.1 s, as a caller should.  After ``--before`` seconds the database is sent
``--signal`` (KILL or TERM; STOP freezes it for ``--stall`` seconds, then
SIGCONT: connections stay open and nothing answers); the run goes on
``--after`` seconds past the moment it answers again.

Printed (and written as JSON with ``--json``): one row per second from the
kill on -- calls started, answered ok, answered UNAVAILABLE or otherwise, and
the slowest of the calls started in that second -- then a summary: when
calls first succeeded again after the restart, the seconds after that in
which fewer than a quarter of the calls before the kill succeeded (a second
wave), the calls that took longer than ``DB_TIMEOUT_SECONDS`` + 1 s, the
slowest call.  Exit 1 when there is a second wave or a call past the
deadline + 1 s.  Loopback only, bounded in time; ``tests/test_db_crash.py``
runs a short version.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import secrets
import signal
import sys
import tempfile
import threading
import time
import xmlrpc.client
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pymongo
from bson import Decimal128, ObjectId

from tests.harness import Daemon, Database, wait_for

CUT_OFF = (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError)
WAVE_SHARE = 0.25  # a second after the recovery with fewer ok answers than this share of the rate before: a wave


def _pings(uri: str) -> bool:
    client: pymongo.MongoClient = pymongo.MongoClient(uri, serverSelectionTimeoutMS=300, directConnection=True)
    try:
        return bool(client.admin.command("ping")["ok"])
    except pymongo.errors.PyMongoError:
        return False
    finally:
        client.close()


def embedded_database(daemon: Daemon) -> tuple[int, int]:
    """The PID and port of the embedded database ``daemon`` runs."""
    found = daemon.embedded_database()
    if found is None:
        raise LookupError(f"the daemon on port {daemon.port} runs no database")
    return found


def seed(uri: str, db_name: str, callers: int) -> list[tuple[str, str, str]]:
    """(seller, gig, buyer) per caller, written straight into the database."""
    moment = datetime.now(UTC)

    def user(role: str) -> dict:
        name = "u" + secrets.token_hex(5)
        return {"_id": ObjectId(), "username": name, "usernameLower": name, "email": f"{name}@example.com",
                "passwordHash": "x", "role": role, "isSeller": role == "freelancer", "rating": 0.0,
                "reviewCount": 0, "tokenVersion": 0, "totalEarnings": Decimal128("0.00"), "createdAt": moment,
                "updatedAt": moment}

    out = []
    with pymongo.MongoClient(uri, directConnection=True) as client:
        db = client[db_name]
        for _ in range(callers):
            seller, buyer = user("freelancer"), user("client")
            gig = {"_id": ObjectId(), "userId": seller["_id"], "title": "A logo for your company",
                   "description": "d" * 30, "categoryId": ObjectId(), "category": "design",
                   "price": Decimal128("12.00"), "deliveryTime": 3, "isActive": True, "rating": 0.0,
                   "reviewCount": 0, "createdAt": moment, "updatedAt": moment}
            db.users.insert_many([seller, buyer])
            db.gigs.insert_one(gig)
            out.append((str(seller["_id"]), str(gig["_id"]), str(buyer["_id"])))
    return out


@dataclass
class Calls:
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: list[tuple[float, float, str, str]] = field(default_factory=list)  # (started, seconds, method, outcome)
    stop: threading.Event = field(default_factory=threading.Event)


class Caller:
    def __init__(self, url: str, market: tuple[str, str, str], calls: Calls) -> None:
        self.url = url
        self.seller, self.gig, self.buyer = market
        self.calls = calls
        self.proxy = xmlrpc.client.ServerProxy(url, allow_none=True)

    def one(self, method: str, *args: Any) -> dict:
        started = time.monotonic()
        try:
            answer = getattr(self.proxy, method)(*args)
            if method == "ping":
                outcome = "ok" if answer.get("mongodb") == "connected" else "ping-disconnected"
            else:
                outcome = "ok" if answer.get("success") else str(answer.get("code"))
        except xmlrpc.client.Fault as fault:
            answer, outcome = {"success": False, "code": f"fault {fault.faultCode}"}, f"fault {fault.faultCode}"
        except CUT_OFF as e:
            answer, outcome = {"success": False, "code": "CUT_OFF"}, f"cut off ({type(e).__name__})"
            self.proxy = xmlrpc.client.ServerProxy(self.url, allow_none=True)
        with self.calls.lock:
            self.calls.done.append((started, time.monotonic() - started, method, outcome))
        return answer

    def call(self, method: str, *args: Any, applied_if_invalid: bool = False) -> dict | None:
        """Sent again with the same arguments after UNAVAILABLE or a cut-off, until it answers otherwise."""
        uncertain = False
        while not self.calls.stop.is_set():
            answer = self.one(method, *args)
            code = answer.get("code")
            if answer.get("success") or (code == "INVALID_STATE" and uncertain and applied_if_invalid):
                return answer
            if code not in ("UNAVAILABLE", "CUT_OFF"):
                return None
            uncertain = True
            time.sleep(0.1)
        return None

    def run(self) -> None:
        started = self.call("messagesService.start_conversation", self.buyer, self.seller)
        if started is None:
            return
        conversation = started["conversation_id"]
        flow = 0
        while not self.calls.stop.is_set():
            flow += 1
            key = f"crash-{ObjectId()}"
            placed = self.call("ordersService.create", self.gig, self.buyer, 1, "12.00", {"idempotency_key": key})
            if placed is None:
                continue
            order_id, pid = placed["order_id"], str(ObjectId())
            if self.call("paymentsService.create", pid, order_id, "12.00", "stripe") is None:
                continue
            if self.call("paymentsService.process", pid, "completed", applied_if_invalid=True) is None:
                continue
            self.call("messagesService.create", str(ObjectId()), conversation, self.buyer, {"text": f"flow {flow}"})
            self.call("ordersService.update_status", order_id, "completed", None, applied_if_invalid=True)
            self.call("gigsService.get_by_id", self.gig)
            self.one("ping")


@dataclass
class Second:
    at: int  # seconds after the kill
    started: int
    ok: int
    unavailable: int
    other: int
    slowest: float


def timeline(calls: list[tuple[float, float, str, str]], killed_at: float, first: int, last: int) -> list[Second]:
    rows = {s: Second(s, 0, 0, 0, 0, 0.0) for s in range(first, last + 1)}
    for started, seconds, _, outcome in calls:
        s = int((started - killed_at) // 1)
        row = rows.get(s)
        if row is None:
            continue
        row.started += 1
        if outcome == "ok":
            row.ok += 1
        elif outcome == "UNAVAILABLE":
            row.unavailable += 1
        else:
            row.other += 1
        row.slowest = max(row.slowest, seconds)
    return [rows[s] for s in sorted(rows)]


def summary(rows: list[Second], back: float, timeout: float,
            calls: list[tuple[float, float, str, str]], killed_at: float) -> dict:
    before = [r.ok for r in rows if r.at < 0]
    rate = sum(before) / len(before) if before else 0.0
    recovered = next((r.at for r in rows if r.at >= back and r.ok >= WAVE_SHARE * rate), None)
    waves = [r.at for r in rows if recovered is not None and r.at > recovered and r.ok < WAVE_SHARE * rate]
    late = [(started - killed_at, seconds, method, outcome) for started, seconds, method, outcome in calls
            if seconds > timeout + 1]
    after = [c for c in calls if recovered is not None and c[0] - killed_at >= recovered]
    outcomes: dict[str, int] = {}
    for started, _, _, outcome in calls:
        if started >= killed_at and outcome != "ok":
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    return {
        "ok_per_second_before": round(rate, 1),
        "failed_after_kill": outcomes,
        "database_back_at": round(back, 2),
        "recovered_at": recovered,
        "wave_seconds": waves,
        "unavailable_after_recovery": sum(1 for c in after if c[3] == "UNAVAILABLE"),
        "past_deadline": len(late),
        "past_deadline_calls": [(round(a, 1), round(s, 2), m, o) for a, s, m, o in sorted(late)[:20]],
        "slowest": round(max((c[1] for c in calls), default=0.0), 2),
        "calls": len(calls),
    }


def run(mode: str, signum: int, threads: int, before: float, after: float, timeout: float,
        workdir: Path, out: Any = print, stall: float = 8.0) -> dict:
    """The scenario (see the module docstring); ``signum`` SIGSTOP freezes the database for ``stall`` seconds
    instead (a database that stops answering without closing its connections), then SIGCONT."""
    db_name = "crash_" + secrets.token_hex(4)
    env = {"DB_TIMEOUT_SECONDS": f"{timeout:g}"}
    if os.environ.get("PYTHONPATH"):  # another checkout's daemon (its before/after figures)
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    server: Database | None = None
    if mode == "external":
        server = Database(workdir / "data")
    else:
        env.update(DATA_DIR=str(workdir / "embedded"), DATA_DIR_MIN_FREE_MB="0")
    daemon = Daemon(workdir, server.uri if server is not None else "", db_name, **env)
    calls = Calls()
    workers: list[threading.Thread] = []
    try:
        if server is not None:
            server.start(timeout=60)
        daemon.start(timeout=90)
        seed_uri = server.uri if server is not None else f"mongodb://127.0.0.1:{embedded_database(daemon)[1]}/"
        markets = seed(seed_uri, db_name, threads)
        workers = [threading.Thread(target=Caller(daemon.url, m, calls).run, daemon=True) for m in markets]
        for t in workers:
            t.start()
        time.sleep(before)
        pid = server.pid if server is not None else embedded_database(daemon)[0]
        killed_at = time.monotonic()
        if signum == signal.SIGSTOP:
            os.kill(pid, signal.SIGSTOP)
            time.sleep(stall)
            os.kill(pid, signal.SIGCONT)
        elif server is not None:
            server.kill(signum)
            server.start(timeout=60)  # on the same data directory, as soon as the old process is gone
        else:
            os.kill(pid, signum)
            wait_for(lambda: _new_database(daemon, pid), 60, "the daemon to start its database again")
        back = time.monotonic() - killed_at
        time.sleep(after)
    finally:
        calls.stop.set()
        for t in workers:
            t.join(timeout + 5)
        daemon.stop(timeout=60)
        if server is not None:
            server.stop()
    with calls.lock:
        done = list(calls.done)
    rows = timeline(done, killed_at, -int(before) + 1, int(back + after) - 1)
    result = summary(rows, back, timeout, done, killed_at)
    result.update(mode=mode, signal=signal.Signals(signum).name, threads=threads, timeout=timeout,
                  timeline=[vars(r) for r in rows])
    out(f"{mode} database, {signal.Signals(signum).name}, {threads} callers, DB_TIMEOUT_SECONDS={timeout:g}; "
        f"killed at {time.strftime('%H:%M:%S', time.localtime(time.time() - (time.monotonic() - killed_at)))}, "
        f"the database answers again {back:.1f} s later")
    out(f"{'s':>4} {'started':>8} {'ok':>6} {'UNAVAIL':>8} {'other':>6} {'slowest s':>10}")
    for r in rows:
        mark = " <- back" if r.at == int(back) else ""
        out(f"{r.at:>4} {r.started:>8} {r.ok:>6} {r.unavailable:>8} {r.other:>6} {r.slowest:>10.2f}{mark}")
    out(json.dumps({k: v for k, v in result.items() if k != "timeline"}))
    return result


def _new_database(daemon: Daemon, old: int) -> bool:
    found = daemon.embedded_database()
    return found is not None and found[0] != old and _pings(f"mongodb://127.0.0.1:{found[1]}/")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("external", "embedded"), default="external")
    parser.add_argument("--signal", choices=("KILL", "TERM", "STOP"), default="KILL",
                        help="STOP: the database frozen for --stall seconds (SIGSTOP, then SIGCONT)")
    parser.add_argument("--stall", type=float, default=8.0)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--before", type=float, default=10.0, help="seconds of load before the kill")
    parser.add_argument("--after", type=float, default=45.0, help="seconds of load after the database is back")
    parser.add_argument("--timeout", type=float, default=5.0, help="DB_TIMEOUT_SECONDS")
    parser.add_argument("--json", type=Path, help="write the result here")
    parser.add_argument("--keep", type=Path, help="an empty directory for the data and logs, kept afterwards")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-crash-") as tmp:
        workdir = Path(tmp)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            workdir = args.keep
        result = run(args.mode, getattr(signal, f"SIG{args.signal}"), args.threads, args.before, args.after,
                     args.timeout, workdir, stall=args.stall)
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
    if result["wave_seconds"] or result["past_deadline"] or result["recovered_at"] is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
