"""paymentsService end to end: the daemon's service tree in process (the Node client: a real daemon),
a real database, xmlrpc.client."""

from __future__ import annotations

import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_HALF_UP, Decimal

from bson import ObjectId

from tests.money_support import check_invariants, dec, earnings, ledger_sum, market, seed_gig
from tests.test_node_client import run_node
from worknet import money

MISSING = "0" * 24
CENT = Decimal("0.01")


def order(rpc, gig, buyer, quantity=1, total=25.0):
    result = rpc.ordersService.create(gig, buyer, quantity, total)
    assert result["success"] is True, result
    return result["order_id"]


def paid_order(rpc, db, price="25.00"):
    """(seller, order_id, payment_id) of an order whose payment is completed."""
    seller, gig, buyer = market(db, price)
    oid = order(rpc, gig, buyer, 1, price)
    pid = str(ObjectId())
    assert rpc.paymentsService.create(pid, oid, price, "stripe")["created"] is True
    assert rpc.paymentsService.process(pid, "completed")["success"] is True
    return seller, oid, pid


def test_create_stores_a_pending_payment_and_a_repeat_returns_it(rpc, db):
    seller, gig, buyer = market(db, "19.99")
    oid = order(rpc, gig, buyer, 2, 39.98)
    pid = str(ObjectId())
    first = rpc.paymentsService.create(pid, oid, 39.98, "paypal")
    assert first["success"] and first["created"] is True and first["payment_id"] == pid
    payment = first["payment"]
    assert payment["id"] == pid and payment["orderId"] == oid and payment["status"] == "pending"
    assert payment["amount"] == 39.98 and payment["refundedTotal"] == 0 and payment["paymentMethod"] == "paypal"
    assert payment["buyerId"] == buyer and payment["sellerId"] == seller
    assert "liveOrderId" not in payment and "requestHash" not in payment
    again = rpc.paymentsService.create(pid, oid, "39.98", "paypal")
    assert again["success"] and again["created"] is False and again["payment"] == payment
    different = rpc.paymentsService.create(pid, oid, 39.98, "stripe")
    assert different["code"] == "CONFLICT" and different["field"] == "payment_id"
    stored = db.payments.find_one({"_id": ObjectId(pid)})
    assert dec(stored["amount"]) == Decimal("39.98") and db.payments.count_documents({}) == 1
    # the order does not move before the payment is processed, and nobody is credited
    assert rpc.ordersService.get_by_id(oid)["order"]["status"] == "pending"
    assert earnings(db, seller) == 0


def test_create_with_an_empty_id_lets_the_server_choose(rpc, db):
    _, gig, buyer = market(db)
    result = rpc.paymentsService.create("", order(rpc, gig, buyer), 25, "bank_transfer")
    assert result["created"] is True and ObjectId.is_valid(result["payment_id"])
    assert db.payments.find_one({"_id": ObjectId(result["payment_id"])})["paymentMethod"] == "bank_transfer"


def test_create_refuses_bad_input(rpc, db):
    _, gig, buyer = market(db)
    oid = order(rpc, gig, buyer)
    cases = [
        (("bad", oid, 25, "stripe"), "VALIDATION_ERROR", "payment_id"),
        (("", "bad", 25, "stripe"), "VALIDATION_ERROR", "order_id"),
        (("", oid, 24.99, "stripe"), "VALIDATION_ERROR", "amount"),
        (("", oid, 25.001, "stripe"), "VALIDATION_ERROR", "amount"),
        (("", oid, 0, "stripe"), "VALIDATION_ERROR", "amount"),
        (("", oid, -25, "stripe"), "VALIDATION_ERROR", "amount"),
        (("", oid, "NaN", "stripe"), "VALIDATION_ERROR", "amount"),
        (("", oid, {"$gt": 0}, "stripe"), "VALIDATION_ERROR", "amount"),
        (("", oid, 25, "cash"), "VALIDATION_ERROR", "payment_method"),
        (("", oid, 25, "STRIPE"), "VALIDATION_ERROR", "payment_method"),
        (({"$ne": 1}, oid, 25, "stripe"), "VALIDATION_ERROR", "payment_id"),
        (("", MISSING, 25, "stripe"), "NOT_FOUND", None),
    ]
    for args, code, field in cases:
        result = rpc.paymentsService.create(*args)
        assert result["success"] is False and result["code"] == code, (args, result)
        assert result.get("field") == field, (args, result)
    assert db.payments.count_documents({}) == 0


