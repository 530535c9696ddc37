"""SIGKILL the daemon in the middle of a stream of order and payment calls, restart it, check the money.

Four clients run scripted order lives (place with an idempotency key, pay with
a client-chosen payment id, process, then complete and refund, cancel, or
dispute and complete) against one daemon; after a number of answered calls the
daemon is killed with SIGKILL.  A new daemon is started on the same database.
Every call that was answered must be in the database and the invariants must
hold; then the calls that got no answer are retried with the same ids (a
refund only if the database does not hold it: refunds carry no id) and every
script is run to its end; the final state must be exactly what the scripts
describe.

A transaction the killed daemon had open stays open on the server until its
lifetime runs out (60 s on MongoDB and SecantusDB; closing the connection does
not abort it), and the documents it wrote are held until then: a retry of that
call answers UNAVAILABLE ("try again shortly") meanwhile, so ``settle`` retries
for up to ``RETRY_FOR`` seconds.
"""

from __future__ import annotations

import http.client
import signal
import threading
import time
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_HALF_UP, Decimal

from bson import ObjectId

from tests.money_support import check_invariants, dec, earnings, market

FLOWS = 40
CLIENTS = 4
KILL_AFTER = 45  # answered calls before the SIGKILL
CENT = Decimal("0.01")
RETRY_FOR = 90.0  # seconds: an abandoned transaction of the killed daemon may hold its documents a while


def script(kind: int) -> list[tuple]:
    """The calls of one order's life (after place, pay and process)."""
    tail = {
        0: [("update_status", "completed"), ("refund", "1.00")],
        1: [("cancel", "crash test")],
        2: [("update_status", "disputed"), ("update_status", "completed")],
    }[kind]
    return [("create",), ("pay",), ("process",), *tail]


class Flow:
    def __init__(self, index: int, db) -> None:
        self.index = index
        self.kind = index % 3
        self.price = Decimal(1000 + 37 * index) / 100
        self.seller, self.gig, self.buyer = market(db, f"{self.price:.2f}")
        self.key = f"crash-{index}"
        self.pid = str(ObjectId())
        self.order_id: str | None = None
        self.steps = script(self.kind)
        self.done = 0  # steps answered
        self.unanswered: int | None = None  # the step that was sent but got no answer

    def call(self, proxy, step: tuple) -> dict:
        name = step[0]
        if name == "create":
            result = proxy.ordersService.create(self.gig, self.buyer, 1, f"{self.price:.2f}",
                                                {"idempotency_key": self.key})
            if result["success"]:
                self.order_id = result["order_id"]
            return result
        if name == "pay":
            return proxy.paymentsService.create(self.pid, self.order_id, f"{self.price:.2f}", "stripe")
        if name == "process":
            return proxy.paymentsService.process(self.pid, "completed")
        if name == "update_status":
            return proxy.ordersService.update_status(self.order_id, step[1])
        if name == "cancel":
            return proxy.ordersService.cancel(self.order_id, step[1])
        if name == "refund":
            return proxy.paymentsService.refund(self.pid, step[1])
        raise AssertionError(step)

    def expected_earnings(self) -> Decimal:
        if self.kind == 1:
            return Decimal("0.00")
        fee = (self.price * Decimal("0.20")).quantize(CENT, ROUND_HALF_UP)
        credit = self.price - fee
        if self.kind == 0:  # minus the seller share of the 1.00 refund
            credit -= Decimal("1.00") - (Decimal("1.00") * fee / self.price).quantize(CENT, ROUND_HALF_UP)
        return credit


def in_database(db, flow: Flow, step: tuple) -> bool:
    """Whether the effect of ``step`` of ``flow`` is stored."""
    name = step[0]
    order = db.orders.find_one({"_id": ObjectId(flow.order_id)}) if flow.order_id else None
    payment = db.payments.find_one({"_id": ObjectId(flow.pid)})
    if name == "create":
        return order is not None
    if name == "pay":
        return payment is not None
    if name == "process":
        return payment is not None and payment["status"] != "pending"
    if name in ("update_status", "cancel"):
        target = step[1] if name == "update_status" else "cancelled"
        return order is not None and any(h["to"] == target for h in order["statusHistory"])
    if name == "refund":
        return payment is not None and payment.get("refundCount", 0) >= 1
    raise AssertionError(step)


