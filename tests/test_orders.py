"""ordersService end to end: the daemon's service tree in process, a real database, xmlrpc.client."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from bson import Decimal128, ObjectId

from tests.money_support import check_invariants, dec, earnings, ledger_sum, market, seed_gig, seed_user

MISSING = "0" * 24


def place(rpc, gig, buyer, quantity=1, total=25.0, options=None):
    args = (gig, buyer, quantity, total) + ((options,) if options is not None else ())
    result = rpc.ordersService.create(*args)
    assert result["success"] is True, result
    return result


def test_create_stores_the_order_with_the_fee_split(rpc, db):
    seller, gig, buyer = market(db, "19.99")
    result = place(rpc, gig, buyer, 3, "59.97")
    order = result["order"]
    assert result["created"] is True and order["id"] == result["order_id"]
    assert order["status"] == "pending" and order["quantity"] == 3
    assert order["totalPrice"] == 59.97 and order["platformFee"] == 11.99 and order["sellerAmount"] == 47.98
    assert order["sellerId"] == seller and order["buyerId"] == buyer and order["gigId"] == gig
    assert order["statusHistory"][0]["to"] == "pending"
    stored = db.orders.find_one({"_id": ObjectId(result["order_id"])})
    assert stored["totalPrice"] == Decimal128("59.97") and stored["unitPrice"] == Decimal128("19.99")
    assert stored["categoryId"] == db.gigs.find_one({"_id": ObjectId(gig)})["categoryId"]
    note = db.notifications.find_one({"userId": ObjectId(seller)})
    assert note["type"] == "order" and result["order_id"] in note["link"]


def test_create_refuses_bad_input(rpc, db):
    seller, gig, buyer = market(db)
    cases = [
        ((gig, buyer, 0, 0.01), "VALIDATION_ERROR", "quantity"),
        ((gig, buyer, 101, 2525), "VALIDATION_ERROR", "quantity"),
        ((gig, buyer, 1, 24.99), "VALIDATION_ERROR", "total_price"),
        ((gig, buyer, 2, 25.0), "VALIDATION_ERROR", "total_price"),
        ((gig, buyer, 1, "25.001"), "VALIDATION_ERROR", "total_price"),
        (("bad", buyer, 1, 25.0), "VALIDATION_ERROR", "gig_id"),
        ((gig, {"$ne": 1}, 1, 25.0), "VALIDATION_ERROR", "buyer_id"),
        ((gig, buyer, 1, 25.0, {"$where": "1"}), "VALIDATION_ERROR", "options"),
        ((gig, buyer, 1, 25.0, {"other": "x"}), "VALIDATION_ERROR", "options.other"),
        ((gig, buyer, 1, 25.0, {"idempotency_key": ""}), "VALIDATION_ERROR", "idempotency_key"),
        ((gig, buyer, 1, 25.0, {"idempotency_key": "k" * 101}), "VALIDATION_ERROR", "idempotency_key"),
        ((MISSING, buyer, 1, 25.0), "NOT_FOUND", None),
        ((gig, MISSING, 1, 25.0), "NOT_FOUND", "buyer_id"),
        ((gig, seller, 1, 25.0), "FORBIDDEN", "buyer_id"),
    ]
    for args, code, field in cases:
        result = rpc.ordersService.create(*args)
        assert result["success"] is False and result["code"] == code, (args, result)
        assert result.get("field") == field, (args, result)
    assert db.orders.count_documents({}) == 0


def test_create_refuses_inactive_and_deleted_gigs_and_deleted_buyers(rpc, db):
    seller = seed_user(db, "freelancer", True)
    inactive = seed_gig(db, seller, active=False)
    deleted = seed_gig(db, seller, deletedAt=datetime.now(UTC))
    buyer = seed_user(db)
    assert rpc.ordersService.create(inactive, buyer, 1, 25.0)["code"] == "INVALID_STATE"
    assert rpc.ordersService.create(deleted, buyer, 1, 25.0)["code"] == "NOT_FOUND"
    gone = seed_user(db)
    db.users.update_one({"_id": ObjectId(gone)}, {"$set": {"deletedAt": datetime.now(UTC)}})
    assert rpc.ordersService.create(seed_gig(db, seller), gone, 1, 25.0)["code"] == "NOT_FOUND"


def test_second_pending_order_is_a_conflict_until_the_first_moves_on(rpc, db):
    _, gig, buyer = market(db)
    first = place(rpc, gig, buyer)
    again = rpc.ordersService.create(gig, buyer, 1, 25.0)
    assert again["code"] == "CONFLICT"
    assert rpc.ordersService.create(gig, buyer, 1, 25.0, {"idempotency_key": "other"})["code"] == "CONFLICT"
    rpc.ordersService.update_status(first["order_id"], "in_progress")
    assert place(rpc, gig, buyer)["order_id"] != first["order_id"]
    other_buyer = seed_user(db)
    place(rpc, gig, other_buyer)


def test_idempotency_key_returns_the_first_result(rpc, db):
    _, gig, buyer = market(db)
    first = place(rpc, gig, buyer, 2, 50, {"idempotency_key": "checkout-1"})
    again = place(rpc, gig, buyer, 2, 50, {"idempotency_key": "checkout-1"})
    assert again["order_id"] == first["order_id"] and again["created"] is False
    rpc.ordersService.update_status(first["order_id"], "in_progress")
    later = place(rpc, gig, buyer, 2, 50, {"idempotency_key": "checkout-1"})
    assert later["order_id"] == first["order_id"] and later["order"]["status"] == "in_progress"
    different = rpc.ordersService.create(gig, buyer, 1, 25.0, {"idempotency_key": "checkout-1"})
    assert different["code"] == "CONFLICT" and different["field"] == "options.idempotency_key"
    assert db.orders.count_documents({}) == 1
    memo = db.idempotency.find_one({"_id": f"{buyer}:checkout-1"})
    assert str(memo["orderId"]) == first["order_id"]
    ttl = [ix for ix in db.idempotency.list_indexes() if "expireAfterSeconds" in ix]
    assert ttl and ttl[0]["expireAfterSeconds"] == 86400


def test_concurrent_creates_with_one_key_make_one_order(app, db):
    _, gig, buyer = market(db)

    def create(_):
        return app.proxy().ordersService.create(gig, buyer, 1, 25.0, {"idempotency_key": "k1"})

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(create, range(8)))
    assert all(r["success"] for r in results), results
    assert len({r["order_id"] for r in results}) == 1
    assert sum(r["created"] for r in results) == 1
    assert db.orders.count_documents({}) == 1


def test_status_machine(rpc, db):
    _, gig, buyer = market(db)
    oid = place(rpc, gig, buyer)["order_id"]
    illegal = rpc.ordersService.update_status(oid, "completed")
    assert illegal["code"] == "INVALID_STATE" and "pending" in illegal["error"]
    step = rpc.ordersService.update_status(oid, "in_progress", "accepted")
    assert step["previous_status"] == "pending" and step["new_status"] == "in_progress"
    assert rpc.ordersService.update_status(oid, "disputed", "late")["new_status"] == "disputed"
    assert rpc.ordersService.update_status(oid, "in_progress")["code"] == "INVALID_STATE"
    done = rpc.ordersService.update_status(oid, "completed", "resolved")
    assert done["order"]["status"] == "completed" and done["order"]["completedAt"]
    history = done["order"]["statusHistory"]
    assert [(h["from"], h["to"]) for h in history] == [
        (None, "pending"), ("pending", "in_progress"), ("in_progress", "disputed"), ("disputed", "completed")]
    assert history[2]["reason"] == "late" and history[2]["at"].endswith("Z")
    for target in ("pending", "cancelled", "completed", "in_progress"):
        result = rpc.ordersService.update_status(oid, target)
        assert result["code"] == "INVALID_STATE" and "completed" in result["error"], result
    for bad in (("bad-id", "completed"), (oid, "done"), (oid, "completed", "r" * 501), (oid, {"$set": 1})):
        assert rpc.ordersService.update_status(*bad)["code"] == "VALIDATION_ERROR", bad
    assert rpc.ordersService.update_status(MISSING, "completed")["code"] == "NOT_FOUND"


def test_completion_credits_the_seller_once_and_payment_never_does(rpc, db):
    seller, gig, buyer = market(db, "10.00")
    oid = place(rpc, gig, buyer, 1, 10)["order_id"]
    pay = rpc.paymentsService.create("", oid, 10, "stripe")
    assert rpc.paymentsService.process(pay["payment_id"], "completed")["order_status"] == "in_progress"
    assert earnings(db, seller) == 0 and db.ledger.count_documents({}) == 0
    rpc.ordersService.update_status(oid, "completed")
    assert earnings(db, seller) == Decimal("8.00")
    assert rpc.ordersService.update_status(oid, "completed")["code"] == "INVALID_STATE"
    assert earnings(db, seller) == Decimal("8.00") == ledger_sum(db, seller)
    entry = db.ledger.find_one({})
    assert entry["kind"] == "credit" and entry["key"] == f"credit:{oid}" and entry["applied"] is True
    assert "ledgerApplied" not in rpc.ordersService.get_by_id(oid)["order"]


def test_twenty_concurrent_completions_one_winner(app, db):
    seller, gig, buyer = market(db, "30.00")
    rpc = app.proxy()
    oid = place(rpc, gig, buyer, 1, 30)["order_id"]
    rpc.ordersService.update_status(oid, "in_progress")

    def complete(_):
        return app.proxy().ordersService.updateStatus(oid, "completed")

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(complete, range(20)))
    wins = [r for r in results if r["success"]]
    assert len(wins) == 1, results
    assert all(r["code"] == "INVALID_STATE" for r in results if not r["success"]), results
    assert db.ledger.count_documents({"orderId": ObjectId(oid)}) == 1
    assert earnings(db, seller) == Decimal("24.00")
    check_invariants(db, [seller])


def test_cancel_refunds_a_paid_order_in_full(rpc, db):
    seller, gig, buyer = market(db, "12.34")
    oid = place(rpc, gig, buyer, 1, 12.34)["order_id"]
    unpaid = rpc.ordersService.cancel(place(rpc, seed_gig(db, seller), buyer)["order_id"], "changed my mind")
    assert unpaid["success"] and unpaid["refund"] is None and unpaid["order"]["status"] == "cancelled"
    pid = rpc.paymentsService.create("", oid, 12.34, "paypal")["payment_id"]
    rpc.paymentsService.process(pid, "completed")
    rpc.paymentsService.refund(pid, 2.34)
    cancelled = rpc.ordersService.cancel(oid, "seller unavailable")
    assert cancelled["order"]["status"] == "cancelled"
    assert cancelled["order"]["statusHistory"][-1]["reason"] == "seller unavailable"
    refund = cancelled["refund"]
    assert refund["payment_id"] == pid and refund["amount"] == 10.0 and refund["refunded_total"] == 12.34
    assert rpc.paymentsService.get_status(pid)["status"] == "refunded"
    again = rpc.ordersService.cancel(oid, "again")
    assert again["code"] == "INVALID_STATE" and "cancelled" in again["error"]
    assert rpc.ordersService.cancel(MISSING, "x")["code"] == "NOT_FOUND"
    assert rpc.ordersService.cancel("zz", "x")["code"] == "VALIDATION_ERROR"
    assert earnings(db, seller) == 0
    check_invariants(db, [seller])


def test_update_status_cancelled_also_refunds(rpc, db):
    seller, gig, buyer = market(db, "5.00")
    oid = place(rpc, gig, buyer, 1, 5)["order_id"]
    pid = rpc.paymentsService.create("", oid, 5, "other")["payment_id"]
    rpc.paymentsService.process(pid, "completed")
    result = rpc.ordersService.update_status(oid, "cancelled", "dispute lost")
    assert result["new_status"] == "cancelled" and result["refund"]["refunded_total"] == 5.0
    assert rpc.paymentsService.get_status(pid)["refunded_total"] == 5.0


def test_completed_orders_cannot_be_cancelled(rpc, db):
    _, gig, buyer = market(db)
    oid = place(rpc, gig, buyer)["order_id"]
    rpc.ordersService.update_status(oid, "in_progress")
    rpc.ordersService.update_status(oid, "completed")
    result = rpc.ordersService.cancel(oid, "too late")
    assert result["code"] == "INVALID_STATE" and "completed" in result["error"]


def test_get_by_id_and_get_all(rpc, db):
    seller, gig, buyer = market(db)
    other_gig = seed_gig(db, seller, "7.50")
    other_buyer = seed_user(db)
    a = place(rpc, gig, buyer)["order_id"]
    b = place(rpc, other_gig, buyer, 2, 15)["order_id"]
    c = place(rpc, gig, other_buyer)["order_id"]
    rpc.ordersService.update_status(b, "in_progress")
    assert rpc.ordersService.get_by_id(a)["order"]["id"] == a
    assert rpc.ordersService.get_by_id(MISSING)["code"] == "NOT_FOUND"
    assert rpc.ordersService.get_by_id("nope")["code"] == "VALIDATION_ERROR"
    everything = rpc.ordersService.get_all({}, 1, 10)
    assert [o["id"] for o in everything["orders"]] == [c, b, a] and everything["total"] == 3
    assert everything["pages"] == 1 and everything["page"] == 1 and everything["limit"] == 10
    assert [o["id"] for o in rpc.ordersService.get_all({"buyer_id": buyer})["orders"]] == [b, a]
    assert rpc.ordersService.get_all({"seller_id": seller})["total"] == 3
    assert [o["id"] for o in rpc.ordersService.get_all({"gig_id": gig})["orders"]] == [c, a]
    assert [o["id"] for o in rpc.ordersService.get_all({"status": "in_progress"})["orders"]] == [b]
    paged = rpc.ordersService.get_all(None, 2, 2)
    assert [o["id"] for o in paged["orders"]] == [a] and paged["pages"] == 2
    past = (datetime.now(UTC) - timedelta(days=3)).isoformat()
    db.orders.update_one({"_id": ObjectId(a)}, {"$set": {"createdAt": datetime.now(UTC) - timedelta(days=5)}})
    assert {o["id"] for o in rpc.ordersService.get_all({"from": past})["orders"]} == {b, c}
    assert [o["id"] for o in rpc.ordersService.get_all({"to": past})["orders"]] == [a]
    for bad in ({"status": "lost"}, {"from": "yesterday"}, {"buyer_id": "x"}, {"$or": []}, {"price": 1}):
        assert rpc.ordersService.get_all(bad)["code"] == "VALIDATION_ERROR", bad
    assert rpc.ordersService.get_all({}, 0, 10)["code"] == "VALIDATION_ERROR"
    assert rpc.ordersService.get_all({}, 1, 101)["code"] == "VALIDATION_ERROR"


def test_get_analytics(rpc, db):
    seller, gig, buyer = market(db, "10.00")
    done = place(rpc, gig, buyer, 2, 20)["order_id"]
    rpc.ordersService.update_status(done, "in_progress")
    rpc.ordersService.update_status(done, "completed")
    old = place(rpc, gig, buyer, 1, 10)["order_id"]
    rpc.ordersService.update_status(old, "in_progress")
    rpc.ordersService.update_status(old, "completed")
    month_ago = datetime.now(UTC) - timedelta(days=40)
    db.orders.update_one({"_id": ObjectId(old)}, {"$set": {"createdAt": month_ago, "completedAt": month_ago}})
    place(rpc, gig, buyer, 1, 10)
    cancelled = place(rpc, seed_gig(db, seller, "3.00"), buyer, 1, 3)["order_id"]
    rpc.ordersService.cancel(cancelled, "no")

    month = rpc.ordersService.get_analytics(seller, "month")["analytics"]
    assert month["period"] == "month" and month["since"].endswith("Z")
    assert month["asSeller"]["orders"] == 3
    assert month["asSeller"]["byStatus"] == {"pending": 1, "in_progress": 0, "completed": 1, "disputed": 0,
                                             "cancelled": 1}
    assert month["asSeller"]["earned"] == 16.0
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    assert month["asSeller"]["revenueByDay"] == [{"date": today, "revenue": 16.0}]
    assert month["asBuyer"]["orders"] == 0 and month["asBuyer"]["spent"] == 0
    everything = rpc.ordersService.get_analytics(seller, "all")["analytics"]
    assert everything["since"] is None and everything["asSeller"]["earned"] == 24.0
    assert [d["date"] for d in everything["asSeller"]["revenueByDay"]] == [month_ago.strftime("%Y-%m-%d"), today]
    as_buyer = rpc.ordersService.get_analytics(buyer, "year")["analytics"]["asBuyer"]
    assert as_buyer["orders"] == 4 and as_buyer["spent"] == 30.0 and as_buyer["byStatus"]["completed"] == 2
    assert rpc.ordersService.get_analytics(buyer, "week")["analytics"]["asBuyer"]["orders"] == 3
    for bad in ((seller, "day"), (seller, "WEEK"), ("x", "week"), (seller, 7)):
        assert rpc.ordersService.get_analytics(*bad)["code"] == "VALIDATION_ERROR", bad
    assert rpc.ordersService.get_analytics(MISSING, "week")["code"] == "NOT_FOUND"


def test_camel_case_aliases(rpc, db):
    _, gig, buyer = market(db)
    oid = place(rpc, gig, buyer)["order_id"]
    assert rpc.ordersService.getById(oid)["order"]["id"] == oid
    assert rpc.ordersService.getAll({"gig_id": gig})["total"] == 1
    assert rpc.ordersService.updateStatus(oid, "in_progress")["new_status"] == "in_progress"
    assert "ordersService.getAnalytics" in rpc.system.listMethods()


def test_refund_after_completion_debits_the_seller_share(rpc, db):
    seller, gig, buyer = market(db, "0.03")
    oid = place(rpc, gig, buyer, 1, 0.03)["order_id"]
    pid = rpc.paymentsService.create("", oid, 0.03, "stripe")["payment_id"]
    rpc.paymentsService.process(pid, "completed")
    rpc.ordersService.update_status(oid, "completed")
    order = db.orders.find_one({"_id": ObjectId(oid)})
    assert dec(order["platformFee"]) == Decimal("0.01") and earnings(db, seller) == Decimal("0.02")
    for _ in range(3):
        assert rpc.paymentsService.refund(pid, 0.01)["success"]
    assert earnings(db, seller) == 0 == ledger_sum(db, seller)
    assert db.ledger.count_documents({"kind": "debit"}) == 2
    check_invariants(db, [seller])


def test_a_user_deleted_while_ordering_never_keeps_an_open_order(app, rpc, db):
    """Delete the buyer (then the seller) while an order is being placed: one of the two must lose."""
    for round_ in range(12):
        seller, gig, buyer = market(db)
        leaving = buyer if round_ % 2 == 0 else seller
        with ThreadPoolExecutor(max_workers=2) as pool:
            ordered = pool.submit(app.proxy().ordersService.create, gig, buyer, 1, "25.00")
            deleted = pool.submit(app.proxy().usersService.delete_user, leaving)
            ordered, deleted = ordered.result(), deleted.result()
        assert ordered["success"] != deleted["success"], (ordered, deleted)
        gone = db.users.find_one({"_id": ObjectId(leaving)}).get("deletedAt") is not None
        open_orders = db.orders.count_documents({"gigId": ObjectId(gig), "status": "pending"})
        assert (gone, open_orders) in ((True, 0), (False, 1)), (ordered, deleted)
        if ordered["success"]:
            assert deleted["code"] == "INVALID_STATE", deleted
        else:
            assert ordered["code"] in ("NOT_FOUND", "INVALID_STATE"), ordered


def test_a_keyed_repeat_answers_the_first_order_even_after_the_gig_or_buyer_changed(rpc, db):
    seller, gig, buyer = market(db, "25.00")
    key = {"idempotency_key": "checkout-paused"}
    first = place(rpc, gig, buyer, 2, 50, key)
    # the seller pauses the gig, then reprices it, then the buyer's account goes: the order exists all along
    for change in ({"isActive": False}, {"isActive": True, "price": Decimal128("30.00")}):
        db.gigs.update_one({"_id": ObjectId(gig)}, {"$set": change})
        again = rpc.ordersService.create(gig, buyer, 2, 50, key)
        assert again["success"] is True and again["created"] is False, (change, again)
        assert again["order_id"] == first["order_id"]
    db.users.update_one({"_id": ObjectId(buyer)}, {"$set": {"deletedAt": datetime.now(UTC)}})
    db.gigs.update_one({"_id": ObjectId(gig)}, {"$set": {"deletedAt": datetime.now(UTC)}})
    again = rpc.ordersService.create(gig, buyer, 2, 50, key)
    assert again["success"] is True and again["order_id"] == first["order_id"], again
    # another content under the same key is still a CONFLICT, and an unkeyed call is checked as usual
    assert rpc.ordersService.create(gig, buyer, 1, 25, key)["code"] == "CONFLICT"
    assert rpc.ordersService.create(gig, buyer, 2, 60)["code"] == "NOT_FOUND"
    assert db.orders.count_documents({}) == 1