def test_an_order_is_paid_at_most_once(rpc, db):
    _, gig, buyer = market(db, "10.00")
    oid = order(rpc, gig, buyer, 1, 10)
    first = rpc.paymentsService.create("", oid, 10, "stripe")["payment_id"]
    second = rpc.paymentsService.create("", oid, 10, "stripe")
    assert second["code"] == "CONFLICT" and second["field"] == "order_id"
    rpc.paymentsService.process(first, "failed")
    retry = rpc.paymentsService.create("", oid, 10, "paypal")
    assert retry["created"] is True, retry
    rpc.paymentsService.process(retry["payment_id"], "completed")
    assert rpc.paymentsService.create("", oid, 10, "paypal")["code"] == "CONFLICT"
    rpc.paymentsService.refund(retry["payment_id"], 10)
    # fully refunded: the order still cannot be paid a second time
    assert rpc.paymentsService.create("", oid, 10, "paypal")["code"] == "CONFLICT"
    assert db.payments.count_documents({"orderId": ObjectId(oid)}) == 2


def test_the_same_payment_created_ten_times_concurrently_is_one_payment(app, db):
    _, gig, buyer = market(db)
    oid = order(app.proxy(), gig, buyer)
    pid = str(ObjectId())

    def create(_):
        return app.proxy().paymentsService.create(pid, oid, 25, "stripe")

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(create, range(10)))
    assert all(r["success"] and r["payment_id"] == pid for r in results), results
    assert sum(r["created"] for r in results) == 1
    assert db.payments.count_documents({}) == 1


def test_ten_different_payments_for_one_order_concurrently_one_wins(app, db):
    _, gig, buyer = market(db)
    oid = order(app.proxy(), gig, buyer)

    def create(_):
        return app.proxy().paymentsService.create("", oid, 25, "stripe")

    with ThreadPoolExecutor(10) as pool:
        results = list(pool.map(create, range(10)))
    assert sum(r["success"] for r in results) == 1, results
    assert all(r["code"] == "CONFLICT" for r in results if not r["success"])
    assert db.payments.count_documents({}) == 1


def test_a_cancelled_order_cannot_be_paid(rpc, db):
    seller, gig, buyer = market(db)
    cancelled = order(rpc, gig, buyer)
    rpc.ordersService.cancel(cancelled, "changed my mind")
    refused = rpc.paymentsService.create("", cancelled, 25, "stripe")
    assert refused["code"] == "INVALID_STATE" and "cancelled" in refused["error"]
    # a payment created before the cancellation fails with it and cannot be completed afterwards
    oid = order(rpc, gig, buyer)
    pid = rpc.paymentsService.create("", oid, 25, "stripe")["payment_id"]
    result = rpc.ordersService.cancel(oid, "found another seller")
    assert result["refund"] is None
    assert rpc.paymentsService.get_status(pid)["status"] == "failed"
    late = rpc.paymentsService.process(pid, "completed")
    assert late["code"] == "INVALID_STATE" and "failed" in late["error"]
    assert rpc.ordersService.get_by_id(oid)["order"]["status"] == "cancelled"
    assert db.payments.count_documents({"status": "completed"}) == 0
    check_invariants(db, [seller])


def test_a_completed_order_cannot_be_paid(rpc, db):
    seller, gig, buyer = market(db)
    oid = order(rpc, gig, buyer)
    pid = rpc.paymentsService.create("", oid, 25, "stripe")["payment_id"]
    rpc.ordersService.update_status(oid, "in_progress")
    rpc.ordersService.update_status(oid, "completed")
    late = rpc.paymentsService.process(pid, "completed")
    assert late["code"] == "INVALID_STATE" and "completed" in late["error"]
    assert rpc.paymentsService.get_status(pid)["status"] == "pending"
    other = order(rpc, seed_gig(db, seller), buyer)
    rpc.ordersService.update_status(other, "in_progress")
    rpc.ordersService.update_status(other, "completed")
    assert rpc.paymentsService.create("", other, 25, "stripe")["code"] == "INVALID_STATE"


