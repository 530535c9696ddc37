"""Issue 18's transport attacks, each against a fresh daemon, with one pinging client beside it.

    .venv/bin/python -m bench.hostile [multicall] [unauthenticated] [slow] [ids] [register]

* ``multicall``: one and four ``system.multicall`` batches of 1,000 ``system.describeMethods``, and one of
  1,000 ``usersService.get_all(1, 100)`` over 100 users: the answer (status, bytes or fault), the
  daemon's peak RSS (``VmHWM``) before and after and its RSS afterwards, the pinging client's
  latencies while the batches run.
* ``unauthenticated``: ``RPC_AUTH_TOKEN`` set; 300 connections without a token each declare a 1 MiB
  body and send 983,040 bytes of it: peak RSS, what each connection was answered, how many the
  daemon still holds 15 s later, ping latencies meanwhile.
* ``slow``: a client that stops half-way through its headers, one half-way through its body (the
  default 10 s read deadline, 120 s idle timeout): seconds until the daemon closes each (30 s at most).
* ``ids``: three consecutive ``X-Request-Id`` values, and the cost of making one id.
* ``register``: 20 registrations with one e-mail at once while 32 logins keep the password pool busy
  (``BCRYPT_ROUNDS=12``): the answer codes and the bcrypt jobs run (``/metrics``).

Loopback only; every scenario is bounded in time.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import re
import secrets
import socket
import statistics
import threading
import time
import timeit
import xmlrpc.client
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime

import pymongo
from bson import Decimal128, ObjectId

from bench.loadgen import Workspace, call_body
from tests.harness import rss_mib

TOKEN = "bench-hostile-token-" + "k" * 24


def post(port: int, body: bytes, headers: dict[str, str] | None = None, timeout: float = 120) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml", **(headers or {})})
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


class Pinger:
    """One keep-alive client pinging back to back; latencies are kept while ``measuring`` is set."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.headers = {"Content-Type": "text/xml", **(headers or {})}
        self.measuring = threading.Event()
        self.stop = threading.Event()
        self.latencies: list[float] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        body = call_body("ping")
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        while not self.stop.is_set():
            started = time.perf_counter()
            conn.request("POST", "/RPC2", body=body, headers=self.headers)
            conn.getresponse().read()
            if self.measuring.is_set():
                self.latencies.append(time.perf_counter() - started)
            time.sleep(0.005)
        conn.close()

    def __enter__(self) -> Pinger:
        self.thread.start()
        time.sleep(0.3)
        self.measuring.set()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(60)

    def summary(self) -> str:
        values = sorted(self.latencies)
        if not values:
            return "ping: no answer during the attack"
        return (f"ping during the attack: n={len(values)} median {statistics.median(values) * 1000:.1f} ms, "
                f"max {values[-1] * 1000:.1f} ms")


def describe(status: int, payload: bytes) -> str:
    if status != 200:
        return f"HTTP {status}"
    try:
        value = xmlrpc.client.loads(payload)[0][0]
    except xmlrpc.client.Fault as fault:
        return f"fault {fault.faultCode} ({fault.faultString[:90]})"
    return f"200, {len(payload) / 1e6:.1f} MB, {len(value)} results"


def attack(ws: Workspace, name: str, run: Callable[[int], list[str]], **env: str) -> None:
    port = ws.daemon(f"hostile_{secrets.token_hex(4)}", **env)
    pid = ws.processes[-1].pid
    headers = {"Authorization": f"Bearer {env['RPC_AUTH_TOKEN']}"} if "RPC_AUTH_TOKEN" in env else {}
    for _ in range(20):
        post(port, call_body("ping"), headers)
    peak, rss = rss_mib(pid, "VmHWM"), rss_mib(pid, "VmRSS")
    started = time.perf_counter()
    with Pinger(port, headers) as pinger:
        answers = run(port)
    elapsed = time.perf_counter() - started
    print(f"\n{name} ({elapsed:.1f} s)\n  answers: {'; '.join(answers)}\n  RSS {rss:.0f} MB, peak {peak:.0f} MB "
          f"before; peak {rss_mib(pid, 'VmHWM'):.0f} MB, RSS {rss_mib(pid, 'VmRSS'):.0f} MB after\n"
          f"  {pinger.summary()}", flush=True)


