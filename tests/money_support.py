"""Helpers of the orders/payments tests: seeding users and gigs, checking the money invariants."""

from __future__ import annotations

import itertools
import uuid
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

from bson import Decimal128, ObjectId

from tests import support

ORDER_NEXT = {
    "pending": {"in_progress", "cancelled"},
    "in_progress": {"completed", "disputed", "cancelled"},
    "disputed": {"completed", "cancelled"},
    "completed": set(),
    "cancelled": set(),
}
PAYMENT_NEXT = {
    "pending": {"completed", "failed"},
    "completed": {"partially_refunded", "refunded"},
    "partially_refunded": {"partially_refunded", "refunded"},
    "failed": set(),
    "refunded": set(),
}


def dec(value) -> Decimal:
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    return Decimal(str(value)).quantize(Decimal("0.01"))


def seed_user(db, role="client", is_seller=False) -> str:
    """A user with a fresh random name and no earnings yet."""
    return support.seed_user(db, "u" + uuid.uuid4().hex[:10], role=role, isSeller=is_seller,
                             totalEarnings=Decimal128("0.00"))


def seed_gig(db, seller_id: str, price="25.00", active=True, **extra) -> str:
    now = datetime.now(UTC)
    _id = db.gigs.insert_one({
        "userId": ObjectId(seller_id), "title": "A logo for your company", "description": "d" * 30,
        "categoryId": ObjectId(), "category": "design", "price": Decimal128(price), "deliveryTime": 3,
        "isActive": active, "rating": 0.0, "reviewCount": 0, "createdAt": now, "updatedAt": now, **extra,
    }).inserted_id
    return str(_id)


def market(db, price="25.00"):
    """A seller with a gig and a buyer: (seller_id, gig_id, buyer_id)."""
    seller = seed_user(db, "freelancer", True)
    return seller, seed_gig(db, seller, price), seed_user(db)


def ledger_sum(db, seller_id: str) -> Decimal:
    total = Decimal("0.00")
    for entry in db.ledger.find({"sellerId": ObjectId(seller_id)}):
        total += dec(entry["amount"]) if entry["kind"] == "credit" else -dec(entry["amount"])
    return total


def earnings(db, seller_id: str) -> Decimal:
    return dec(db.users.find_one({"_id": ObjectId(seller_id)}).get("totalEarnings", 0))


def check_invariants(db, seller_ids, only_these_sellers: bool = False) -> None:
    """Earnings = ledger; refunds <= payments; histories follow the machines; one credit per completed order.

    Payments and orders checked are all of them, or only those of ``seller_ids``
    with ``only_these_sellers`` (for tests that keep adding to one database).
    """
    scope = {"sellerId": {"$in": [ObjectId(s) for s in seller_ids]}} if only_these_sellers else {}
    for seller in seller_ids:
        assert earnings(db, seller) == ledger_sum(db, seller), seller
        for entry in db.ledger.find({"sellerId": ObjectId(seller)}):
            assert entry["applied"] is True, entry
    for payment in db.payments.find(scope):
        assert Decimal(0) <= dec(payment["refundedTotal"]) <= dec(payment["amount"]), payment
        steps = payment["statusHistory"]
        assert steps[0]["to"] == "pending"
        for before, after in itertools.pairwise(steps):
            assert after["from"] == before["to"] and after["to"] in PAYMENT_NEXT[before["to"]], steps
        assert steps[-1]["to"] == payment["status"]
        assert sum(dec(r["amount"]) for r in payment.get("refunds", [])) == dec(payment["refundedTotal"])
    for order in db.orders.find(scope):
        steps = order["statusHistory"]
        assert steps[0]["to"] == "pending"
        for before, after in itertools.pairwise(steps):
            assert after["from"] == before["to"] and after["to"] in ORDER_NEXT[before["to"]], steps
        assert steps[-1]["to"] == order["status"]
        credits = db.ledger.count_documents({"orderId": order["_id"], "kind": "credit"})
        assert credits == (1 if order["status"] == "completed" else 0), order
        live = db.payments.count_documents({"orderId": order["_id"],
                                            "status": {"$in": ["pending", "completed", "partially_refunded"]}})
        assert live <= 1
        if order["status"] == "cancelled":
            assert db.payments.count_documents({"orderId": order["_id"],
                                                "status": {"$in": ["completed", "partially_refunded"]}}) == 0
        if order["status"] == "completed":
            # the seller keeps the seller share of what was not refunded
            debits = sum(dec(e["amount"]) for e in db.ledger.find({"orderId": order["_id"], "kind": "debit"}))
            assert Decimal(0) <= debits <= dec(order["sellerAmount"])


def half_up(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def seller_share(refunded: Decimal, total: Decimal, fee: Decimal) -> Decimal:
    """The seller's part of a cumulative refund: the order's own fee ratio, rounded half up (docs/DATA_MODEL.md)."""
    return refunded - half_up(refunded * fee / total)


def book_problems(db, seller_id: str) -> list[str]:
    """What is wrong with one seller's money, as sentences (empty when the books are right).

    ``totalEarnings`` == the sum of the seller's ledger == the seller share of
    (paid - refunded) over the seller's completed orders; a cancelled order
    holds no paid (or pending) payment; refunds never exceed the payment.
    """
    problems = []
    expected = Decimal("0.00")
    for order in db.orders.find({"sellerId": ObjectId(seller_id)}):
        payments = list(db.payments.find({"orderId": order["_id"]}))
        for payment in payments:
            refunded, amount = dec(payment["refundedTotal"]), dec(payment["amount"])
            listed = sum((dec(r["amount"]) for r in payment.get("refunds", [])), Decimal("0.00"))
            if not Decimal(0) <= refunded <= amount or listed != refunded:
                problems.append(f"payment {payment['_id']}: refunded {refunded} (listed {listed}) of {amount}")
        if order["status"] == "completed":
            refunded = sum((dec(p["refundedTotal"]) for p in payments), Decimal("0.00"))
            total, fee = dec(order["totalPrice"]), dec(order["platformFee"])
            expected += dec(order["sellerAmount"]) - seller_share(refunded, total, fee)
        if order["status"] == "cancelled":
            held = [p["status"] for p in payments if p["status"] in ("pending", "completed", "partially_refunded")]
            if held:
                problems.append(f"cancelled order {order['_id']} still has a payment {held}")
    have, ledger = earnings(db, seller_id), ledger_sum(db, seller_id)
    if not have == ledger == expected:
        problems.append(f"seller {seller_id}: totalEarnings {have}, ledger {ledger}, expected {expected}")
    return problems