def test_process_completed_moves_a_pending_order_and_notifies_both(rpc, db):
    seller, gig, buyer = market(db, "12.50")
    oid = order(rpc, gig, buyer, 2, 25)
    pid = rpc.paymentsService.create("", oid, 25, "stripe")["payment_id"]
    db.notifications.delete_many({})
    done = rpc.paymentsService.process(pid, "completed")
    assert done["success"] and done["order_status"] == "in_progress"
    assert done["payment"]["status"] == "completed"
    assert [(h["from"], h["to"]) for h in done["payment"]["statusHistory"]] == [(None, "pending"),
                                                                               ("pending", "completed")]
    stored = db.orders.find_one({"_id": ObjectId(oid)})
    assert stored["status"] == "in_progress" and stored["statusHistory"][-1]["reason"] == "payment completed"
    notes = {str(n["userId"]): n for n in db.notifications.find({"type": "payment"})}
    assert set(notes) == {buyer, seller} and all(oid in n["link"] for n in notes.values())
    again = rpc.paymentsService.process(pid, "completed")
    assert again["code"] == "INVALID_STATE" and "completed" in again["error"]
    assert rpc.paymentsService.process(pid, "failed")["code"] == "INVALID_STATE"
    assert db.orders.find_one({"_id": ObjectId(oid)})["statusHistory"][-1]["to"] == "in_progress"
    assert len(db.orders.find_one({"_id": ObjectId(oid)})["statusHistory"]) == 2


def test_process_an_in_progress_or_disputed_order_keeps_its_status(rpc, db):
    seller, _, buyer = market(db)
    for target in ("in_progress", "disputed"):
        oid = order(rpc, seed_gig(db, seller), buyer)
        rpc.ordersService.update_status(oid, "in_progress")
        if target == "disputed":
            rpc.ordersService.update_status(oid, "disputed")
        pid = rpc.paymentsService.create("", oid, 25, "other")["payment_id"]
        assert rpc.paymentsService.process(pid, "completed")["order_status"] == target


def test_process_failed_and_bad_input(rpc, db):
    _, gig, buyer = market(db)
    oid = order(rpc, gig, buyer)
    pid = rpc.paymentsService.create("", oid, 25, "stripe")["payment_id"]
    for bad in (("bad", "completed"), (pid, "refunded"), (pid, "pending"), (pid, {"$set": 1}), (pid, "")):
        assert rpc.paymentsService.process(*bad)["code"] == "VALIDATION_ERROR", bad
    assert rpc.paymentsService.process(MISSING, "completed")["code"] == "NOT_FOUND"
    failed = rpc.paymentsService.process(pid, "failed")
    assert failed["payment"]["status"] == "failed" and failed["order_status"] == "pending"
    assert rpc.ordersService.get_by_id(oid)["order"]["status"] == "pending"
    assert rpc.paymentsService.process(pid, "completed")["code"] == "INVALID_STATE"
    assert rpc.paymentsService.refund(pid, 1)["code"] == "INVALID_STATE"


def test_partial_refunds_accumulate_and_never_exceed(rpc, db):
    seller, oid, pid = paid_order(rpc, db, "10.00")
    pending = rpc.paymentsService.create("", order(rpc, *market(db)[1:]), 25, "stripe")["payment_id"]
    assert rpc.paymentsService.refund(pending, 1)["code"] == "INVALID_STATE"
    first = rpc.paymentsService.refund(pid, 2.5)
    assert first["refunded_total"] == 2.5 and first["payment"]["status"] == "partially_refunded"
    second = rpc.paymentsService.refund(pid, "3.30")
    assert second["refunded_total"] == 5.8 and second["payment"]["status"] == "partially_refunded"
    too_much = rpc.paymentsService.refund(pid, 4.21)
    assert too_much["code"] == "VALIDATION_ERROR" and too_much["field"] == "amount" and "4.20" in too_much["error"]
    last = rpc.paymentsService.refund(pid, 4.2)
    assert last["refunded_total"] == 10.0 and last["payment"]["status"] == "refunded"
    after = rpc.paymentsService.refund(pid, 0.01)
    assert after["code"] == "INVALID_STATE" and "refunded" in after["error"]
    for bad in ((pid, 0), (pid, -1), (pid, 0.001), ("bad", 1)):
        assert rpc.paymentsService.refund(*bad)["code"] == "VALIDATION_ERROR", bad
    assert rpc.paymentsService.refund(MISSING, 1)["code"] == "NOT_FOUND"
    stored = db.payments.find_one({"_id": ObjectId(pid)})
    assert [dec(r["amount"]) for r in stored["refunds"]] == [Decimal("2.50"), Decimal("3.30"), Decimal("4.20")]
    assert [h["to"] for h in stored["statusHistory"]] == ["pending", "completed", "partially_refunded",
                                                          "partially_refunded", "refunded"]
    # the order was never completed: nobody was credited, so nothing is debited
    assert earnings(db, seller) == 0 and db.ledger.count_documents({}) == 0
    check_invariants(db, [seller])


