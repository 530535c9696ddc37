"""A property test of the money path: random sequences of order and payment calls on a few orders.

Every step goes through a real daemon; a small model predicts each answer
(success or the error code) and, after each step, the stored statuses,
refunded totals and the sellers' earnings; ``check_invariants`` then checks
what the database holds: earnings equal the ledger, refunds never exceed the
payment, histories follow the status machines, one credit per completed order.
One daemon serves the whole run (each example seeds its own sellers, gig and
buyer in the same database, and the checks are scoped to them).
"""

from __future__ import annotations

import uuid
from decimal import ROUND_HALF_UP, Decimal

from bson import ObjectId
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.money_support import check_invariants, dec, earnings, seed_gig, seed_user

CENT = Decimal("0.01")
SLOTS = 4  # slot i orders gig i % 2 (of seller i % 2), all from one buyer: slots 0/2 and 1/3 compete
NEXT = {
    "pending": ("in_progress", "cancelled"),
    "in_progress": ("completed", "disputed", "cancelled"),
    "disputed": ("completed", "cancelled"),
    "completed": (),
    "cancelled": (),
}
FINAL = ("completed", "cancelled")
PAID = ("completed", "partially_refunded")
OPS = ("create", "pay", "process_completed", "process_failed", "refund", "cancel",
       "to_in_progress", "to_disputed", "to_completed", "to_cancelled")


def half_up(value: Decimal) -> Decimal:
    return value.quantize(CENT, rounding=ROUND_HALF_UP)


def seller_share(refunded: Decimal, total: Decimal, fee: Decimal) -> Decimal:
    """The seller's part of a cumulative refund (the order's own fee ratio, half up)."""
    return refunded - half_up(refunded * fee / total)


class Model:
    def __init__(self, prices: tuple[Decimal, Decimal]) -> None:
        self.prices = prices
        self.orders: dict[int, dict] = {}
        self.payments: dict[int, list[dict]] = {}

    def expected_earnings(self, seller: int) -> Decimal:
        total = Decimal("0.00")
        for slot, order in self.orders.items():
            if slot % 2 == seller and order["status"] == "completed":
                refunded = sum((p["refunded"] for p in self.payments.get(slot, [])), Decimal("0.00"))
                total += order["seller_amount"] - seller_share(refunded, order["total"], order["fee"])
        return total

    def live(self, slot: int) -> dict | None:
        """The payment of the slot that has not failed (an order is paid at most once)."""
        found = [p for p in self.payments.get(slot, []) if p["status"] != "failed"]
        assert len(found) <= 1
        return found[0] if found else None

    def natural(self, slot: int) -> str | None:
        """The next step of an order's usual life: create, pay, process, complete, refund."""
        order = self.orders.get(slot)
        if order is None:
            return "create"
        payment = self.live(slot)
        if order["status"] not in FINAL and payment is None:
            return "pay"
        if payment is not None and payment["status"] == "pending":
            return "process_completed"
        if order["status"] in ("in_progress", "disputed"):
            return "to_completed"
        if order["status"] == "completed" and payment is not None and payment["status"] in PAID:
            return "refund"
        return None

    def cancel(self, slot: int) -> Decimal | None:
        self.orders[slot]["status"] = "cancelled"
        refund = None
        for payment in self.payments.get(slot, []):
            if payment["status"] in PAID:
                refund = payment["amount"] - payment["refunded"]
                payment["refunded"] = payment["amount"]
                payment["status"] = "refunded"
            elif payment["status"] == "pending":
                payment["status"] = "failed"
        return refund


def expect(result: dict, code: str | None, step) -> bool:
    event(f"{step[0]}: {code or 'ok'}")
    if code is None:
        assert result["success"] is True, (step, result)
        return True
    assert result["success"] is False and result["code"] == code, (step, code, result)
    return False


