"""Several daemons on one database, one of them killed with SIGKILL mid-run and started again.

``THREADS`` callers, each with its own buyer, seller and gigs, run keyed
order flows (place with an idempotency key, pay with a client-chosen id,
process, send a message with a client-chosen id, complete) through a
round-robin "balancer" over ``DAEMONS`` daemons: a call that finds its
daemon dead goes to the next one, and a call cut off without an answer is
sent again with the same ids.  ``UNAVAILABLE`` is retried with the same ids
for up to ``RETRY_FOR`` seconds, as a caller should.

None of these calls is a duplicate of another, so no answer may be
``CONFLICT``; every acknowledged write must be in the database; and every
flow must finish: a transaction the killed daemon left open on the server
holds the documents it wrote (the caller's buyer, seller, gig, order) until
the server aborts it, and a surviving daemon must not let that last the
server's 60 s transaction lifetime.
"""

from __future__ import annotations

import http.client
import re
import signal
import socket
import struct
import threading
import time
import xmlrpc.client
from dataclasses import dataclass, field

import bson
import pytest
from bson import ObjectId

from tests.conftest import wait_for
from tests.money_support import market, seed_gig
from worknet.store.sessions import BEAT_SECONDS

DAEMONS = 3
THREADS = 12
GIGS = 4  # per caller: a flow that gives up leaves a pending order on its gig, the next flow takes another
KILLS = 2  # the victim is killed mid-load, and started again, twice
SERVED = 4 * THREADS  # answers the victim gives before each kill (it is really in the rotation)
FLOWS = THREADS  # flows completed before the first kill, while the victim is down, and after the last restart
# seconds from one kill to the next: the survivors end the killed daemon's sessions (it ran on their host) at
# their next beat, so what it left held is free again before the next kill
KILL_GAP = 3 * BEAT_SECONDS
ALREADY = re.compile(r"is (\w+) and cannot become \1$")  # the status change asked for was already made
RETRY_FOR = 20.0  # seconds a caller retries UNAVAILABLE (and cut-off calls) with the same ids
CUT_OFF = (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError)