def test_concurrent_refunds_never_exceed_the_amount(app, db):
    seller, oid, pid = paid_order(app.proxy(), db, "10.00")
    app.proxy().ordersService.update_status(oid, "completed")

    def refund(_):
        return app.proxy().paymentsService.refund(pid, 3)

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(refund, range(8)))
    assert sum(r["success"] for r in results) == 3, results
    assert {r.get("code") for r in results if not r["success"]} <= {"VALIDATION_ERROR", "UNAVAILABLE"}
    assert dec(db.payments.find_one({"_id": ObjectId(pid)})["refundedTotal"]) == Decimal("9.00")
    # seller share of 9.00 out of 10.00 with a 2.00 fee: 7.20 debited from the 8.00 credit
    assert earnings(db, seller) == Decimal("0.80") == ledger_sum(db, seller)
    check_invariants(db, [seller])


def test_refund_after_completion_debits_only_the_seller_share(rpc, db):
    seller, oid, pid = paid_order(rpc, db, "33.33")
    rpc.ordersService.update_status(oid, "completed")
    order_doc = db.orders.find_one({"_id": ObjectId(oid)})
    assert dec(order_doc["platformFee"]) == Decimal("6.67") and dec(order_doc["sellerAmount"]) == Decimal("26.66")
    assert earnings(db, seller) == Decimal("26.66")
    rpc.paymentsService.refund(pid, 10)
    share = Decimal("10.00") - (Decimal("10.00") * Decimal("6.67") / Decimal("33.33")).quantize(CENT, ROUND_HALF_UP)
    assert earnings(db, seller) == Decimal("26.66") - share == ledger_sum(db, seller)
    rpc.paymentsService.refund(pid, 23.33)
    assert earnings(db, seller) == 0 == ledger_sum(db, seller)
    assert db.ledger.count_documents({"kind": "debit", "orderId": ObjectId(oid)}) == 2
    check_invariants(db, [seller])


def test_refund_before_completion_is_debited_when_the_order_completes(rpc, db):
    seller, oid, pid = paid_order(rpc, db, "20.00")
    rpc.paymentsService.refund(pid, 5)
    assert earnings(db, seller) == 0
    rpc.ordersService.update_status(oid, "completed")
    # credit 16.00, debit the seller share of 5.00 (4.00)
    assert earnings(db, seller) == Decimal("12.00") == ledger_sum(db, seller)
    check_invariants(db, [seller])


def test_origin_double_credit_is_impossible(rpc, db):
    """The origin credited 80 % on payment and 100 % on completion; here only completion credits, once."""
    seller, gig, buyer = market(db, "50.00")
    oid = order(rpc, gig, buyer, 1, 50)
    pid = rpc.paymentsService.create("", oid, 50, "stripe")["payment_id"]
    rpc.paymentsService.process(pid, "completed")
    rpc.paymentsService.process(pid, "completed")
    assert earnings(db, seller) == 0 and db.ledger.count_documents({}) == 0
    assert db.users.find_one({"_id": ObjectId(seller)}).get("ledgerApplied") in (None, [])
    for _ in range(3):
        rpc.ordersService.update_status(oid, "completed")
    rpc.paymentsService.process(pid, "completed")
    seller_amount = dec(db.orders.find_one({"_id": ObjectId(oid)})["sellerAmount"])
    assert seller_amount == Decimal("40.00") == earnings(db, seller)
    entries = list(db.ledger.find({}))
    assert len(entries) == 1 and entries[0]["kind"] == "credit" and dec(entries[0]["amount"]) == seller_amount
    stats = rpc.usersService.get_stats(seller)["stats"]
    assert stats["totalEarnings"] == 40.0
    check_invariants(db, [seller])