def run_step(rpc, model: Model, ids: dict, step) -> None:
    op, slot, param = step
    if (param // 7) % 2 == 0:  # half of the steps take the slot's order one step further along its life
        op = model.natural(slot) or op
    order = model.orders.get(slot)
    if order is None:  # nothing to act on yet: place the slot's order instead
        op = "create"
    step = (op, slot, param)
    if op == "create":
        gig = slot % 2
        if order is not None:  # a retry with the same idempotency key answers the first result
            again = rpc.ordersService.create(ids["gigs"][gig], ids["buyer"], order["quantity"],
                                             str(order["total"]), {"idempotency_key": order["key"]})
            expect(again, None, step)
            assert again["order_id"] == order["id"] and again["created"] is False
            return
        quantity = 1 + param % 3
        total = model.prices[gig] * quantity
        key = uuid.uuid4().hex
        result = rpc.ordersService.create(ids["gigs"][gig], ids["buyer"], quantity, str(total),
                                          {"idempotency_key": key})
        rival = any(s % 2 == gig and o["status"] == "pending" for s, o in model.orders.items())
        if expect(result, "CONFLICT" if rival else None, step):
            fee = half_up(total * Decimal("0.20"))
            model.orders[slot] = {"id": result["order_id"], "status": "pending", "quantity": quantity,
                                  "total": total, "fee": fee, "seller_amount": total - fee, "key": key}
        return
    assert order is not None
    payments = model.payments.setdefault(slot, [])
    if op == "pay":
        if payments and param % 4 == 0:  # a retry of the last create answers the stored payment
            last = payments[-1]
            again = rpc.paymentsService.create(last["id"], order["id"], str(last["amount"]), "stripe")
            expect(again, None, step)
            assert again["created"] is False and again["payment"]["status"] == last["status"]
            return
        pid = str(ObjectId())
        result = rpc.paymentsService.create(pid, order["id"], str(order["total"]), "stripe")
        code = "INVALID_STATE" if order["status"] in FINAL else "CONFLICT" if model.live(slot) else None
        if expect(result, code, step):
            payments.append({"id": pid, "status": "pending", "amount": order["total"],
                             "refunded": Decimal("0.00")})
        return
    if op.startswith("process_"):
        if not payments:
            return
        payment, to = payments[-1], op.removeprefix("process_")
        result = rpc.paymentsService.process(payment["id"], to)
        if payment["status"] != "pending" or (to == "completed" and order["status"] in FINAL):
            expect(result, "INVALID_STATE", step)
            return
        expect(result, None, step)
        payment["status"] = to
        if to == "completed" and order["status"] == "pending":
            order["status"] = "in_progress"
        assert result["order_status"] == order["status"], (step, result)
        return
    if op == "refund":
        if not payments:
            return
        payment = payments[-1]
        amount = Decimal(param % int(payment["amount"] * 100 + 1) + 1) / 100
        result = rpc.paymentsService.refund(payment["id"], str(amount))
        if payment["status"] not in PAID:
            expect(result, "INVALID_STATE", step)
        elif payment["refunded"] + amount > payment["amount"]:
            expect(result, "VALIDATION_ERROR", step)
        else:
            expect(result, None, step)
            payment["refunded"] += amount
            payment["status"] = "refunded" if payment["refunded"] == payment["amount"] else "partially_refunded"
            assert dec(result["refunded_total"]) == payment["refunded"]
        return
    if op == "cancel" or op.startswith("to_"):
        target = "cancelled" if op == "cancel" else op.removeprefix("to_")
        if op == "cancel":
            result = rpc.ordersService.cancel(order["id"], "property test")
        else:
            result = rpc.ordersService.update_status(order["id"], target, "property test")
        if target not in NEXT[order["status"]]:
            expect(result, "INVALID_STATE", step)
            assert order["status"] in result["error"], (step, result)
            return
        expect(result, None, step)
        if target == "cancelled":
            refund = model.cancel(slot)
            if refund is None:
                assert result["refund"] is None, (step, result)
            else:
                assert dec(result["refund"]["amount"]) == refund, (step, result)
        else:
            order["status"] = target
        assert result["order"]["status"] == target
        return
    raise AssertionError(op)


def check_model(db, model: Model, ids: dict) -> None:
    for slot, order in model.orders.items():
        stored = db.orders.find_one({"_id": ObjectId(order["id"])})
        assert stored["status"] == order["status"], (slot, stored["status"], order)
        for payment in model.payments.get(slot, []):
            doc = db.payments.find_one({"_id": ObjectId(payment["id"])})
            assert doc["status"] == payment["status"] and dec(doc["refundedTotal"]) == payment["refunded"], doc
    for index, seller in enumerate(ids["sellers"]):
        assert earnings(db, seller) == model.expected_earnings(index), (seller, model.orders)
    check_invariants(db, ids["sellers"], only_these_sellers=True)


prices = st.integers(min_value=1, max_value=30000).map(lambda c: Decimal(c) / 100)
steps = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, SLOTS - 1), st.integers(0, 10**6)),
                 min_size=10, max_size=40)


@settings(max_examples=50, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(price_a=prices, price_b=prices, steps=steps)
def test_random_order_and_payment_sequences_keep_the_money_invariants(daemon, db, price_a, price_b, steps):
    rpc = daemon.proxy()
    sellers = [seed_user(db, "freelancer", True) for _ in range(2)]
    ids = {
        "sellers": sellers,
        "gigs": [seed_gig(db, sellers[0], f"{price_a:.2f}"), seed_gig(db, sellers[1], f"{price_b:.2f}")],
        "buyer": seed_user(db),
    }
    model = Model((price_a, price_b))
    for step in steps:
        run_step(rpc, model, ids, step)
        check_model(db, model, ids)
