"""ordersService: placing orders and moving them through their status machine.

``pending -> in_progress | cancelled``; ``in_progress -> completed | disputed |
cancelled``; ``disputed -> completed | cancelled``; ``completed`` and
``cancelled`` are final.  Every transition is a compare-and-set on the current
status inside ``store.transaction`` and is appended to ``statusHistory``.

The money rules live here too, as module functions shared with
paymentsService: completing an order credits the seller once through the
ledger (:func:`worknet.money.post`); a cancelled order keeps no un-refunded
payment; refunds of a completed order debit the seller's share.  Each flow
runs its steps in an order that a retry can finish when the database has no
transactions (see :func:`settle_order`).  Every transaction that changes an
order's money writes the order document (:func:`transition`,
:func:`touch_order`), so two of them on one order conflict and one is retried
after the other instead of both committing from stale snapshots.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal
from typing import TYPE_CHECKING, Any, TypeVar

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from worknet import money
from worknet import validators as v
from worknet.errors import Conflict, Forbidden, InvalidState, NotFound, Unavailable, ValidationError
from worknet.rpc.dispatch import ServiceResource, signature
from worknet.services.common import NOT_DELETED, duplicate_key, get_or_404, notify, now, ok, paged, request_hash

if TYPE_CHECKING:
    from worknet.store.interface import Session, Steps, Store
    from worknet.store.pool import Collection

T = TypeVar("T")

STATUSES = ("pending", "in_progress", "completed", "disputed", "cancelled")
NEXT: dict[str, tuple[str, ...]] = {
    "pending": ("in_progress", "cancelled"),
    "in_progress": ("completed", "disputed", "cancelled"),
    "disputed": ("completed", "cancelled"),
    "completed": (),
    "cancelled": (),
}
FINAL = ("completed", "cancelled")
PAID = ("completed", "partially_refunded")  # payment statuses holding the buyer's money
PERIODS = {"week": 7, "month": 30, "year": 365, "all": None}
REASON_MAX = 500
ATTEMPTS = 5


class Lost(Exception):
    """A compare-and-set found the document changed since it was read: read again and retry."""


def _reason(value: Any, field: str = "reason") -> str:
    return "" if value is None else v.text(value, field, 0, REASON_MAX)


OPTIONS = {"idempotency_key": lambda value, field: v.text(value, field, 1, 100)}
FILTERS = {
    "buyer_id": v.object_id,
    "seller_id": v.object_id,
    "gig_id": v.object_id,
    "status": lambda value, field: v.choice(value, field, STATUSES),
    "from": v.iso_datetime,
    "to": v.iso_datetime,
}


# -- flows shared with paymentsService ---------------------------------------------


async def run_guarded(store: Store, steps: Steps[T], what: str = "order") -> T:
    """``steps(session)`` in a transaction, run again (reading afresh) while a compare-and-set loses.

    Losing every time is transient (others keep changing it): UNAVAILABLE, never CONFLICT.
    """
    for _ in range(ATTEMPTS):
        try:
            return await store.transaction(steps)
        except Lost:
            continue
    raise Unavailable(f"The {what} changed at the same time too often; try again shortly.")


async def transition(
    store: Store, order: dict, to: str, reason: str, at: datetime, session: Session, extra: dict | None = None,
) -> dict:
    """Move ``order`` from its (read) status to ``to``: compare-and-set, history appended.

    INVALID_STATE when the machine forbids it; :class:`Lost` when another
    change got there first.
    """
    current = order["status"]
    if to not in NEXT[current]:
        raise InvalidState(f"the order is {current} and cannot become {to}")
    doc = await store.update_and_fetch(
        "orders",
        {"_id": order["_id"], "status": current},
        {
            "$set": {"status": to, "updatedAt": at, **(extra or {})},
            "$inc": {"moneySeq": 1},
            "$push": {"statusHistory": {"from": current, "to": to, "at": at, "reason": reason}},
        },
        session=session,
    )
    if doc is None:
        raise Lost()
    return doc


async def touch_order(store: Store, order_id: ObjectId, session: Session, statuses: tuple[str, ...] | None = None) -> dict | None:
    """The per-order guard of the money path: bump the order's ``moneySeq`` and return the order as it is now.

    Every transaction that changes an order's money (a status change, paying,
    a refund) writes the order document, so two of them on one order always
    have overlapping write sets: MongoDB (and SecantusDB) abort one with a
    write conflict, and its retry reads what the other committed -- no write
    skew between, say, a refund that writes only the payment and a completion
    that reads the refunds from its snapshot.  ``$inc`` always changes the
    document (an update that changes nothing writes nothing and would not
    conflict).  Without transactions the caller writes its own document
    first and then calls this, so of two racing flows at least one reads
    the other's write (see docs/DECISIONS.md).  With ``statuses``, a
    compare-and-set on the order's status: None when the order is not in one
    of them (or does not exist).
    """
    query: dict[str, Any] = {"_id": order_id}
    if statuses is not None:
        query["status"] = {"$in": list(statuses)}
    return await store.update_and_fetch("orders", query, {"$inc": {"moneySeq": 1}}, session=session)


async def refund_step(
    store: Store, payment: dict, amount: Decimal, reason: str, at: datetime, session: Session, key: str | None = None,
) -> tuple[dict, dict]:
    """Refund ``amount`` of a completed or partially refunded payment (compare-and-set on ``refundCount``).

    The refund is recorded in the payment's ``refunds`` (``id``, ``seq``,
    ``amount``, ``before``, ``after``, ``key``: the caller's idempotency key or
    null), from which :func:`settle_order` derives the seller's debits.
    Returns ``(payment after, refund entry)``.  :class:`Lost` when the payment
    changed since it was read.
    """
    status = payment["status"]
    if status not in PAID:
        raise InvalidState(f"the payment is {status} and cannot be refunded")
    paid = money.as_decimal(payment["amount"])
    before = money.as_decimal(payment.get("refundedTotal"))
    after = before + amount
    if after > paid:
        raise ValidationError("amount", f"the refund exceeds what is left to refund ({paid - before:.2f})")
    seq = payment.get("refundCount", 0)
    to = "refunded" if after == paid else "partially_refunded"
    entry = {"id": ObjectId(), "seq": seq, "amount": money.dec128(amount), "before": money.dec128(before),
             "after": money.dec128(after), "at": at, "reason": reason, "key": key}
    update: dict[str, Any] = {
        "$set": {"status": to, "refundedTotal": money.dec128(after), "refundCount": seq + 1, "updatedAt": at},
        "$push": {
            "refunds": entry,
            "statusHistory": {"from": status, "to": to, "at": at, "reason": reason},
        },
    }
    # ``liveOrderId`` stays set even when fully refunded: an order is paid at most
    # once, so the seller's debits can never add up to more than the credit.
    doc = await store.update_and_fetch(
        "payments", {"_id": payment["_id"], "status": status, "refundCount": seq}, update, session=session,
    )
    if doc is None:
        raise Lost()
    return doc, entry


async def refund_rest(store: Store, payment: dict, reason: str, at: datetime, session: Session) -> dict | None:
    """Refund whatever is left of a paid payment, re-reading it while it changes; None if nothing was left."""
    for _ in range(ATTEMPTS):
        if payment["status"] not in PAID:
            return None
        rest = money.as_decimal(payment["amount"]) - money.as_decimal(payment.get("refundedTotal"))
        if rest <= 0:
            return None
        try:
            after, entry = await refund_step(store, payment, rest, reason, at, session)
        except Lost:
            payment = await store["payments"].find_one({"_id": payment["_id"]}, session=session)
            continue
        return {"payment_id": after["_id"], "refund_id": entry["id"], "amount": rest,
                "refunded_total": entry["after"], "status": after["status"]}
    raise Lost()


async def fail_pending(store: Store, order_id: ObjectId, reason: str, at: datetime, session: Session) -> None:
    """Mark the pending payments of a cancelled order failed (they can never be completed)."""
    pending = await store["payments"].find({"orderId": order_id, "status": "pending"}, session=session)
    for payment in pending:
        await store["payments"].update_one(
            {"_id": payment["_id"], "status": "pending"},
            {"$set": {"status": "failed", "updatedAt": at}, "$unset": {"liveOrderId": ""},
             "$push": {"statusHistory": {"from": "pending", "to": "failed", "at": at, "reason": reason}}},
            session=session,
        )


async def settle_order(store: Store, order: dict, at: datetime, session: Session) -> None:
    """Make the money agree with the order's status (idempotent; safe to repeat).

    * completed: the seller's credit (``credit:<orderId>``) exists and is
      applied, and every refund of the order's payments has its debit of the
      seller's share (``debit:<paymentId>:<seq>``);
    * cancelled: no payment of the order still holds money (refunded in full)
      and none is left pending (failed).

    Flows call it right after their status change; without transactions a
    retry (or any later change of the order) calls it again to finish a flow
    a crash interrupted.
    """
    if order["status"] == "completed":
        await money.post(
            store, key=money.ledger_key_credit(order["_id"]), kind="credit", seller_id=order["sellerId"],
            order_id=order["_id"], payment_id=None, amount=money.as_decimal(order["sellerAmount"]),
            at=at, session=session,
        )
        total = money.as_decimal(order["totalPrice"])
        fee = money.as_decimal(order["platformFee"])
        refunded = await store["payments"].find({"orderId": order["_id"], "refundCount": {"$gt": 0}}, session=session)
        for payment in refunded:
            for refund in payment.get("refunds", []):
                share = (money.seller_share(money.as_decimal(refund["after"]), total, fee)
                         - money.seller_share(money.as_decimal(refund["before"]), total, fee))
                if share > 0:
                    await money.post(
                        store, key=money.ledger_key_debit(payment["_id"], refund["seq"]), kind="debit",
                        seller_id=order["sellerId"], order_id=order["_id"], payment_id=payment["_id"],
                        amount=share, at=at, session=session,
                    )
    elif order["status"] == "cancelled":
        await release_payments(store, order["_id"], "order cancelled", at, session)


async def release_payments(store: Store, order_id: ObjectId, reason: str, at: datetime, session: Session) -> dict | None:
    """A cancelled order's money goes back: paid payments refunded in full, pending ones failed.

    Returns the refund made by this call (None when nothing was left to refund).
    """
    refund = None
    paid = await store["payments"].find({"orderId": order_id, "status": {"$in": list(PAID)}}, session=session)
    for payment in paid:
        refund = await refund_rest(store, payment, reason, at, session) or refund
    await fail_pending(store, order_id, reason, at, session)
    return refund


async def cancel_steps(store: Store, order: dict, reason: str, at: datetime, session: Session) -> tuple[dict, dict | None]:
    """Cancel ``order``, refund its paid payment in full, fail a pending one. Returns ``(order, refund or None)``."""
    doc = await transition(store, order, "cancelled", reason, at, session)
    return doc, await release_payments(store, doc["_id"], reason or "order cancelled", at, session)


# -- the service ------------------------------------------------------------------


class OrdersService(ServiceResource):
    """ordersService.*"""

    @property
    def orders(self) -> Collection:
        return self.store["orders"]

    async def _repair(self, order_id: ObjectId) -> None:
        """Finish the money side of a flow a crash may have interrupted (where flows are not atomic)."""

        async def repair() -> None:
            order = await self.orders.find_one({"_id": order_id})
            if order is not None:
                await run_guarded(self.store, lambda session: settle_order(self.store, order, now(), session))

        await self.store.finish_interrupted(repair)

    # -- create ---------------------------------------------------------------

    @signature("struct", "string", "string", "int", "double", "struct", returns={"order_id": "string", "order": "struct", "created": "boolean"})
    async def xmlrpc_create(
        self, gig_id: Any, buyer_id: Any, quantity: Any, total_price: Any, options: Any = None,
    ) -> dict:
        """Place an order: gig_id (an active gig), buyer_id (an existing user who is not the gig's seller; the seller is FORBIDDEN), quantity 1-100, total_price (must equal the gig price times quantity to the cent), options {idempotency_key: 1-100 characters}. A second pending order of the same buyer for the same gig is a CONFLICT, unless the idempotency_key repeats an earlier call (kept 24 h): then that call's order comes back as it is now with created false, before anything else is checked again (even if the gig was paused or repriced since). The seller is notified. Returns order_id, order, created."""
        gid = v.object_id(gig_id, "gig_id")
        bid = v.object_id(buyer_id, "buyer_id")
        qty = v.integer(quantity, "quantity", 1, 100)
        total = v.money(total_price, "total_price")
        opts = v.struct(options, "options", OPTIONS)
        key = opts.get("idempotency_key")
        fingerprint = request_hash({"gig": str(gid), "quantity": qty, "total": str(total)})
        if key is not None:  # a repeat answers the first result before anything is checked again
            memo = await self._remembered(bid, key, fingerprint)
            if memo is not None:
                first = await self.orders.find_one({"_id": memo["orderId"]})
                if first is not None:
                    return ok(order_id=str(first["_id"]), order=first, created=False)

        gig = await get_or_404(self.store["gigs"], gid, "gig")
        if gig.get("isActive") is not True:
            raise InvalidState("the gig is not active")
        buyer = await self.store["users"].find_by_id(bid, NOT_DELETED, projection={"_id": 1})
        if buyer is None:
            raise NotFound("buyer not found", "buyer_id")
        if gig["userId"] == bid:
            raise Forbidden("a seller cannot order their own gig", "buyer_id")
        unit = money.as_decimal(gig["price"])
        expected = v.cents(unit * qty)
        if total != expected:
            raise ValidationError("total_price", f"total_price must be {expected:.2f} (price {unit:.2f} x {qty})")

        for _ in range(ATTEMPTS):
            try:
                return await self._place(gig, bid, qty, unit, total, key, fingerprint)
            except Lost:  # the same key at the same time: read the first call's result again
                continue
        # transient: a retry with the key answers the first call's order
        raise Unavailable("A call with this idempotency key is still in progress; try again shortly.",
                          "options.idempotency_key")

    async def _place(
        self, gig: dict, bid: ObjectId, qty: int, unit: Decimal, total: Decimal, key: str | None, fingerprint: str,
    ) -> dict:
        """One attempt at placing the order (or answering a repeated idempotency key); Lost on a race."""
        order_id = ObjectId()
        remembered = None
        if key is not None:
            remembered = await self._remembered(bid, key, fingerprint)
            if remembered is not None:
                order_id = remembered["orderId"]
                first = await self.orders.find_one({"_id": order_id})
                if first is not None:
                    return ok(order_id=str(order_id), order=first, created=False)
                # no transactions and a crash after remembering the key: finish the first call

        fee, seller_amount = money.split(total, self.settings.platform_fee_percent)
        at = now()
        doc = {
            "_id": order_id,
            "gigId": gig["_id"],
            "buyerId": bid,
            "sellerId": gig["userId"],
            "categoryId": gig.get("categoryId"),
            "quantity": qty,
            "unitPrice": money.dec128(unit),
            "totalPrice": money.dec128(total),
            "platformFee": money.dec128(fee),
            "sellerAmount": money.dec128(seller_amount),
            "status": "pending",
            "statusHistory": [{"from": None, "to": "pending", "at": at, "reason": "order placed"}],
            "createdAt": at,
            "updatedAt": at,
            "completedAt": None,
        }
        memo_id = f"{bid}:{key}"

        async def forget_key() -> None:
            await self.store["idempotency"].delete_one({"_id": memo_id, "orderId": order_id})

        async def steps(session: Session) -> tuple[dict, bool]:
            if key is not None and remembered is None:
                try:
                    await self.store["idempotency"].insert_one(
                        {"_id": memo_id, "orderId": order_id, "requestHash": fingerprint, "createdAt": at},
                        session=session,
                    )
                except DuplicateKeyError:
                    raise Lost() from None  # the same key at the same time: answer as a repeat
            # Touch the gig: a deletion running at the same time either conflicts with
            # this write or has already marked the gig (gigsService.delete marks first,
            # then looks for open orders) ...
            orderable = await self.store["gigs"].update_one(
                {"_id": gig["_id"], "isActive": True, **NOT_DELETED}, {"$set": {"lastOrderedAt": at}},
                session=session,
            )
            if orderable.matched_count == 0:
                raise InvalidState("the gig is no longer active")
            # and its buyer and seller: a deletion of either racing this order (usersService
            # marks first, then looks for open orders) conflicts or is seen
            people = await self.store["users"].update_many(
                {"_id": {"$in": [bid, gig["userId"]]}, **NOT_DELETED}, {"$set": {"lastOrderedAt": at}}, session=session,
            )
            if people.matched_count < 2:
                raise InvalidState("the buyer's or the seller's account no longer exists")
            try:
                await self.orders.insert_one(dict(doc), session=session)
            except DuplicateKeyError as e:
                if "_id" in duplicate_key(e):  # no transactions: a retry finishing the first call
                    existing = await self.orders.find_one({"_id": order_id}, session=session)
                    if existing is not None:
                        return existing, False
                if key is not None and remembered is None:  # the key is free again (no transactions)
                    await self.store.undo_outside_transaction(session, forget_key)
                raise Conflict("the buyer already has a pending order for this gig", "gig_id") from e
            await notify(self.store, doc["sellerId"], "order", f"New order for \u201c{gig.get('title', 'your gig')}\u201d",
                         f"/orders/{order_id}", session=session)
            return doc, True

        placed, created = await self.store.transaction(steps)
        return ok(order_id=str(placed["_id"]), order=placed, created=created)

    async def _remembered(self, buyer: ObjectId, key: str, fingerprint: str) -> dict | None:
        memo = await self.store["idempotency"].find_one({"_id": f"{buyer}:{key}"})
        if memo is None:
            return None
        if memo.get("requestHash") != fingerprint:
            raise Conflict("this idempotency key was used for a different order", "options.idempotency_key")
        return memo

    # -- status ---------------------------------------------------------------

    @signature("struct", "string", "string", "string", returns={"order": "struct", "previous_status": "string", "new_status": "string", "refund?": "struct|nil"})
    async def xmlrpc_update_status(self, order_id: Any, status: Any, reason: Any = None) -> dict:
        """Move an order to status (pending -> in_progress|cancelled; in_progress -> completed|disputed|cancelled; disputed -> completed|cancelled; completed and cancelled are final) with an optional reason (at most 500 characters). Illegal changes are INVALID_STATE naming the current status; of two concurrent changes exactly one wins. completed credits the seller once with the seller share (total minus platform fee); cancelled refunds a paid payment in full. Returns order, previous_status, new_status (and refund for a cancellation)."""
        _id = v.object_id(order_id, "order_id")
        to = v.choice(status, "status", STATUSES)
        why = _reason(reason)
        previous: dict[str, str] = {}
        refund: dict[str, Any] = {}

        async def steps(session: Session) -> dict:
            order = await get_or_404(self.orders, _id, "order", session=session)
            previous["status"] = order["status"]
            at = now()
            if to == "cancelled" and order["status"] not in FINAL:
                doc, refunded = await cancel_steps(self.store, order, why, at, session)
                refund["refund"] = refunded
                return doc
            extra = {"completedAt": at} if to == "completed" else None
            doc = await transition(self.store, order, to, why, at, session, extra)
            await settle_order(self.store, doc, at, session)
            return doc

        try:
            doc = await run_guarded(self.store, steps)
        except InvalidState:
            await self._repair(_id)
            raise
        result = ok(order=doc, previous_status=previous["status"], new_status=doc["status"])
        if to == "cancelled":
            result["refund"] = refund.get("refund")
        return result

    @signature("struct", "string", "string", returns={"order": "struct", "refund": "struct|nil"})
    async def xmlrpc_cancel(self, order_id: Any, reason: Any = None) -> dict:
        """Cancel an order that is not completed or cancelled yet, with a reason (at most 500 characters); a completed payment of the order is refunded in full in the same transaction. Returns order and refund (payment_id, amount, refunded_total, status) or nil when nothing was paid."""
        _id = v.object_id(order_id, "order_id")
        why = _reason(reason)

        async def steps(session: Session) -> tuple[dict, dict | None]:
            order = await get_or_404(self.orders, _id, "order", session=session)
            return await cancel_steps(self.store, order, why, now(), session)

        try:
            doc, refund = await run_guarded(self.store, steps)
        except InvalidState:
            await self._repair(_id)
            raise
        return ok(order=doc, refund=refund)

    # -- reads ------------------------------------------------------------------

    @signature("struct", "string", returns={"order": "struct"})
    async def xmlrpc_get_by_id(self, order_id: Any) -> dict:
        """One order by id. Returns order."""
        _id = v.object_id(order_id, "order_id")
        return ok(order=await get_or_404(self.orders, _id, "order"))

    @signature("struct", "struct", "int", "int", returns={"orders": "array", "total": "int", "page": "int", "limit": "int", "pages": "int"})
    async def xmlrpc_get_all(self, filters: Any = None, page: Any = None, limit: Any = None) -> dict:
        """Orders, newest first, paged (page >= 1, limit 1-100, default 20). filters: buyer_id, seller_id, gig_id, status, from and to (ISO dates, on the creation time, both inclusive). Returns orders, total, page, limit, pages."""
        clean = v.struct(filters, "filters", FILTERS)
        page, limit = v.paging(page, limit)
        query: dict[str, Any] = {}
        for field, stored in (("buyer_id", "buyerId"), ("seller_id", "sellerId"), ("gig_id", "gigId"),
                              ("status", "status")):
            if field in clean:
                query[stored] = clean[field]
        created: dict[str, Any] = {}
        if "from" in clean:
            created["$gte"] = clean["from"]
        if "to" in clean:
            created["$lte"] = clean["to"]
        if created:
            query["createdAt"] = created
        return await paged(self.orders, query, [("createdAt", -1), ("_id", -1)], page, limit, "orders")

    @signature("struct", "string", "string", returns={"analytics": "struct"})
    async def xmlrpc_get_analytics(self, user_id: Any, period: Any = None) -> dict:
        """Order figures of a user over period week (7 days), month (30), year (365) or all (default month), as buyer and as seller: orders (count), byStatus (count per status), spent (buyer, completed orders' totals), earned (seller, completed orders' seller amounts) and revenueByDay ([{date: YYYY-MM-DD, revenue}] of the seller's completed orders by completion day). Orders count by creation time in the period, money by completion time. Returns analytics."""
        uid = v.object_id(user_id, "user_id")
        name = "month" if period is None else v.choice(period, "period", tuple(PERIODS))
        await get_or_404(self.store["users"], uid, "user", projection={"_id": 1})
        days = PERIODS[name]
        since = now() - timedelta(days=days) if days is not None else None
        created: dict[str, Any] = {"createdAt": {"$gte": since}} if since else {}
        completed: dict[str, Any] = {"status": "completed"}
        if since:
            completed["completedAt"] = {"$gte": since}

        def by_status(role: str) -> list[dict]:
            return [{"$match": {role: uid, **created}}, {"$group": {"_id": "$status", "count": {"$sum": 1}}}]

        as_buyer, as_seller = await self.store.aggregate_each("orders", [[
            {"$match": {"buyerId": uid}},
            {"$facet": {
                "buyerStatus": by_status("buyerId"),
                "spent": [{"$match": {"buyerId": uid, **completed}},
                          {"$group": {"_id": None, "sum": {"$sum": "$totalPrice"}}}],
            }},
        ], [
            {"$match": {"sellerId": uid}},
            {"$facet": {
                "sellerStatus": by_status("sellerId"),
                "earned": [{"$match": {"sellerId": uid, **completed}},
                           {"$group": {"_id": None, "sum": {"$sum": "$sellerAmount"}}}],
                "revenueByDay": [
                    {"$match": {"sellerId": uid, **completed}},
                    {"$group": {"_id": {"$dateToString": {"format": "%Y-%m-%d", "date": "$completedAt"}},
                                "revenue": {"$sum": "$sellerAmount"}}},
                    {"$sort": {"_id": 1}},
                ],
            }},
        ]])
        facets = {**(as_buyer[0] if as_buyer else {}), **(as_seller[0] if as_seller else {})}

        def counts(key: str) -> tuple[int, dict[str, int]]:
            found = {row["_id"]: row["count"] for row in facets.get(key, [])}
            by = {status: int(found.get(status, 0)) for status in STATUSES}
            return sum(by.values()), by

        def total(key: str) -> Decimal:
            found = facets.get(key) or [{}]
            return money.as_decimal(found[0].get("sum"))

        buyer_orders, buyer_by = counts("buyerStatus")
        seller_orders, seller_by = counts("sellerStatus")
        return ok(analytics={
            "period": name,
            "since": since,
            "asBuyer": {"orders": buyer_orders, "byStatus": buyer_by, "spent": total("spent")},
            "asSeller": {
                "orders": seller_orders,
                "byStatus": seller_by,
                "earned": total("earned"),
                "revenueByDay": [{"date": row["_id"], "revenue": money.as_decimal(row["revenue"])}
                                 for row in facets.get("revenueByDay", [])],
            },
        })