def test_get_status(rpc, db):
    _, oid, pid = paid_order(rpc, db, "8.00")
    rpc.paymentsService.refund(pid, 1.5)
    status = rpc.paymentsService.get_status(pid)
    assert status == {"success": True, "status": "partially_refunded", "amount": 8.0, "refunded_total": 1.5,
                      "order_id": oid}
    assert rpc.paymentsService.getStatus(pid)["status"] == "partially_refunded"
    assert rpc.paymentsService.get_status(MISSING)["code"] == "NOT_FOUND"
    assert rpc.paymentsService.get_status("nope")["code"] == "VALIDATION_ERROR"


def test_calculate_fees(rpc):
    result = rpc.paymentsService.calculate_fees(100)
    assert result == {"success": True, "total_amount": 100.0, "platform_fee": 20.0,
                      "platform_fee_percentage": 20.0, "seller_amount": 80.0}
    assert rpc.paymentsService.calculateFees("0.03")["platform_fee"] == 0.01
    assert rpc.paymentsService.calculate_fees(0.02)["platform_fee"] == 0.0  # 0.004 rounds down
    assert rpc.paymentsService.calculate_fees("0.015")["code"] == "VALIDATION_ERROR"
    assert rpc.paymentsService.calculate_fees(0.005)["code"] == "VALIDATION_ERROR"
    assert rpc.paymentsService.calculate_fees(1_000_000)["seller_amount"] == 800000.0
    for bad in (0, -1, 1_000_000.01, "abc", "1e400", {"$gt": 1}, [1], True):
        assert rpc.paymentsService.calculate_fees(bad)["code"] == "VALIDATION_ERROR", bad


def test_calculate_fees_adds_up_for_every_cent_to_100(app):
    """0.01 ... 100.00 through the app, batched with system.multicall: fee + share == total, fee half up."""
    proxy = app.proxy()
    amounts = [Decimal(c) / 100 for c in range(1, 10001)]
    for start in range(0, len(amounts), 1000):
        batch = xmlrpc.client.MultiCall(proxy)
        chunk = amounts[start:start + 1000]
        for amount in chunk:
            batch.paymentsService.calculate_fees(float(amount))
        for amount, result in zip(chunk, batch(), strict=True):
            total, fee, share = (Decimal(repr(result[k])) for k in ("total_amount", "platform_fee",
                                                                     "seller_amount"))
            assert total == amount, (amount, result)
            assert fee + share == amount, (amount, result)
            assert fee == (amount * Decimal("0.2")).quantize(CENT, ROUND_HALF_UP), (amount, result)


def test_money_split_unit():
    for percent in (Decimal(0), Decimal(10), Decimal("12.5"), Decimal(20), Decimal("33.33"), Decimal(100)):
        for c in range(1, 10001):
            total = Decimal(c) / 100
            fee, share = money.split(total, percent)
            assert fee + share == total and fee >= 0 and share >= 0, (percent, total)
            assert fee == (total * percent / 100).quantize(CENT, ROUND_HALF_UP)
            assert fee.as_tuple().exponent == -2 and share.as_tuple().exponent == -2
    # the seller share of cumulative refunds never decreases and ends at the seller amount
    total, fee = Decimal("0.03"), Decimal("0.01")
    shares = [money.seller_share(Decimal(c) / 100, total, fee) for c in range(0, 4)]
    assert shares == sorted(shares) and shares[-1] == total - fee


def test_platform_fee_percent_setting(make_app, mongo):
    app = make_app(PLATFORM_FEE_PERCENT="12.5")
    rpc = app.proxy()
    fees = rpc.paymentsService.calculate_fees(10.04)
    assert fees["platform_fee_percentage"] == 12.5 and fees["platform_fee"] == 1.26  # 1.255 half up
    assert fees["seller_amount"] == 8.78
    db = mongo[app.db_name]
    seller, gig, buyer = market(db, "10.04")
    oid = order(rpc, gig, buyer, 1, 10.04)
    assert rpc.ordersService.get_by_id(oid)["order"]["platformFee"] == 1.26
    rpc.ordersService.update_status(oid, "in_progress")
    rpc.ordersService.update_status(oid, "completed")
    assert earnings(db, seller) == Decimal("8.78")


