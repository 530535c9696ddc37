"""A property test of the money path: random sequences of order and payment calls on a few orders.

Every step goes through the daemon's service tree (in process); a small model predicts each answer
(success or the error code) and, after each step, the stored statuses,
refunded totals and the sellers' earnings; ``check_invariants`` then checks
what the database holds: earnings equal the ledger, refunds never exceed the
payment, histories follow the status machines, one credit per completed order.
One app serves the whole run (each example seeds its own sellers, gig and
buyer in the same database, and the checks are scoped to them).

A third of the steps race a second call on the same order: both are sent at
the same instant on two connections (a barrier releases two threads), and the
two answers and what is stored must be those of one of the two serial orders
(each planned call is judged against the model it is given, so it can be
judged after the other).  Refunds sometimes carry an idempotency key and are
retried with it later.
"""

from __future__ import annotations

import copy
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

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
    assert isinstance(result, dict), (step, result)
    if code is None:
        assert result["success"] is True, (step, result)
        return True
    assert result["success"] is False and result["code"] == code, (step, code, result)
    return False


def payment_of(model: Model, slot: int, pid: str) -> dict:
    return next(p for p in model.payments.get(slot, []) if p["id"] == pid)


Call = Callable[[Any], dict]
Check = Callable[[dict, Model], None]


def plan(model: Model, ids: dict, step) -> tuple[tuple, Call, Check] | None:
    """What ``step`` sends (fixed now: ids, amounts, keys) and how to judge its answer.

    The check reads the model it is given at judging time, so one planned call
    can be judged after another concurrent call in either order.  None when
    the step has nothing to act on.
    """
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
            oid = order["id"]

            def check_repeat(result, m):
                expect(result, None, step)
                assert result["order_id"] == oid and result["created"] is False

            return step, lambda rpc: rpc.ordersService.create(
                ids["gigs"][gig], ids["buyer"], order["quantity"], str(order["total"]),
                {"idempotency_key": order["key"]}), check_repeat
        quantity = 1 + param % 3
        total = model.prices[gig] * quantity
        key = uuid.uuid4().hex

        def check_create(result, m):
            rival = any(s % 2 == gig and o["status"] == "pending" for s, o in m.orders.items())
            if expect(result, "CONFLICT" if rival else None, step):
                fee = half_up(total * Decimal("0.20"))
                m.orders[slot] = {"id": result["order_id"], "status": "pending", "quantity": quantity,
                                  "total": total, "fee": fee, "seller_amount": total - fee, "key": key}

        return step, lambda rpc: rpc.ordersService.create(ids["gigs"][gig], ids["buyer"], quantity, str(total),
                                                          {"idempotency_key": key}), check_create
    assert order is not None
    oid = order["id"]
    payments = model.payments.get(slot, [])
    if op == "pay":
        if payments and param % 4 == 0:  # a retry of the last create answers the stored payment
            last = payments[-1]

            def check_pay_again(result, m):
                expect(result, None, step)
                assert result["created"] is False
                assert result["payment"]["status"] == payment_of(m, slot, last["id"])["status"]

            return step, lambda rpc: rpc.paymentsService.create(last["id"], oid, str(last["amount"]),
                                                                "stripe"), check_pay_again
        pid = str(ObjectId())

        def check_pay(result, m):
            mine = m.orders[slot]
            code = "INVALID_STATE" if mine["status"] in FINAL else "CONFLICT" if m.live(slot) else None
            if expect(result, code, step):
                m.payments.setdefault(slot, []).append(
                    {"id": pid, "status": "pending", "amount": mine["total"], "refunded": Decimal("0.00"),
                     "keys": {}})

        return step, lambda rpc: rpc.paymentsService.create(pid, oid, str(order["total"]), "stripe"), check_pay
    if op.startswith("process_"):
        if not payments:
            return None
        pid, to = payments[-1]["id"], op.removeprefix("process_")

        def check_process(result, m):
            payment, mine = payment_of(m, slot, pid), m.orders[slot]
            if payment["status"] != "pending" or (to == "completed" and mine["status"] in FINAL):
                expect(result, "INVALID_STATE", step)
                return
            expect(result, None, step)
            payment["status"] = to
            if to == "completed" and mine["status"] == "pending":
                mine["status"] = "in_progress"
            assert result["order_status"] == mine["status"], (step, result)

        return step, lambda rpc: rpc.paymentsService.process(pid, to), check_process
    if op == "refund":
        if not payments:
            return None
        pid, paid = payments[-1]["id"], payments[-1]["amount"]
        amount = Decimal(param % int(paid * 100 + 1) + 1) / 100
        keyed = [k for k in payments[-1]["keys"]]
        if keyed and param % 3 == 0:  # a retry of a keyed refund answers that refund, whatever came since
            key = keyed[param % len(keyed)]
            amount = payments[-1]["keys"][key]["amount"]
        else:
            key = uuid.uuid4().hex if param % 2 == 0 else None

        def check_refund(result, m):
            payment = payment_of(m, slot, pid)
            first = payment["keys"].get(key) if key else None
            if first is not None:
                expect(result, None, step)
                assert result["created"] is False and result["refund_id"] == first["refund_id"], (step, result)
                assert dec(result["refunded_total"]) == first["after"]
            elif payment["status"] not in PAID:
                expect(result, "INVALID_STATE", step)
            elif payment["refunded"] + amount > payment["amount"]:
                expect(result, "VALIDATION_ERROR", step)
            else:
                expect(result, None, step)
                payment["refunded"] += amount
                payment["status"] = "refunded" if payment["refunded"] == payment["amount"] else "partially_refunded"
                assert dec(result["refunded_total"]) == payment["refunded"] and result["created"] is True
                if key:
                    payment["keys"][key] = {"amount": amount, "refund_id": result["refund_id"],
                                            "after": payment["refunded"]}

        args = (pid, str(amount)) + (({"idempotency_key": key},) if key else ())
        return step, lambda rpc: rpc.paymentsService.refund(*args), check_refund
    if op == "cancel" or op.startswith("to_"):
        target = "cancelled" if op == "cancel" else op.removeprefix("to_")

        def check_move(result, m):
            mine = m.orders[slot]
            if target not in NEXT[mine["status"]]:
                expect(result, "INVALID_STATE", step)
                assert mine["status"] in result["error"], (step, result)
                return
            expect(result, None, step)
            if target == "cancelled":
                refund = m.cancel(slot)
                if refund is None:
                    assert result["refund"] is None, (step, result)
                else:
                    assert dec(result["refund"]["amount"]) == refund, (step, result)
            else:
                mine["status"] = target
            assert result["order"]["status"] == target

        if op == "cancel":
            return step, lambda rpc: rpc.ordersService.cancel(oid, "property test"), check_move
        return step, lambda rpc: rpc.ordersService.update_status(oid, target, "property test"), check_move
    raise AssertionError(op)