def batches(body: bytes, count: int) -> Callable[[int], list[str]]:
    def run(port: int) -> list[str]:
        answers: list[str] = [""] * count

        def one(i: int) -> None:
            try:
                answers[i] = describe(*post(port, body))
            except OSError as e:
                answers[i] = f"{type(e).__name__}"

        threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        return answers

    return run


def seed_users(uri: str, db_name: str, count: int) -> None:
    client: pymongo.MongoClient = pymongo.MongoClient(uri, directConnection=True)
    moment = datetime.now(UTC)
    client[db_name].users.insert_many([{
        "_id": ObjectId(), "username": f"user{i}", "usernameLower": f"user{i}", "email": f"user{i}@example.com",
        "passwordHash": "x", "role": "freelancer", "isSeller": True, "phone": "+1 555 0100", "country": "Portugal",
        "bio": "Designer of logos and brands " * 8, "profilePicture": "", "skills": ["logo", "branding", "print"],
        "rating": 4.5, "reviewCount": 3, "totalEarnings": Decimal128("10.00"), "tokenVersion": 0,
        "createdAt": moment, "updatedAt": moment} for i in range(count)])
    client.close()


def multicall(ws: Workspace) -> None:
    describe_all = xmlrpc.client.dumps(([{"methodName": "system.describeMethods", "params": []}] * 1000,),
                                       "system.multicall").encode()
    print(f"describeMethods batch: {len(describe_all) / 1000:.0f} KB")
    attack(ws, "1 x 1,000 system.describeMethods", batches(describe_all, 1))
    attack(ws, "4 x 1,000 system.describeMethods at once", batches(describe_all, 4))
    db_name = f"hostile_{secrets.token_hex(4)}"
    seed_users(ws.uri, db_name, 100)
    get_all = xmlrpc.client.dumps(([{"methodName": "usersService.get_all", "params": [1, 100]}] * 1000,),
                                  "system.multicall").encode()
    port = ws.daemon(db_name)
    pid = ws.processes[-1].pid
    peak = rss_mib(pid, "VmHWM")
    with Pinger(port) as pinger:
        answer = describe(*post(port, get_all))
    print(f"\n1 x 1,000 usersService.get_all(1, 100)\n  answer: {answer}\n  peak {peak:.0f} MB before, "
          f"{rss_mib(pid, 'VmHWM'):.0f} MB after\n  {pinger.summary()}", flush=True)


async def _unauthenticated(port: int, connections: int, sent: int) -> tuple[Counter, int]:
    """``connections`` tokenless requests declaring 1 MiB, each sending ``sent`` bytes of it."""
    outcomes: Counter = Counter()
    streams: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    head = (b"POST /RPC2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
            b"Content-Length: 1048576\r\n\r\n")
    chunk = b"<" * 65536

    async def one() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        streams.append((reader, writer))
        writer.write(head)
        done = 0
        try:
            while done < sent:
                writer.write(chunk[: min(len(chunk), sent - done)])
                done += min(len(chunk), sent - done)
                await asyncio.wait_for(writer.drain(), 30)
            line = await asyncio.wait_for(reader.readline(), 2)
            outcomes[f"HTTP {line.split(b' ')[1].decode()}" if line else "closed, no answer"] += 1
        except (OSError, TimeoutError) as e:
            outcomes[f"{type(e).__name__} after {done // 1024} KiB" if done < sent else "no answer"] += 1

    async def still_open(reader: asyncio.StreamReader) -> bool:
        try:
            await asyncio.wait_for(reader.read(), 0.5)  # to the end: the daemon closed it
            return False
        except TimeoutError:
            return True
        except OSError:
            return False

    await asyncio.gather(*(one() for _ in range(connections)))
    await asyncio.sleep(15)  # the connections stay open on this side: does the daemon keep them?
    held = sum(await asyncio.gather(*(still_open(reader) for reader, _ in streams)))
    for _, writer in streams:
        writer.close()
    return outcomes, held


def unauthenticated(ws: Workspace) -> None:
    def run(port: int) -> list[str]:
        outcomes, held = asyncio.run(_unauthenticated(port, 300, 983_040))
        return [f"{dict(outcomes)}", f"{held} connections still open 15 s after the last byte"]

    attack(ws, "300 tokenless connections x 983,040 bytes of a 1 MiB body", run, RPC_AUTH_TOKEN=TOKEN)


