"""The money path on a database without transactions (SecantusDB ``--standalone``).

The daemon then runs each flow step by step; every step is guarded
(compare-and-set on status, unique ledger keys, the seller's applied-entry
window) so that concurrent calls cannot double-credit and a retry finishes a
flow a crash stopped half-way.  Half-done states are written here exactly as
the daemon's first steps would have left them, then the call is retried.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from bson import Decimal128, ObjectId

from tests.money_support import check_invariants, dec, earnings, ledger_sum, market
from tests.test_money_races import RACES, Racer, rounds
from worknet.services.common import request_hash


@pytest.fixture
def solo(standalone, make_app):
    server, client = standalone
    app = make_app(mongodb_uri=server.uri)
    return app, app.proxy(), client[app.db_name]


def paid(rpc, db, price="10.00"):
    seller, gig, buyer = market(db, price)
    oid = rpc.ordersService.create(gig, buyer, 1, price)["order_id"]
    pid = rpc.paymentsService.create("", oid, price, "stripe")["payment_id"]
    assert rpc.paymentsService.process(pid, "completed")["order_status"] == "in_progress"
    return seller, oid, pid


def test_the_daemon_knows_it_runs_without_transactions(solo):
    app, rpc, db = solo
    assert "no transactions" in app.log()
    assert "setName" not in db.client.admin.command("hello")


def test_main_flows_without_transactions(solo):
    _, rpc, db = solo
    seller, oid, pid = paid(rpc, db, "12.34")
    assert earnings(db, seller) == 0
    rpc.paymentsService.refund(pid, 2.34)
    done = rpc.ordersService.update_status(oid, "completed")
    assert done["success"], done
    # credit 9.87 (12.34 - 2.47), debit the seller share of 2.34 (2.34 - 0.47 = 1.87)
    assert earnings(db, seller) == Decimal("8.00") == ledger_sum(db, seller)
    rpc.paymentsService.refund(pid, 10)
    assert earnings(db, seller) == 0 == ledger_sum(db, seller)

    other_seller, other, other_pid = paid(rpc, db, "5.00")
    cancelled = rpc.ordersService.cancel(other, "no longer needed")
    assert cancelled["refund"]["refunded_total"] == 5.0
    assert rpc.paymentsService.get_status(other_pid)["status"] == "refunded"
    assert rpc.paymentsService.create("", other, 5, "stripe")["code"] == "INVALID_STATE"
    _, gig, buyer = market(db)
    key = {"idempotency_key": "solo-1"}
    first = rpc.ordersService.create(gig, buyer, 1, 25, key)
    assert rpc.ordersService.create(gig, buyer, 1, 25, key)["order_id"] == first["order_id"]
    assert rpc.ordersService.create(gig, buyer, 1, 25)["code"] == "CONFLICT"
    check_invariants(db, [seller, other_seller])


def test_twenty_concurrent_completions_without_transactions(solo):
    app, rpc, db = solo
    seller, oid, _ = paid(rpc, db, "30.00")

    def complete(_):
        return app.proxy().ordersService.update_status(oid, "completed")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(complete, range(20)))
    assert sum(r["success"] for r in results) == 1, results
    assert all(r["code"] == "INVALID_STATE" for r in results if not r["success"])
    assert db.ledger.count_documents({"orderId": ObjectId(oid)}) == 1
    assert earnings(db, seller) == Decimal("24.00")
    check_invariants(db, [seller])


def test_concurrent_payments_refunds_and_cancel_or_complete_without_transactions(solo):
    app, rpc, db = solo
    seller, gig, buyer = market(db, "10.00")
    oid = rpc.ordersService.create(gig, buyer, 1, 10)["order_id"]
    pid = str(ObjectId())
    with ThreadPoolExecutor(10) as pool:
        created = list(pool.map(lambda _: app.proxy().paymentsService.create(pid, oid, 10, "stripe"), range(10)))
    assert sum(r["created"] for r in created) == 1 and db.payments.count_documents({}) == 1
    rpc.paymentsService.process(pid, "completed")
    with ThreadPoolExecutor(8) as pool:
        refunds = list(pool.map(lambda _: app.proxy().paymentsService.refund(pid, 3), range(8)))
    assert sum(r["success"] for r in refunds) == 3, refunds
    assert dec(db.payments.find_one({"_id": ObjectId(pid)})["refundedTotal"]) == Decimal("9.00")

    # cancel and complete racing on the same paid order: exactly one wins, the money follows the winner
    sellers = [seller]
    for _ in range(3):
        racer, race, race_pid = paid(rpc, db, "7.00")
        sellers.append(racer)

        def move(target, race=race):
            proxy = app.proxy()
            if target == "cancelled":
                return proxy.ordersService.cancel(race, "race")
            return proxy.ordersService.update_status(race, target)

        with ThreadPoolExecutor(6) as pool:
            moves = list(pool.map(move, ["cancelled", "completed"] * 3))
        assert sum(r["success"] for r in moves) == 1, moves
        status = db.orders.find_one({"_id": ObjectId(race)})["status"]
        payment = db.payments.find_one({"_id": ObjectId(race_pid)})
        if status == "completed":
            assert earnings(db, racer) == Decimal("5.60") and payment["status"] == "completed"
        else:
            assert earnings(db, racer) == 0 and payment["status"] == "refunded"
    check_invariants(db, sellers)


@pytest.mark.parametrize("race", sorted(RACES))
def test_money_races_without_transactions(solo, race):
    """The races of tests/test_money_races.py, two clients released at once, on a standalone server:
    each flow writes its own document before it reads the other's (or compare-and-sets it), so of
    two racing flows at least one sees the other; the books must come out right every round."""
    app, rpc, db = solo
    setup, first, second, outcome = RACES[race]
    if race == "cancel_vs_process":
        outcome = _cancel_vs_process_without_transactions
    racer = Racer(app)
    try:
        rounds(rpc, db, racer, setup, first, second, outcome)
    finally:
        racer.close()


def _cancel_vs_process_without_transactions(results, order, payments):
    """Narrowed, not closed: the payment may complete after the cancel read it as pending; the
    process call then sees the cancel, refunds the payment in full and answers INVALID_STATE saying
    so -- an outcome no serial order gives (with transactions it cannot happen), but no money is held."""
    cancel, processed = results
    if not processed["success"] and "refunded" in processed.get("error", ""):
        if payments[0]["status"] != "refunded" or order["status"] != "cancelled" or not cancel["success"]:
            return f"order {order['status']}, payment {payments[0]['status']}, cancel {cancel}"
        return None
    return RACES["cancel_vs_process"][3](results, order, payments)


def _complete_without_credit(db, oid: str) -> None:
    """What the daemon writes first when completing an order: the status compare-and-set."""
    at = datetime.now(UTC)
    db.orders.update_one({"_id": ObjectId(oid), "status": "in_progress"}, {
        "$set": {"status": "completed", "completedAt": at, "updatedAt": at},
        "$push": {"statusHistory": {"from": "in_progress", "to": "completed", "at": at, "reason": ""}},
    })


def test_a_retry_completes_a_half_done_completion(solo):
    _, rpc, db = solo
    seller, oid, _ = paid(rpc, db, "10.00")
    order = db.orders.find_one({"_id": ObjectId(oid)})
    entry = {"key": f"credit:{oid}", "kind": "credit", "sellerId": order["sellerId"], "orderId": order["_id"],
             "paymentId": None, "amount": Decimal128("8.00"), "applied": False, "createdAt": datetime.now(UTC)}

    # 1. stopped after the status change: no ledger entry yet
    _complete_without_credit(db, oid)
    assert earnings(db, seller) == 0
    retry = rpc.ordersService.update_status(oid, "completed")
    assert retry["code"] == "INVALID_STATE"
    assert earnings(db, seller) == Decimal("8.00") == ledger_sum(db, seller)
    check_invariants(db, [seller])

    # 2. stopped after writing the ledger entry, before applying it
    seller2, oid2, _ = paid(rpc, db, "10.00")
    _complete_without_credit(db, oid2)
    db.ledger.insert_one({**entry, "key": f"credit:{oid2}", "sellerId": ObjectId(seller2),
                          "orderId": ObjectId(oid2)})
    assert rpc.ordersService.cancel(oid2, "retry")["code"] == "INVALID_STATE"
    assert earnings(db, seller2) == Decimal("8.00") == ledger_sum(db, seller2)

    # 3. stopped after applying it to the seller, before marking it applied: not applied twice
    seller3, oid3, _ = paid(rpc, db, "10.00")
    _complete_without_credit(db, oid3)
    entry_id = db.ledger.insert_one({**entry, "key": f"credit:{oid3}", "sellerId": ObjectId(seller3),
                                     "orderId": ObjectId(oid3)}).inserted_id
    db.users.update_one({"_id": ObjectId(seller3)},
                        {"$inc": {"totalEarnings": Decimal128("8.00")}, "$push": {"ledgerApplied": entry_id}})
    for _ in range(3):
        assert rpc.ordersService.update_status(oid3, "completed")["code"] == "INVALID_STATE"
    assert earnings(db, seller3) == Decimal("8.00") == ledger_sum(db, seller3)
    assert db.ledger.find_one({"_id": entry_id})["applied"] is True
    check_invariants(db, [seller, seller2, seller3])


def test_a_retry_completes_a_half_done_payment_or_cancellation(solo):
    _, rpc, db = solo
    # process: the payment was marked completed, the order not moved yet
    seller, gig, buyer = market(db, "10.00")
    oid = rpc.ordersService.create(gig, buyer, 1, 10)["order_id"]
    pid = rpc.paymentsService.create("", oid, 10, "stripe")["payment_id"]
    at = datetime.now(UTC)
    db.payments.update_one({"_id": ObjectId(pid)}, {
        "$set": {"status": "completed", "updatedAt": at},
        "$push": {"statusHistory": {"from": "pending", "to": "completed", "at": at, "reason": "payment completed"}},
    })
    assert rpc.paymentsService.process(pid, "completed")["code"] == "INVALID_STATE"
    assert db.orders.find_one({"_id": ObjectId(oid)})["status"] == "in_progress"

    # cancel: the order was cancelled, its payment not refunded yet
    at = datetime.now(UTC)
    db.orders.update_one({"_id": ObjectId(oid)}, {
        "$set": {"status": "cancelled", "updatedAt": at},
        "$push": {"statusHistory": {"from": "in_progress", "to": "cancelled", "at": at, "reason": "x"}},
    })
    assert rpc.ordersService.cancel(oid, "retry")["code"] == "INVALID_STATE"
    payment = db.payments.find_one({"_id": ObjectId(pid)})
    assert payment["status"] == "refunded" and dec(payment["refundedTotal"]) == Decimal("10.00")

    # create with an idempotency key: the key was remembered, the order not inserted yet
    _, gig2, buyer2 = market(db)
    planned = ObjectId()
    db.idempotency.insert_one({"_id": f"{buyer2}:k-crash", "orderId": planned, "createdAt": at,
                               "requestHash": request_hash({"gig": gig2, "quantity": 1, "total": "25.00"})})
    done = rpc.ordersService.create(gig2, buyer2, 1, 25, {"idempotency_key": "k-crash"})
    assert done["success"] and done["order_id"] == str(planned) and done["created"] is True
    again = rpc.ordersService.create(gig2, buyer2, 1, 25, {"idempotency_key": "k-crash"})
    assert again["order_id"] == str(planned) and again["created"] is False
    check_invariants(db, [seller])