def run_step(rpc, model: Model, ids: dict, step) -> None:
    planned = plan(model, ids, step)
    if planned is None:
        return
    step, call, check = planned
    result = call(rpc)
    event(f"{step[0]}: {result.get('code') or 'ok'}")
    check(result, model)


def run_pair(db, racers, model: Model, ids: dict, first_step, second_step) -> Model:
    """Two steps on one order sent at the same instant on two connections; the answers and what is
    stored must be those of one of the two serial orders. Returns the model of that order."""
    plans = [plan(model, ids, first_step), plan(model, ids, second_step)]
    if None in plans:
        for planned in plans:
            if planned is not None:
                result = planned[1](racers[0])
                planned[2](result, model)
        return model
    barrier = threading.Barrier(2, timeout=30)

    def send(index):
        barrier.wait()
        return plans[index][1](racers[index])

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(send, (0, 1)))
    failures = []
    for order in ((0, 1), (1, 0)):
        candidate = copy.deepcopy(model)
        try:
            for index in order:
                plans[index][2](results[index], candidate)
            check_model(db, candidate, ids)
        except AssertionError as e:
            failures.append(f"{[plans[i][0] for i in order]}: {e!r}")
            continue
        event(f"pair {plans[0][0][0]} | {plans[1][0][0]}: {[r.get('code') or 'ok' for r in results]}")
        return candidate
    raise AssertionError(f"no serial order explains {results}:\n" + "\n".join(failures))


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
# (op, slot, param, concurrent op or None): a third of the steps race a second call on the same order
steps = st.lists(st.tuples(st.sampled_from(OPS), st.integers(0, SLOTS - 1), st.integers(0, 10**6),
                           st.one_of(st.none(), st.none(), st.sampled_from(OPS))),
                 min_size=10, max_size=40)


@settings(max_examples=35, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(price_a=prices, price_b=prices, steps=steps)
def test_random_order_and_payment_sequences_keep_the_money_invariants(app, db, price_a, price_b, steps):
    rpc = app.proxy()
    racers = [app.proxy(), app.proxy()]
    sellers = [seed_user(db, "freelancer", True) for _ in range(2)]
    ids = {
        "sellers": sellers,
        "gigs": [seed_gig(db, sellers[0], f"{price_a:.2f}"), seed_gig(db, sellers[1], f"{price_b:.2f}")],
        "buyer": seed_user(db),
    }
    model = Model((price_a, price_b))
    for op, slot, param, rival in steps:
        if rival is not None and slot in model.orders:
            model = run_pair(db, racers, model, ids, (op, slot, param), (rival, slot, param // 3 + 1))
        else:
            run_step(rpc, model, ids, (op, slot, param))
        check_model(db, model, ids)