class Balancer:
    """Round robin over the daemons' URLs, one keep-alive proxy per daemon and thread; a dead daemon is skipped."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.next = 0
        self.lock = threading.Lock()
        self.local = threading.local()
        self.answered = [0] * len(urls)  # answers each daemon gave

    def _proxy(self, i: int) -> xmlrpc.client.ServerProxy:
        proxies = self.local.__dict__.setdefault("proxies", {})
        if i not in proxies:
            proxies[i] = xmlrpc.client.ServerProxy(self.urls[i], allow_none=True)
        return proxies[i]

    def call(self, method: str, *args) -> dict:
        """The answer of the first daemon that answers; CUT_OFF when a daemon took the call and died."""
        with self.lock:
            start, self.next = self.next, (self.next + 1) % len(self.urls)
        refused: Exception | None = None
        for k in range(len(self.urls)):
            i = (start + k) % len(self.urls)
            try:
                answer = getattr(self._proxy(i), method)(*args)
            except ConnectionRefusedError as e:  # not running: the balancer's health check would skip it
                self.local.proxies.pop(i, None)
                refused = e
            except CUT_OFF:
                self.local.proxies.pop(i, None)
                raise
            else:
                with self.lock:
                    self.answered[i] += 1
                return answer
        assert refused is not None
        raise refused


@dataclass
class Tally:
    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: int = 0
    conflicts: list[tuple] = field(default_factory=list)  # (method, answer)
    unavailable: int = 0
    cut_off: int = 0
    gave_up: list[tuple] = field(default_factory=list)
    errors: list[tuple] = field(default_factory=list)
    orders: list[str] = field(default_factory=list)  # acknowledged writes
    payments: list[tuple[str, str]] = field(default_factory=list)  # (payment id, status acknowledged)
    messages: list[str] = field(default_factory=list)
    completed: list[str] = field(default_factory=list)
    flows: int = 0
    crashed: list[str] = field(default_factory=list)  # callers that stopped on an exception


class Caller:
    def __init__(self, n: int, db, balancer: Balancer, tally: Tally, stop: threading.Event) -> None:
        self.n = n
        self.balancer = balancer
        self.tally = tally
        self.stop = stop
        self.seller, gig, self.buyer = market(db, "12.00")
        self.gigs = [gig] + [seed_gig(db, self.seller, "12.00") for _ in range(GIGS - 1)]
        self.conversation: str | None = None

    def call(self, method: str, *args, applied_if_invalid: bool = False) -> dict | None:
        """One logical call: sent again with the same arguments after UNAVAILABLE or a cut-off, for RETRY_FOR s.

        ``applied_if_invalid``: after a cut-off or UNAVAILABLE, INVALID_STATE means
        an earlier attempt was applied (a status change sent twice: a call told
        UNAVAILABLE may have committed).
        """
        deadline = time.monotonic() + RETRY_FOR
        uncertain = False
        while True:
            try:
                answer = self.balancer.call(method, *args)
            except CUT_OFF:
                with self.tally.lock:
                    self.tally.cut_off += 1
                answer = {"success": False, "code": "CUT_OFF"}
            with self.tally.lock:
                self.tally.calls += 1
                if answer.get("code") == "CONFLICT":
                    self.tally.conflicts.append((method, answer.get("error")))
                elif answer.get("code") == "UNAVAILABLE":
                    self.tally.unavailable += 1
            if answer.get("success"):
                return answer
            if answer.get("code") == "INVALID_STATE" and applied_if_invalid and (
                    uncertain or ALREADY.search(answer.get("error", ""))):
                # an earlier attempt was applied; xmlrpc.client itself sends a call again, unseen, when the
                # connection is reset under it (a daemon killed mid-call): then only the answer tells
                return answer
            uncertain = uncertain or answer.get("code") in ("UNAVAILABLE", "CUT_OFF")
            if answer.get("code") not in ("UNAVAILABLE", "CUT_OFF"):
                with self.tally.lock:
                    self.tally.errors.append((method, answer))
                return None
            if time.monotonic() > deadline:
                with self.tally.lock:
                    self.tally.gave_up.append((self.n, method, answer.get("code")))
                return None
            time.sleep(0.25)

    def main(self) -> None:
        try:
            self.run()
        except Exception as e:  # a caller that dies proves nothing: the checks below report it
            with self.tally.lock:
                self.tally.crashed.append(repr(e))
            raise

    def run(self) -> None:
        started = self.call("messagesService.start_conversation", self.buyer, self.seller)
        if started is None:
            return
        self.conversation = started["conversation_id"]
        flow = 0
        while not self.stop.is_set():
            flow += 1
            if not self.flow(flow):
                self.gigs.pop(0)  # a pending order may be left on it
                if not self.gigs:
                    return
            else:
                self.gigs.append(self.gigs.pop(0))

    def flow(self, flow: int) -> bool:
        t = self.tally
        key = f"scale-{self.n}-{flow}-{ObjectId()}"
        placed = self.call("ordersService.create", self.gigs[0], self.buyer, 1, "12.00", {"idempotency_key": key})
        if placed is None:
            return False
        order_id = placed["order_id"]
        with t.lock:
            t.orders.append(order_id)
        pid = str(ObjectId())
        if self.call("paymentsService.create", pid, order_id, "12.00", "stripe") is None:
            return False
        with t.lock:
            t.payments.append((pid, "pending"))
        if self.call("paymentsService.process", pid, "completed", applied_if_invalid=True) is None:
            return False
        with t.lock:
            t.payments.append((pid, "completed"))
        mid = str(ObjectId())
        if self.call("messagesService.create", mid, self.conversation, self.buyer, {"text": f"flow {flow}"}) is None:
            return False
        with t.lock:
            t.messages.append(mid)
        if self.call("ordersService.update_status", order_id, "completed", None, applied_if_invalid=True) is None:
            return False
        with t.lock:
            t.completed.append(order_id)
            t.flows += 1
        return True


def test_several_daemons_one_killed_no_conflict_for_unrelated_flows(make_daemon, mongo):
    env = {"DB_TIMEOUT_SECONDS": "5"}
    daemons = [make_daemon(**env)]
    daemons += [make_daemon(db_name=daemons[0].db_name, **env) for _ in range(DAEMONS - 1)]
    db = mongo[daemons[0].db_name]
    victim = daemons[1]
    victim.expected_errors = True
    balancer = Balancer([d.url for d in daemons])
    tally = Tally()
    stop = threading.Event()
    callers = [Caller(n, db, balancer, tally, stop) for n in range(THREADS)]
    threads = [threading.Thread(target=c.main, daemon=True) for c in callers]
    began = time.monotonic()
    timeline: list[tuple[float, float]] = []  # (killed at, started again at), seconds into the run
    for thread in threads:
        thread.start()

    def until(done, what: str) -> None:  # or every caller stopped (gave up): the checks below say why
        wait_for(lambda: done() or not any(t.is_alive() for t in threads), 120, what)

    def flows_after(count: int, what: str) -> None:
        until(lambda: tally.flows >= count, what)

    # The timeline follows the run, not the clock: each kill comes once the load runs and the victim
    # answers its share of it, each restart once the others carried flows alone, the end once flows
    # completed after the last restart; the kills stay KILL_GAP apart.
    try:
        flows_after(FLOWS, "flows before the first kill")
        for _ in range(KILLS):
            served = balancer.answered[1]
            until(lambda served=served: balancer.answered[1] >= served + SERVED, "the victim to answer calls")
            if timeline:
                time.sleep(max(0.0, began + timeline[-1][0] + KILL_GAP - time.monotonic()))
            victim.stop(signal.SIGKILL)
            killed = time.monotonic() - began
            flows_after(tally.flows + FLOWS, "flows while the victim is down")
            victim.start()
            timeline.append((killed, time.monotonic() - began))
        flows_after(tally.flows + FLOWS, "flows after the last restart")
    finally:
        stop.set()
        for thread in threads:
            thread.join(RETRY_FOR + 30)
    wait_for(lambda: not any(t.is_alive() for t in threads), 60, "the callers to finish")

    lost = [o for o in tally.orders if db.orders.find_one({"_id": ObjectId(o)}, {"_id": 1}) is None]
    for pid, status in tally.payments:
        payment = db.payments.find_one({"_id": ObjectId(pid)}, {"status": 1})
        if payment is None or (status == "completed" and payment["status"] != "completed"):
            lost.append(pid)
    lost += [m for m in tally.messages if db.messages.find_one({"_id": ObjectId(m)}, {"_id": 1}) is None]
    lost += [o for o in tally.completed if db.orders.find_one({"_id": ObjectId(o)})["status"] != "completed"]
    kills = ", ".join(f"{a:.0f}-{b:.0f}" for a, b in timeline)
    print(f"\n{DAEMONS} daemons, {THREADS} callers, {time.monotonic() - began:.0f} s, one killed and restarted "
          f"at {kills} s: "
          f"{tally.calls} calls, {tally.flows} flows completed, "
          f"{len(tally.conflicts)} CONFLICT, {tally.unavailable} UNAVAILABLE, {tally.cut_off} cut off, "
          f"{len(tally.gave_up)} flows gave up after {RETRY_FOR:.0f} s, {len(lost)} acknowledged writes lost")
    assert not tally.crashed, tally.crashed[:5]
    assert not tally.conflicts, f"{len(tally.conflicts)} CONFLICT answers: {tally.conflicts[:5]}"
    assert not lost, f"{len(lost)} acknowledged writes lost: {lost[:5]}"
    assert not tally.errors, tally.errors[:5]
    assert not tally.gave_up, f"{len(tally.gave_up)} flows could not finish: {tally.gave_up[:5]}"
    assert tally.cut_off or tally.flows, "no call was made"


def raw_command(uri: str, database: str, command: dict) -> dict:
    """One OP_MSG on a socket of its own: pymongo puts its own session id on every command."""
    host, port = uri.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)
    body = {**command, "$db": database}
    payload = struct.pack("<I", 0) + b"\x00" + bson.encode(body)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(struct.pack("<iiii", 16 + len(payload), 1, 0, 2013) + payload)
        head = s.recv(16, socket.MSG_WAITALL)
        length = struct.unpack("<i", head[:4])[0]
        rest = s.recv(length - 16, socket.MSG_WAITALL)
    return bson.decode(rest[5:])


def test_a_transaction_left_open_by_a_daemon_on_another_host_is_ended_once_its_lease_is_stale(daemon, db):
    """A lease that stops changing (a daemon elsewhere that died) gets its sessions killed: the
    documents its open transaction wrote are free again within seconds, not the server's 60 s."""
    from bson import Binary, Int64

    from worknet.store.sessions import LEASES, STALE_SECONDS, session_uuid

    if "@" in daemon.mongodb_uri or "tls=" in daemon.mongodb_uri.lower() or "," in daemon.mongodb_uri:
        pytest.skip("the dead daemon's transaction is opened on a plain socket: needs a database without TLS or auth")
    seller, gig, buyer = market(db, "12.00")
    owner = ObjectId().binary.hex()  # any string: the dead daemon's random owner
    db[LEASES].insert_one({"_id": owner, "slots": 4, "beat": 7, "host": "elsewhere.example", "pid": 4242})
    lsid = {"id": Binary(session_uuid(owner, 2).bytes, 4)}
    # the dead daemon's transaction, open on the server: it wrote the gig and then nothing more
    opened = raw_command(daemon.mongodb_uri, daemon.db_name, {
        "update": "gigs", "updates": [{"q": {"_id": ObjectId(gig)}, "u": {"$set": {"lastOrderedAt": 1}}}],
        "lsid": lsid, "txnNumber": Int64(1), "startTransaction": True, "autocommit": False})
    assert opened["ok"] == 1 and opened["nModified"] == 1, opened
    proxy = daemon.proxy()
    began = time.monotonic()
    answers = []
    while time.monotonic() - began < 45:
        answer = proxy.ordersService.create(gig, buyer, 1, "12.00", {"idempotency_key": "held"})
        answers.append(answer.get("code"))
        if answer["success"]:
            break
        assert answer["code"] == "UNAVAILABLE", answer
        time.sleep(0.5)
    took = time.monotonic() - began
    print(f"\nthe order went through {took:.1f} s after the first try ({len(answers)} calls, "
          f"{answers.count('UNAVAILABLE')} UNAVAILABLE)")
    assert answers[-1] is None, f"still refused after {took:.0f} s: {answers[-3:]}"
    assert took < STALE_SECONDS + 15, f"the held documents were freed only after {took:.0f} s"
    assert "ended the sessions of a daemon that stopped (elsewhere.example pid 4242)" in daemon.log()
    assert db[LEASES].find_one({"_id": owner}) is None