def _closed_after(port: int, data: bytes, limit: float) -> str:
    sock = socket.create_connection(("127.0.0.1", port), timeout=limit)
    sock.sendall(data)
    started = time.monotonic()
    answer = b""
    try:
        while True:
            more = sock.recv(4096)
            if not more:
                break
            answer += more
    except TimeoutError:
        return f"still open after {limit:.0f} s"
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    status = answer.split(b"\r\n", 1)[0].decode() or "no answer"
    return f"closed after {time.monotonic() - started:.1f} s ({status})"


def slow(ws: Workspace) -> None:
    port = ws.daemon(f"hostile_{secrets.token_hex(4)}")
    head = b"POST /RPC2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\nContent-Length: 1000\r\n"
    results = {}
    threads = [threading.Thread(target=lambda k=k, d=d: results.__setitem__(k, _closed_after(port, d, 30)))
               for k, d in (("half the headers", head[:40]), ("headers and half the body", head + b"\r\n" + b"<" * 500))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    print("\nclients that stop (read deadline 10 s, idle timeout 120 s): "
          + "; ".join(f"{k}: {v}" for k, v in results.items()), flush=True)


def ids(ws: Workspace) -> None:
    from worknet.logs import new_request_id

    port = ws.daemon(f"hostile_{secrets.token_hex(4)}")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    seen = []
    for _ in range(3):
        conn.request("POST", "/RPC2", body=call_body("ping"), headers={"Content-Type": "text/xml"})
        answer = conn.getresponse()
        answer.read()
        seen.append(answer.getheader("X-Request-Id"))
    conn.close()
    number = 1_000_000
    best = min(timeit.repeat(new_request_id, number=number, repeat=5)) / number * 1e9
    print(f"\nX-Request-Id of three consecutive pings: {', '.join(map(str, seen))}; "
          f"new_request_id(): {best:.0f} ns per id (best of 5 x {number:,})", flush=True)


def register(ws: Workspace) -> None:
    port = ws.daemon(f"hostile_{secrets.token_hex(4)}", BCRYPT_ROUNDS="12")
    stop = threading.Event()

    def login_load(i: int) -> None:  # unknown e-mails: one bcrypt check each, never locked (new e-mail each time)
        proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2")
        n = 0
        while not stop.is_set():
            proxy.usersService.login(f"load{i}x{n}@example.com", "wrong-password")
            n += 1

    def jobs_run() -> int:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", "/metrics")
        text = conn.getresponse().read().decode()
        conn.close()
        found = re.search(r'worknet_password_jobs\{outcome="run"\} ([0-9.e+]+)', text)
        return int(float(found.group(1))) if found else -1

    load = [threading.Thread(target=login_load, args=(i,), daemon=True) for i in range(32)]
    for t in load:
        t.start()
    time.sleep(3)
    codes: list[str] = [""] * 20
    barrier = threading.Barrier(20)

    def one(i: int) -> None:
        proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2")
        barrier.wait()
        answer = proxy.usersService.register(f"same{i}", "same@example.com", "password123", "client")
        codes[i] = "success" if answer["success"] else answer["code"]

    before = jobs_run()
    started = time.perf_counter()
    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.perf_counter() - started
    stop.set()
    for t in load:
        t.join(30)
    print(f"\n20 registrations with one e-mail at once, 32 logins beside them ({elapsed:.1f} s): "
          f"{dict(Counter(codes))}; bcrypt jobs run meanwhile (logins included): {jobs_run() - before}", flush=True)
    quiet = ws.daemon(f"hostile_{secrets.token_hex(4)}", BCRYPT_ROUNDS="12")
    port = quiet
    before = jobs_run()
    codes = [""] * 20
    barrier = threading.Barrier(20)
    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    print(f"the same with no other load: {dict(Counter(codes))}; bcrypt jobs run: {jobs_run() - before}", flush=True)


SCENARIOS = {"multicall": multicall, "unauthenticated": unauthenticated, "slow": slow, "ids": ids, "register": register}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("scenario", nargs="*", help=f"any of {', '.join(SCENARIOS)}; all when none is named")
    args = parser.parse_args()
    unknown = set(args.scenario) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenario: {', '.join(sorted(unknown))}")
    with Workspace("bench-hostile") as ws:
        for name in args.scenario or SCENARIOS:
            SCENARIOS[name](ws)


if __name__ == "__main__":
    main()
