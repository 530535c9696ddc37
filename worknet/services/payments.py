"""paymentsService: paying for orders, refunds and the platform fee.

Payment status: ``pending -> completed | failed``; ``completed ->
partially_refunded -> refunded`` (or straight to ``refunded``); ``failed`` and
``refunded`` are final.  The id is client-chosen so Node can retry a create.
An order is paid at most once: the internal ``liveOrderId`` field, set on
every payment that has not failed (pending, completed, partially refunded and
refunded), carries a unique partial index, so a second payment is accepted
only after the first one failed.  (A fully refunded payment keeps it: paying
again after a refund would let the seller's debits exceed the credit.)  Paying never credits the seller: only
completing the order does (see :mod:`worknet.services.orders`).  Creating,
processing and refunding a payment each write the order's guard
(:func:`~worknet.services.orders.touch_order`) after the payment, so they
conflict with a completion or cancellation of the same order.  Refunds may
carry an idempotency key (``refunds[].key``, per payment) and each has an id.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from worknet import money
from worknet import validators as v
from worknet.errors import Conflict, InvalidState, NotFound, ValidationError
from worknet.rpc.dispatch import ServiceResource, no_database, signature
from worknet.services.common import get_or_404, notify, now, ok, request_hash
from worknet.services.orders import Lost, refund_step, run_guarded, settle_order, touch_order, transition

if TYPE_CHECKING:
    from worknet.store.interface import Session
    from worknet.store.pool import Collection

METHODS = ("stripe", "paypal", "bank_transfer", "other")
PAYABLE = ("pending", "in_progress", "disputed")  # order statuses a payment is accepted for (not final)
OPTIONS = {"idempotency_key": lambda value, field: v.text(value, field, 1, 100)}


class PaymentsService(ServiceResource):
    """paymentsService.*"""

    @property
    def payments(self) -> Collection:
        return self.store["payments"]

    async def _repair(self, payment_id: ObjectId) -> None:
        """Finish what a crash may have left half-done around this payment (where flows are not atomic)."""

        async def repair() -> None:
            payment = await self.payments.find_one({"_id": payment_id})
            if payment is None:
                return
            order = await self.store["orders"].find_one({"_id": payment["orderId"]})
            if order is None:
                return

            async def steps(session: Session) -> None:
                at = now()
                current = order
                if payment["status"] in ("completed", "partially_refunded", "refunded") and current["status"] == "pending":
                    current = await transition(self.store, current, "in_progress", "payment completed", at, session)
                await settle_order(self.store, current, at, session)

            await run_guarded(self.store, steps, "payment")

        await self.store.finish_interrupted(repair)

    @signature("struct", "string", "string", "double", "string", returns={"payment_id": "string", "payment": "struct", "created": "boolean"})
    async def xmlrpc_create(self, payment_id: Any, order_id: Any, amount: Any, payment_method: Any) -> dict:
        """Create a pending payment for an order: payment_id (client-chosen id, or "" to let the server choose), order_id (a pending, in-progress or disputed order; a cancelled or completed one is INVALID_STATE), amount (must equal the order total), payment_method stripe, paypal, bank_transfer or other. An order is paid at most once: a second payment is a CONFLICT unless the earlier one failed. Re-sending the same create returns the original with created false; the same id with different content is a CONFLICT. Returns payment_id, payment, created."""
        pid = v.client_id(payment_id, "payment_id") or ObjectId()
        oid = v.object_id(order_id, "order_id")
        paid = v.money(amount, "amount")
        method = v.choice(payment_method, "payment_method", METHODS)
        fingerprint = request_hash({"order": str(oid), "amount": str(paid), "method": method})

        existing = await self.payments.find_one({"_id": pid})
        if existing is not None:
            return self._repeat(existing, fingerprint)
        order = await get_or_404(self.store["orders"], oid, "order")
        if order["status"] not in PAYABLE:
            raise InvalidState(f"the order is {order['status']} and cannot be paid")
        total = money.as_decimal(order["totalPrice"])
        if paid != total:
            raise ValidationError("amount", f"amount must equal the order total ({total:.2f})")
        at = now()
        doc = {
            "_id": pid,
            "orderId": oid,
            "liveOrderId": oid,
            "buyerId": order["buyerId"],
            "sellerId": order["sellerId"],
            "amount": money.dec128(paid),
            "refundedTotal": money.dec128(money.ZERO),
            "refundCount": 0,
            "refunds": [],
            "paymentMethod": method,
            "status": "pending",
            "statusHistory": [{"from": None, "to": "pending", "at": at, "reason": "payment created"}],
            "requestHash": fingerprint,
            "createdAt": at,
            "updatedAt": at,
        }

        async def take_back() -> None:
            await self._fail(pid, "order no longer payable", now())

        async def steps(session: Session) -> None:
            # The payment first, then the order's guard (a compare-and-set on a payable
            # status): with transactions a cancel or completion racing this conflicts on
            # the order; without, either the cancel sees this payment or this sees the cancel.
            await self.payments.insert_one(dict(doc), session=session)
            if await touch_order(self.store, oid, session, PAYABLE) is not None:
                return
            await self.store.undo_outside_transaction(session, take_back)  # the payment written above
            current = await self.store["orders"].find_one({"_id": oid}, projection={"status": 1}, session=session)
            raise InvalidState(f"the order is {(current or {}).get('status', 'gone')} and cannot be paid")

        try:
            await self.store.transaction(steps)
        except DuplicateKeyError:
            existing = await self.payments.find_one({"_id": pid})
            if existing is not None:
                return self._repeat(existing, fingerprint)
            raise Conflict("the order already has a payment", "order_id") from None
        return ok(payment_id=str(pid), payment=doc, created=True)

    async def _fail(self, pid: ObjectId, reason: str, at: Any, session: Session = None) -> None:
        """A pending payment becomes failed (compare-and-set) and frees the order's payment slot."""
        await self.payments.update_one(
            {"_id": pid, "status": "pending"},
            {"$set": {"status": "failed", "updatedAt": at}, "$unset": {"liveOrderId": ""},
             "$push": {"statusHistory": {"from": "pending", "to": "failed", "at": at, "reason": reason}}},
            session=session,
        )

    @staticmethod
    def _repeat(existing: dict, fingerprint: str) -> dict:
        if existing.get("requestHash") != fingerprint:
            raise Conflict("a different payment already exists with this id", "payment_id")
        return ok(payment_id=str(existing["_id"]), payment=existing, created=False)

    @signature("struct", "string", "string", returns={"payment": "struct", "order_status": "string"})
    async def xmlrpc_process(self, payment_id: Any, status: Any) -> dict:
        """Settle a pending payment as completed or failed. completed moves a pending order to in_progress in the same transaction and notifies buyer and seller; a cancelled (or completed) order cannot be paid (INVALID_STATE). Returns payment, order_status."""
        pid = v.object_id(payment_id, "payment_id")
        to = v.choice(status, "status", ("completed", "failed"))
        notified: list[Any] = []

        async def steps(session: Session) -> tuple[dict, str]:
            notified.clear()
            payment = await get_or_404(self.payments, pid, "payment", session=session)
            if payment["status"] != "pending":
                raise InvalidState(f"the payment is {payment['status']} and cannot become {to}")
            order = await get_or_404(self.store["orders"], payment["orderId"], "order", session=session)
            at = now()
            update: dict[str, Any] = {
                "$set": {"status": to, "updatedAt": at},
                "$push": {"statusHistory": {"from": "pending", "to": to, "at": at, "reason": f"payment {to}"}},
            }
            if to == "failed":
                update["$unset"] = {"liveOrderId": ""}
            elif order["status"] in ("cancelled", "completed"):
                raise InvalidState(f"the order is {order['status']} and cannot be paid")
            doc = await self.store.update_and_fetch("payments", {"_id": pid, "status": "pending"}, update,
                                                    session=session)
            if doc is None:
                raise Lost()
            if to == "failed":
                return doc, order["status"]
            # The order's guard, after the payment's write: with transactions a cancel racing
            # this conflicts on the order; without, one of the two reads the other's write.
            order = await touch_order(self.store, order["_id"], session) or order
            if order["status"] == "cancelled":  # cancelled meanwhile (no transactions): give it back
                await settle_order(self.store, order, at, session)
                raise InvalidState("the order was cancelled meanwhile; the payment has been refunded")
            if order["status"] == "pending":
                try:
                    order = await transition(self.store, order, "in_progress", "payment completed", at, session)
                except Lost:
                    order = await self.store["orders"].find_one({"_id": order["_id"]}, session=session)
                    if order["status"] == "pending":
                        order = await transition(self.store, order, "in_progress", "payment completed", at, session)
                    elif order["status"] == "cancelled":  # cancelled meanwhile (no transactions): give it back
                        await settle_order(self.store, order, at, session)
                        raise InvalidState("the order was cancelled meanwhile; the payment has been refunded") from None
            text = f"Payment of {money.as_decimal(doc['amount']):.2f} received for order {order['_id']}"
            link = f"/orders/{order['_id']}"
            await notify(self.store, doc["buyerId"], "payment", text, link, session=session)
            await notify(self.store, doc["sellerId"], "payment", text, link, session=session)
            return doc, order["status"]

        try:
            doc, order_status = await run_guarded(self.store, steps, "payment")
        except InvalidState:
            await self._repair(pid)
            raise
        return ok(payment=doc, order_status=order_status)

    @signature("struct", "string", "double", "struct", returns={"payment": "struct", "refunded_total": "double", "refund_id": "string", "created": "boolean"})
    async def xmlrpc_refund(self, payment_id: Any, amount: Any, options: Any = None) -> dict:
        """Refund part or all of a completed or partially refunded payment: amount > 0; the refunds together never exceed the amount paid (VALIDATION_ERROR). The payment becomes partially_refunded or refunded; if the order is completed (the seller was credited) the seller's share of the refund is debited from their earnings, also when the refund and the completion race. options {idempotency_key: 1-100 characters, per payment}: a repeat with the same key and amount returns the first refund (refund_id, its refunded_total, the payment as it is now) with created false and refunds nothing more, before anything else is checked again; the same key with another amount is a CONFLICT. Returns payment, refunded_total, refund_id, created."""
        pid = v.object_id(payment_id, "payment_id")
        value = v.money(amount, "amount")
        key = v.struct(options, "options", OPTIONS).get("idempotency_key")
        replayed: list[dict] = []

        async def steps(session: Session) -> tuple[dict, dict]:
            replayed.clear()
            payment = await get_or_404(self.payments, pid, "payment", session=session)
            if key is not None:
                first = self._keyed_refund(payment, key, value)
                if first is not None:
                    replayed.append(first)
                    return payment, first
            at = now()
            doc, entry = await refund_step(self.store, payment, value, "refund", at, session, key)
            # The order's guard, after the payment's write: a completion racing this refund
            # conflicts on the order (with transactions) or is read here (without).
            order = await touch_order(self.store, doc["orderId"], session)
            if order is not None:
                await settle_order(self.store, order, at, session)
            return doc, entry

        try:
            doc, entry = await run_guarded(self.store, steps, "payment")
        except InvalidState:
            await self._repair(pid)
            raise
        if replayed:
            await self._repair(pid)  # no transactions: finish the first call's debit if a crash stopped it
        return ok(payment=doc, refunded_total=entry["after"], refund_id=str(entry["id"]), created=not replayed)

    @staticmethod
    def _keyed_refund(payment: dict, key: str, amount: Any) -> dict | None:
        """The refund of ``payment`` made with idempotency ``key`` (None if none); CONFLICT for another amount."""
        for entry in payment.get("refunds", []):
            if entry.get("key") == key:
                if money.as_decimal(entry["amount"]) != amount:
                    raise Conflict("this idempotency key was used for a refund of another amount",
                                   "options.idempotency_key")
                return dict(entry)
        return None

    @signature("struct", "string", returns={"status": "string", "amount": "double", "refunded_total": "double", "order_id": "string"})
    async def xmlrpc_get_status(self, payment_id: Any) -> dict:
        """The state of a payment. Returns status, amount, refunded_total, order_id."""
        pid = v.object_id(payment_id, "payment_id")
        payment = await self.payments.find_one({"_id": pid})
        if payment is None:
            raise NotFound("payment not found")
        return ok(status=payment["status"], amount=payment["amount"],
                  refunded_total=payment.get("refundedTotal", money.ZERO), order_id=payment["orderId"])

    @no_database
    @signature("struct", "double", returns={"total_amount": "double", "platform_fee": "double", "platform_fee_percentage": "double", "seller_amount": "double"})
    async def xmlrpc_calculate_fees(self, amount: Any) -> dict:
        """The split of an amount: platform_fee = amount x PLATFORM_FEE_PERCENT / 100 rounded half up to the cent, seller_amount = amount - platform_fee (they always add up to the amount). Returns total_amount, platform_fee, platform_fee_percentage, seller_amount."""
        total = v.money(amount, "amount")
        percent = self.settings.platform_fee_percent
        fee, seller = money.split(total, percent)
        return ok(total_amount=total, platform_fee=fee, platform_fee_percentage=float(percent), seller_amount=seller)
