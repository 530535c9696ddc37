"""Money arithmetic and the sellers' earnings ledger.

All amounts are :class:`decimal.Decimal` rounded half up to the cent (stored as
Decimal128).  The platform fee of a total is ``cents_half_up(total * pct / 100)``
and the seller share is what is left, so fee plus share is always the total.

Seller earnings (``users.totalEarnings``) change only through :func:`post`,
which writes one ledger entry per unique ``key`` (``credit:<orderId>`` on
completion, ``debit:<paymentId>:<refund seq>`` for a refund after completion)
and applies it to the seller exactly once.  Applying is guarded so that it is
safe with or without transactions:

1. insert the entry with ``applied: false`` (the unique ``key`` makes a second
   insert fail, and a retry finds the first entry);
2. ``$inc`` the seller's ``totalEarnings`` only if the entry id is not yet in
   the seller's internal ``ledgerApplied`` array, pushing it there in the same
   single-document update (atomic on any server);
3. mark the entry ``applied: true`` (compare-and-set).

A crash between any two steps leaves a state from which running :func:`post`
again finishes the job without applying the amount twice.  ``ledgerApplied``
keeps the ids of the seller's last ``APPLIED_WINDOW`` entries (``$slice``), so
it stays small; it is never pulled right after step 3, because a concurrent
attempt that read the entry before step 3 must still be stopped by step 2's
guard; an entry left at ``applied: false`` by a crash after step 2 is marked
by the seller's next :func:`post`, before the window can slide past it.
(With transactions all steps commit together anyway.)
"""

from __future__ import annotations

from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from bson import Decimal128, ObjectId
from pymongo.errors import DuplicateKeyError

from worknet.validators import cents

if TYPE_CHECKING:
    from worknet.store.interface import Session, Store

ZERO = Decimal("0.00")
APPLIED_WINDOW = 200
RATING_STEP = Decimal("0.01")


def average_rating(total: Any, count: int) -> float:
    """The mean of ``count`` ratings summing to ``total``, rounded half up to 2 decimals (0.0 when none).

    The one rounding of every average rating the daemon returns or stores
    (reviews, gigs' sellers, users' stats): exact decimal division, then
    ROUND_HALF_UP, so 33 / 8 is 4.13 everywhere (never 4.12, Python's
    ``round`` half-even on a binary float).
    """
    if not count:
        return 0.0
    mean = Decimal(total) / Decimal(count)
    return float(mean.quantize(RATING_STEP, rounding=ROUND_HALF_UP))


def dec128(amount: Decimal) -> Decimal128:
    return Decimal128(cents(amount))


def as_decimal(value: Any) -> Decimal:
    """A stored amount (Decimal128, int 0, None) as a Decimal rounded to the cent."""
    if value is None:
        return ZERO
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    return cents(Decimal(value))


def platform_fee(total: Decimal, percent: Decimal) -> Decimal:
    """``total * percent / 100`` rounded half up to the cent."""
    return cents(total * percent / Decimal(100))


def split(total: Decimal, percent: Decimal) -> tuple[Decimal, Decimal]:
    """``(platform_fee, seller_amount)``; they always add up to ``total``."""
    fee = platform_fee(total, percent)
    return fee, cents(total) - fee


def seller_share(refunded: Decimal, total: Decimal, fee: Decimal) -> Decimal:
    """The seller's part of ``refunded`` (cumulative) out of an order of ``total`` with ``fee``.

    Proportional to the order's own fee (not the current setting), rounded so
    that it never decreases as ``refunded`` grows and equals the order's seller
    amount exactly when everything is refunded; the debits of successive
    partial refunds (differences of this function) therefore never sum to more
    than the credit.
    """
    if total <= 0:
        return ZERO
    return cents(refunded) - cents(refunded * fee / total)


def ledger_key_credit(order_id: ObjectId) -> str:
    return f"credit:{order_id}"


def ledger_key_debit(payment_id: ObjectId, seq: int) -> str:
    return f"debit:{payment_id}:{seq}"


async def post(
    store: Store,
    *,
    key: str,
    kind: str,
    seller_id: ObjectId,
    order_id: ObjectId,
    payment_id: ObjectId | None,
    amount: Decimal,
    at: datetime,
    session: Session = None,
) -> bool:
    """Write the ledger entry ``key`` and apply it to the seller, each at most once.

    Returns True when this call applied the amount, False when it had already
    been applied.  ``kind`` is ``credit`` or ``debit``; ``amount`` is positive.
    """
    ledger = store["ledger"]
    users = store["users"]
    entry = await ledger.find_one({"key": key}, session=session)
    if entry is None:
        entry = {
            "_id": ObjectId(),
            "key": key,
            "kind": kind,
            "sellerId": seller_id,
            "orderId": order_id,
            "paymentId": payment_id,
            "amount": dec128(amount),
            "applied": False,
            "createdAt": at,
        }
        try:
            await ledger.insert_one(entry, session=session)
        except DuplicateKeyError:  # a concurrent or earlier attempt wrote it (no transactions)
            entry = await ledger.find_one({"key": key}, session=session)
            if entry is None:
                raise
    if entry.get("applied"):
        return False
    # Entries of this seller still at applied: false whose id is in the seller's window were
    # applied by an attempt that stopped before step 3: mark them now, before the window can
    # slide past them.  Found by the seller's unapplied entries (an index, almost always just
    # this one), not by the window's ids: an ``$in`` of up to APPLIED_WINDOW ids costs
    # SecantusDB ~60 ms per call, inside the transaction, growing with the seller's sales.
    await mark_applied(store, entry["sellerId"], entry["_id"], session)
    signed = as_decimal(entry["amount"])
    if entry["kind"] == "debit":
        signed = -signed
    applied = await users.update_one(
        {"_id": entry["sellerId"], "ledgerApplied": {"$ne": entry["_id"]}},
        {
            "$inc": {"totalEarnings": dec128(signed)},
            "$push": {"ledgerApplied": {"$each": [entry["_id"]], "$slice": -APPLIED_WINDOW}},
        },
        session=session,
    )
    await ledger.update_one({"_id": entry["_id"], "applied": False}, {"$set": {"applied": True}}, session=session)
    return bool(applied.modified_count)


async def mark_applied(store: Store, seller_id: ObjectId, current: ObjectId, session: Session = None) -> int:
    """Mark applied the seller's entries other than ``current`` that a stopped attempt applied (step 2
    done, step 3 not): those still at ``applied: false`` whose id is in the seller's window.  How many.

    One indexed read of the seller's unapplied entries (``ledger_seller_unapplied``); the seller's
    window is read, and a write made, only when there are any besides ``current`` -- after a crash.
    """
    unapplied = await store["ledger"].find({"sellerId": seller_id, "applied": False}, projection={"_id": 1},
                                           session=session)
    others = [doc["_id"] for doc in unapplied if doc["_id"] != current]
    if not others:
        return 0
    seller = await store["users"].find_one({"_id": seller_id}, projection={"ledgerApplied": 1}, session=session)
    done = set((seller or {}).get("ledgerApplied") or [])
    stale = [_id for _id in others if _id in done]
    if not stale:
        return 0
    result = await store["ledger"].update_many({"_id": {"$in": stale}, "applied": False},
                                               {"$set": {"applied": True}}, session=session)
    return int(result.modified_count)
