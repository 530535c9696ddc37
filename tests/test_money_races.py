"""Money operations racing each other, with transactions on (the embedded SecantusDB replica set).

Each race is run on ``ROUNDS`` fresh orders, every one with its own seller:
two real XML-RPC clients, each on its own connection, are released
at the same instant by a barrier and send one call each (or one short
sequence).  After every round the books are checked (tests.money_support
``book_problems``): the seller's ``totalEarnings`` equals the sum of their
ledger and the seller share of (paid - refunded) over completed orders; a
cancelled order holds no paid or pending payment; refunds never exceed the
payment.  Each race also checks that its outcome is one of the serial ones.
Every round runs even after a failure, so a failure reports how many rounds
went wrong.
"""

from __future__ import annotations

import functools
import threading
import xmlrpc.client
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from bson import ObjectId

from tests.money_support import book_problems, dec, market

ROUNDS = 20
PRICE = "50.00"


def ok(result: Any) -> bool:
    return isinstance(result, dict) and result.get("success") is True


def code(result: Any) -> str | None:
    return result.get("code") if isinstance(result, dict) else type(result).__name__


class Racer:
    """Two clients on two connections, and a way to release one call of each at the same instant."""

    def __init__(self, app) -> None:
        """``app``: an in-process app or a daemon (anything with ``proxy()``)."""
        self.proxies = [app.proxy(), app.proxy()]
        for proxy in self.proxies:  # open both connections before the first race
            assert proxy.ping()["status"] == "ok"
        self.pool = ThreadPoolExecutor(2)

    def race(self, first: Callable[[xmlrpc.client.ServerProxy], Any],
             second: Callable[[xmlrpc.client.ServerProxy], Any]) -> tuple[Any, Any]:
        barrier = threading.Barrier(2, timeout=30)

        def run(call, proxy):
            barrier.wait()
            try:
                return call(proxy)
            except xmlrpc.client.Fault as fault:  # a protocol fault is an outcome the checks report
                return fault

        futures = [self.pool.submit(run, first, self.proxies[0]), self.pool.submit(run, second, self.proxies[1])]
        return futures[0].result(timeout=60), futures[1].result(timeout=60)

    def close(self) -> None:
        self.pool.shutdown()
        for proxy in self.proxies:
            proxy("close")()


@pytest.fixture
def racer(app):
    racer = Racer(app)
    yield racer
    racer.close()


def placed(rpc, db, status="in_progress", pay="completed") -> dict:
    """A fresh order of a fresh seller: ``pay`` None (unpaid), "pending" or "completed"; then moved to ``status``."""
    seller, gig, buyer = market(db, PRICE)
    order = rpc.ordersService.create(gig, buyer, 1, PRICE)
    assert ok(order), order
    ctx = {"seller": seller, "order": order["order_id"], "payment": None}
    if pay is not None:
        ctx["payment"] = str(ObjectId())
        assert ok(rpc.paymentsService.create(ctx["payment"], ctx["order"], PRICE, "stripe"))
        if pay == "completed":
            assert rpc.paymentsService.process(ctx["payment"], "completed")["order_status"] == "in_progress"
    current = rpc.ordersService.get_by_id(ctx["order"])["order"]["status"]
    for step in {"pending": [], "in_progress": ["in_progress"], "completed": ["in_progress", "completed"]}[status]:
        if current != step:
            assert ok(rpc.ordersService.update_status(ctx["order"], step)), step
            current = step
    return ctx


def rounds(rpc, db, racer: Racer, setup, first, second, outcome) -> None:
    """Run ``ROUNDS`` races and fail with every round that went wrong (books or outcome)."""
    failed = []
    for number in range(ROUNDS):
        ctx = setup(rpc, db)
        results = racer.race(functools.partial(first, ctx=ctx), functools.partial(second, ctx=ctx))
        problems = book_problems(db, ctx["seller"])
        order = db.orders.find_one({"_id": ObjectId(ctx["order"])})
        payments = list(db.payments.find({"orderId": order["_id"]}))
        wrong = outcome(results, order, payments)
        if wrong:
            problems.append(wrong)
        if problems:
            failed.append(f"round {number}: {'; '.join(problems)} (results {[code(r) or 'ok' for r in results]})")
    assert not failed, f"{len(failed)}/{ROUNDS} rounds failed:\n" + "\n".join(failed)


def refunded(payments) -> Decimal:
    return sum((dec(p["refundedTotal"]) for p in payments), Decimal("0.00"))


def _complete_races_a_full_refund():
    def outcome(results, order, payments):
        if not all(ok(r) for r in results):
            return f"both calls must succeed in either order: {results}"
        if order["status"] != "completed" or payments[0]["status"] != "refunded":
            return f"order {order['status']}, payment {payments[0]['status']}"
        return None

    return (placed,
            lambda proxy, ctx: proxy.ordersService.update_status(ctx["order"], "completed"),
            lambda proxy, ctx: proxy.paymentsService.refund(ctx["payment"], PRICE),
            outcome)