def test_node_client_places_and_pays_an_order(daemon, db):
    seller, gig, buyer = market(db, "19.99")
    out = run_node("orders.js", daemon.port, gig, buyer, "19.99")
    placed, order_id = out["placed"], out["placed"]["order_id"]
    assert placed["success"] is True and placed["order"]["totalPrice"] == 39.98
    assert out["replayed"]["order_id"] == order_id and out["replayed"]["created"] is False
    assert out["paid"]["payment_id"] == out["paymentId"] and out["paid"]["created"] is True
    assert out["paidAgain"]["created"] is False and out["paidAgain"]["payment_id"] == out["paymentId"]
    assert out["processed"]["order_status"] == "in_progress"
    assert out["status"] == {"success": True, "status": "completed", "amount": 39.98, "refunded_total": 0,
                             "order_id": order_id}
    assert out["order"]["order"]["status"] == "in_progress"
    assert out["fees"]["platform_fee"] == 8.0 and out["fees"]["seller_amount"] == 31.98
    assert out["bad"]["success"] is False and out["bad"]["code"] == "INVALID_STATE"
    refund, again = out["refund"], out["refundAgain"]
    assert refund["success"] is True and refund["created"] is True and refund["refunded_total"] == 10.0
    assert again["created"] is False and again["refund_id"] == refund["refund_id"]
    stored = db.payments.find_one({"_id": ObjectId(out["paymentId"])})
    assert stored["status"] == "partially_refunded" and str(stored["orderId"]) == order_id
    assert dec(stored["refundedTotal"]) == Decimal("10.00") and len(stored["refunds"]) == 1
    assert db.orders.count_documents({}) == 1 and db.payments.count_documents({}) == 1
    assert earnings(db, seller) == 0


def test_a_refund_with_an_idempotency_key_is_made_once(rpc, db):
    seller, oid, pid = paid_order(rpc, db, "40.00")
    assert rpc.ordersService.update_status(oid, "completed")["success"]
    key = {"idempotency_key": "refund-1"}
    first = rpc.paymentsService.refund(pid, "10.00", key)
    assert first["success"] and first["created"] is True and first["refunded_total"] == 10.0
    assert ObjectId.is_valid(first["refund_id"])
    again = rpc.paymentsService.refund(pid, 10, key)
    assert again["success"] and again["created"] is False and again["refund_id"] == first["refund_id"]
    assert again["refunded_total"] == 10.0
    other = rpc.paymentsService.refund(pid, "10.01", key)
    assert other["code"] == "CONFLICT" and other["field"] == "options.idempotency_key"
    # the rest refunded without a key: the payment is final, yet the keyed repeat still answers its refund
    rest = rpc.paymentsService.refund(pid, 30)
    assert rest["success"] and rest["created"] is True and rest["refund_id"] != first["refund_id"]
    late = rpc.paymentsService.refund(pid, 10, key)
    assert late["success"] and late["refund_id"] == first["refund_id"] and late["refunded_total"] == 10.0
    assert late["payment"]["status"] == "refunded" and late["payment"]["refundedTotal"] == 40.0
    assert rpc.paymentsService.refund(pid, 1)["code"] == "INVALID_STATE"
    stored = db.payments.find_one({"_id": ObjectId(pid)})
    assert [r["key"] for r in stored["refunds"]] == ["refund-1", None]
    assert earnings(db, seller) == 0 == ledger_sum(db, seller)
    for bad in ({"idempotency_key": ""}, {"idempotency_key": "k" * 101}, {"key": "x"}, {"idempotency_key": 5}):
        assert rpc.paymentsService.refund(pid, 1, bad)["code"] == "VALIDATION_ERROR", bad
    check_invariants(db, [seller])


def test_concurrent_refunds_with_one_idempotency_key_refund_once(app, db):
    rpc = app.proxy()
    seller, oid, pid = paid_order(rpc, db, "40.00")

    def refund(_):
        return app.proxy().paymentsService.refund(pid, "7.00", {"idempotency_key": "same"})

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(refund, range(6)))
    assert all(r["success"] for r in results), results
    assert len({r["refund_id"] for r in results}) == 1 and sum(r["created"] for r in results) == 1
    assert dec(db.payments.find_one({"_id": ObjectId(pid)})["refundedTotal"]) == Decimal("7.00")
    check_invariants(db, [seller])


def test_a_cancel_names_the_refund_it_made(rpc, db):
    _, oid, pid = paid_order(rpc, db, "12.00")
    cancelled = rpc.ordersService.cancel(oid, "changed my mind")
    refund = cancelled["refund"]
    stored = db.payments.find_one({"_id": ObjectId(pid)})
    assert refund["refund_id"] == str(stored["refunds"][0]["id"]) and refund["amount"] == 12.0
