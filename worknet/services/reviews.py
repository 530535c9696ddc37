"""reviewsService: buyers' reviews of gigs, and the ratings they make.

A review has a client-chosen id (a retry of the same create returns the first
result with ``created: false``), an author (``extra.user_id``, required: one
review per user and gig, held by a unique index on (gigId, userId)), a
rating 1-5 and an optional comment.  When ``extra.order_id`` is given the
order must be completed, of that gig and bought by that user.  The gig's
seller gets a ``review`` notification.  After every change the gig's
``rating``/``reviewCount`` are recomputed from the reviews collection with
one aggregation (:func:`worknet.services.gigs.recompute_rating`).

``gig_rating`` in results is ``{"rating": <average, 2 decimals>,
"reviewCount": <number of reviews>}``.
"""

from __future__ import annotations

from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError
from txmongo.collection import ReturnDocument

from worknet import validators as v
from worknet.errors import Conflict, Forbidden, InvalidState, NotFound, ValidationError
from worknet.rpc.dispatch import ServiceResource, signature
from worknet.services.common import create_once, get_or_404, notify, now, ok, request_hash
from worknet.services.gigs import recompute_rating, rounded

COMMENT_MAX = 1000


def _rating(value: Any, field: str) -> int:
    return v.integer(value, field, 1, 5)


def _comment(value: Any, field: str) -> str:
    return v.text(value, field, 0, COMMENT_MAX)


EXTRA = {"user_id": v.object_id, "order_id": v.object_id, "comment": _comment}
UPDATES = {"rating": _rating, "comment": _comment}


class ReviewsService(ServiceResource):
    """reviewsService.*"""

    @property
    def reviews(self) -> Any:
        return self.store["reviews"]

    async def _gig_rating(self, gig_id: ObjectId) -> dict:
        figures = await recompute_rating(self.store, gig_id)
        if figures is None:  # the gig document is gone (never happens with soft deletes)
            figures = {"rating": 0.0, "reviewCount": 0}
        return {"rating": rounded(figures["rating"]), "reviewCount": figures["reviewCount"]}

    async def _check_order(self, order_id: ObjectId, gig_id: ObjectId, user_id: ObjectId) -> None:
        order = await self.store["orders"].find_one(
            {"_id": order_id}, projection={"gigId": 1, "buyerId": 1, "status": 1},
        )
        if order is None:
            raise NotFound("order not found")
        if order.get("gigId") != gig_id:
            raise ValidationError("order_id", "the order is not for this gig")
        if order.get("buyerId") != user_id:
            raise Forbidden("only the buyer of the order can review it")
        if order.get("status") != "completed":
            raise InvalidState("only a completed order can be reviewed")

    @signature("struct", "string", "string", "int", "struct")
    async def xmlrpc_create(self, review_id: Any, gig_id: Any, rating: Any, extra: Any = None) -> dict:
        """Review a gig. review_id: client-chosen id or "" (a retry with the same id and content returns the first result with created: false; different content is a CONFLICT). rating: integer 1-5. extra: user_id (required, the author: a live user other than the seller), order_id (optional: a completed order of this gig bought by that user), comment (at most 1000 characters). One review per user and gig (CONFLICT). The seller is notified and the gig's rating recomputed. Returns review_id, review, created, gig_rating {rating, reviewCount}."""
        _id = v.client_id(review_id, "review_id") or ObjectId()
        gig = v.object_id(gig_id, "gig_id")
        stars = _rating(rating, "rating")
        options = v.struct(extra, "extra", EXTRA)
        if "user_id" not in options:
            raise ValidationError("extra.user_id", "extra.user_id (the author) is required")
        author = options["user_id"]
        order = options.get("order_id")
        comment = options.get("comment", "")
        gig_doc = await get_or_404(self.store["gigs"], gig, "gig", projection={"userId": 1, "title": 1})
        await get_or_404(self.store["users"], author, "user", projection={"_id": 1})
        if gig_doc.get("userId") == author:
            raise Forbidden("sellers cannot review their own gigs")
        if order is not None:
            await self._check_order(order, gig, author)
        moment = now()
        doc: dict[str, Any] = {
            "_id": _id,
            "gigId": gig,
            "userId": author,
            "sellerId": gig_doc.get("userId"),
            "orderId": order,
            "rating": stars,
            "comment": comment,
            "createdAt": moment,
            "updatedAt": moment,
        }
        request = {"gig_id": gig, "rating": stars, "user_id": author, "order_id": order, "comment": comment}
        try:
            review, created = await create_once(self.reviews, doc, request, "review")
        except DuplicateKeyError:
            # the (gigId, userId) index: a retry whose duplicate was reported on that index first,
            # or a second review of the same gig by the same user
            existing = await self.reviews.find_one({"_id": _id})
            if existing is None:
                raise Conflict("this user has already reviewed this gig") from None
            if existing.get("requestHash") != request_hash(request):
                raise Conflict("a different review already exists with this id", "id") from None
            review, created = existing, False
        if created and gig_doc.get("userId") is not None:
            await notify(
                self.store, gig_doc["userId"], "review",
                f"New {stars}-star review of your gig \u201c{gig_doc.get('title', '')}\u201d",
                f"/gigs/{gig}",
            )
        return ok(review_id=str(review["_id"]), review=review, created=created,
                  gig_rating=await self._gig_rating(gig))

    @signature("struct", "string", "struct")
    async def xmlrpc_update(self, review_id: Any, updates: Any) -> dict:
        """Change the rating (integer 1-5) and/or the comment (at most 1000 characters) of a review; the gig's rating is recomputed. Returns review, gig_rating {rating, reviewCount}."""
        _id = v.object_id(review_id, "review_id")
        changes = v.struct(updates, "updates", UPDATES, allow_empty=False)
        changes["updatedAt"] = now()
        review = await self.reviews.find_one_and_update(
            {"_id": _id}, {"$set": changes}, return_document=ReturnDocument.AFTER,
        )
        if review is None:
            raise NotFound("review not found")
        return ok(review=review, gig_rating=await self._gig_rating(review["gigId"]))

    @signature("struct", "string")
    async def xmlrpc_delete(self, review_id: Any) -> dict:
        """Delete a review for good; the gig's rating is recomputed. Returns deleted: true, gig_rating {rating, reviewCount}."""
        _id = v.object_id(review_id, "review_id")
        review = await self.reviews.find_one_and_delete({"_id": _id}, projection={"gigId": 1})
        if review is None:
            raise NotFound("review not found")
        return ok(deleted=True, gig_rating=await self._gig_rating(review["gigId"]))

    @signature("struct", "string")
    async def xmlrpc_calculate_rating(self, gig_id: Any) -> dict:
        """The rating of a live gig computed from its reviews: rating (average, 2 decimals, 0 when there are none), count, distribution {"1": n, ..., "5": n}."""
        gig = v.object_id(gig_id, "gig_id")
        await get_or_404(self.store["gigs"], gig, "gig", projection={"_id": 1})
        groups = await self.reviews.aggregate([
            {"$match": {"gigId": gig}},
            {"$group": {"_id": "$rating", "n": {"$sum": 1}}},
        ])
        distribution = {str(stars): 0 for stars in range(1, 6)}
        total = count = 0
        for group in groups:
            stars, n = int(group["_id"]), int(group["n"])
            distribution[str(stars)] = distribution.get(str(stars), 0) + n
            total += stars * n
            count += n
        average = (Decimal(total) / Decimal(count)).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP) if count else 0
        return ok(rating=float(average), count=count, distribution=distribution)