def _cancel_races_paying():
    def pay(proxy, ctx):
        created = proxy.paymentsService.create(str(ObjectId()), ctx["order"], PRICE, "stripe")
        if not ok(created):
            return created
        return proxy.paymentsService.process(created["payment_id"], "completed")

    def outcome(results, order, payments):
        cancel, paid = results
        if not ok(cancel) or order["status"] != "cancelled":
            return f"the cancel must win (the order is payable and cancellable): {cancel}"
        if not ok(paid) and code(paid) != "INVALID_STATE":
            return f"paying a cancelled order is INVALID_STATE: {paid}"
        if ok(paid) and refunded(payments) != Decimal(PRICE):
            return "a payment that went through before the cancel must be refunded in full"
        return None

    return (lambda rpc, db: placed(rpc, db, pay=None),
            lambda proxy, ctx: proxy.ordersService.cancel(ctx["order"], "race"), pay, outcome)


def _cancel_races_processing_a_pending_payment():
    def outcome(results, order, payments):
        cancel, processed = results
        if not ok(cancel) or order["status"] != "cancelled":
            return f"the cancel must win: {cancel}"
        if ok(processed) and payments[0]["status"] != "refunded":
            return f"a payment completed before the cancel must be refunded: {payments[0]['status']}"
        if not ok(processed) and payments[0]["status"] != "failed":
            return f"a payment the cancel saw pending must be failed: {payments[0]['status']}"
        return None

    return (lambda rpc, db: placed(rpc, db, pay="pending"),
            lambda proxy, ctx: proxy.ordersService.cancel(ctx["order"], "race"),
            lambda proxy, ctx: proxy.paymentsService.process(ctx["payment"], "completed"),
            outcome)


def _complete_races_cancel():
    def outcome(results, order, payments):
        if sum(ok(r) for r in results) != 1 or any(not ok(r) and code(r) != "INVALID_STATE" for r in results):
            return f"exactly one must win, the other INVALID_STATE: {[code(r) for r in results]}"
        if order["status"] == "completed" and refunded(payments) != 0:
            return "a completed order keeps its payment"
        if order["status"] == "cancelled" and refunded(payments) != Decimal(PRICE):
            return "a cancelled order refunds its payment in full"
        return None

    return (placed,
            lambda proxy, ctx: proxy.ordersService.update_status(ctx["order"], "completed"),
            lambda proxy, ctx: proxy.ordersService.cancel(ctx["order"], "race"),
            outcome)


def _two_refunds_of_a_completed_order():
    def outcome(results, order, payments):
        if not all(ok(r) for r in results):
            return f"both refunds fit and must succeed: {results}"
        if refunded(payments) != Decimal("40.00") or payments[0]["status"] != "partially_refunded":
            return f"refunded {refunded(payments)}, payment {payments[0]['status']}"
        return None

    return (lambda rpc, db: placed(rpc, db, status="completed"),
            lambda proxy, ctx: proxy.paymentsService.refund(ctx["payment"], "15.00"),
            lambda proxy, ctx: proxy.paymentsService.refund(ctx["payment"], "25.00"),
            outcome)


def _refund_races_cancel():
    def outcome(results, order, payments):
        refund, cancel = results
        if not ok(cancel) or order["status"] != "cancelled":
            return f"the cancel must win: {cancel}"
        if not ok(refund) and code(refund) != "INVALID_STATE":
            return f"a refund after the cancel is INVALID_STATE: {refund}"
        if payments[0]["status"] != "refunded" or refunded(payments) != Decimal(PRICE):
            return f"refunded {refunded(payments)}, payment {payments[0]['status']}"
        return None

    return (placed,
            lambda proxy, ctx: proxy.paymentsService.refund(ctx["payment"], "20.00"),
            lambda proxy, ctx: proxy.ordersService.cancel(ctx["order"], "race"),
            outcome)


def _a_refund_retried_with_its_idempotency_key_refunds_once():
    def refund(proxy, ctx):
        return proxy.paymentsService.refund(ctx["payment"], "20.00", {"idempotency_key": ctx["order"]})

    def outcome(results, order, payments):
        if not all(ok(r) for r in results):
            return f"both answers must be the one refund: {results}"
        if results[0]["refund_id"] != results[1]["refund_id"] or refunded(payments) != Decimal("20.00"):
            return f"refunded {refunded(payments)}, refund ids {[r['refund_id'] for r in results]}"
        return None

    return (lambda rpc, db: placed(rpc, db, status="completed"), refund, refund, outcome)


# name -> (setup(rpc, db) -> ctx, first(proxy, ctx), second(proxy, ctx), outcome(results, order, payments))
RACES = {
    "complete_vs_full_refund": _complete_races_a_full_refund(),
    "cancel_vs_pay": _cancel_races_paying(),
    "cancel_vs_process": _cancel_races_processing_a_pending_payment(),
    "complete_vs_cancel": _complete_races_cancel(),
    "refund_vs_refund": _two_refunds_of_a_completed_order(),
    "refund_vs_cancel": _refund_races_cancel(),
    "keyed_refund_vs_its_retry": _a_refund_retried_with_its_idempotency_key_refunds_once(),
}


@pytest.mark.parametrize("race", sorted(RACES))
def test_race(rpc, db, racer, race):
    setup, first, second, outcome = RACES[race]
    rounds(rpc, db, racer, setup, first, second, outcome)