def stream(proxy, flows: list[Flow], answered: list, stop: threading.Event) -> None:
    """Run the flows' scripts in order until the daemon stops answering."""
    for flow in flows:
        for number, step in enumerate(flow.steps):
            try:
                result = flow.call(proxy, step)
            except (OSError, http.client.HTTPException, xmlrpc.client.ProtocolError):
                flow.unanswered = number
                stop.set()
                return
            assert result["success"] is True, (flow.index, step, result)
            flow.done = number + 1
            answered.append((flow.index, number))
            if stop.is_set():
                return


def settle(proxy, db, flow: Flow) -> None:
    """After the restart: retry the unanswered step with the same ids, then run the rest of the script."""
    for number in range(flow.done, len(flow.steps)):
        step = flow.steps[number]
        if number == flow.unanswered and step[0] == "refund" and in_database(db, flow, step):
            continue  # the refund was applied before the kill: a refund has no id, do not repeat it
        if flow.order_id is None and step[0] != "create":
            raise AssertionError(f"flow {flow.index} has no order before {step}")
        deadline = time.monotonic() + RETRY_FOR
        while True:
            result = flow.call(proxy, step)
            if result["success"] or result["code"] != "UNAVAILABLE" or time.monotonic() > deadline:
                break
            time.sleep(0.5)  # a transaction the killed daemon left open still holds the documents
        if not result["success"]:
            # the unanswered call had already been applied: the retry is refused, its effect is there
            assert number == flow.unanswered and result["code"] == "INVALID_STATE", (flow.index, step, result)
            assert in_database(db, flow, step), (flow.index, step)


def test_sigkill_in_the_middle_of_a_stream_of_money_calls(make_daemon, mongo):
    first = make_daemon()
    db = mongo[first.db_name]
    flows = [Flow(i, db) for i in range(FLOWS)]
    answered: list = []
    stop = threading.Event()
    shares = [flows[c::CLIENTS] for c in range(CLIENTS)]
    with ThreadPoolExecutor(CLIENTS) as pool:
        running = [pool.submit(stream, first.proxy(), share, answered, stop) for share in shares]
        deadline = time.monotonic() + 120
        while len(answered) < KILL_AFTER and not all(f.done() for f in running) and time.monotonic() < deadline:
            time.sleep(0.01)
        first.stop(signal.SIGKILL)
        stop.set()
        for future in running:
            future.result()
    total_steps = sum(len(f.steps) for f in flows)
    assert KILL_AFTER <= len(answered) < total_steps, "the kill did not land in the middle of the stream"
    assert any(f.unanswered is not None for f in flows), "no call was cut off by the kill"

    second = make_daemon(db_name=first.db_name)
    # every answered call is in the database, and the money is consistent as the kill left it
    for flow in flows:
        for number in range(flow.done):
            assert in_database(db, flow, flow.steps[number]), (flow.index, flow.steps[number])
    sellers = [f.seller for f in flows]
    check_invariants(db, sellers)

    proxy = second.proxy()
    for flow in flows:
        settle(proxy, db, flow)

    for flow in flows:
        order = db.orders.find_one({"_id": ObjectId(flow.order_id)})
        payment = db.payments.find_one({"_id": ObjectId(flow.pid)})
        assert order["status"] == ("cancelled" if flow.kind == 1 else "completed"), (flow.index, order)
        assert payment["status"] == {0: "partially_refunded", 1: "refunded", 2: "completed"}[flow.kind]
        assert dec(payment["refundedTotal"]) == {0: Decimal("1.00"), 1: flow.price, 2: Decimal(0)}[flow.kind]
        assert earnings(db, flow.seller) == flow.expected_earnings(), flow.index
        assert db.orders.count_documents({"buyerId": ObjectId(flow.buyer)}) == 1
    assert db.payments.count_documents({}) == FLOWS
    check_invariants(db, sellers)
