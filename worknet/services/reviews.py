"""reviewsService: buyers' reviews of gigs, and the ratings they make.

A review has a client-chosen id (a retry of the same create returns the first
result with ``created: false``; the same id with other content is a
CONFLICT), a rating 1-5 and an optional comment.  ``extra.user_id`` names the
author: one review per user and gig, held by a unique index on
(gigId, userId) that covers only reviews with an author.  ``extra`` is
optional in the contract (the original client calls ``create(review_id,
gig_id, rating)``), so a review without ``user_id`` is anonymous and stored
without ``userId``.  When ``extra.order_id`` is given, ``user_id`` is
required and the order must be completed, of that gig and bought by that
user.  The gig's seller gets a ``review`` notification whose id is the
review's id, so a retried create completes a half-done one and never
notifies twice.  After every change the gig's ``rating``/``reviewCount`` are
recomputed from the reviews collection with one aggregation
(:func:`worknet.services.gigs.recompute_rating`), and so are the seller's
``rating``/``reviewCount`` over the reviews of all the seller's gigs
(:func:`~worknet.services.gigs.recompute_seller_rating`, what
``gigsService.get_by_id`` shows as ``seller.rating``).  A review another
writer stored without ``sellerId`` gets its gig's owner then, so it counts
for the seller from its gig's next recomputation on.

``gig_rating`` in results is the gig's new average (2 decimals, 0 when it has
no review) and ``review_count`` its number of reviews.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from worknet import validators as v
from worknet.errors import Conflict, Forbidden, InvalidState, NotFound, ValidationError
from worknet.money import average_rating
from worknet.rpc.dispatch import ServiceResource, signature
from worknet.services.common import (
    NOT_DELETED,
    create_once,
    get_or_404,
    notify_once,
    now,
    ok,
    request_hash,
)
from worknet.services.gigs import recompute_rating, rounded

if TYPE_CHECKING:
    from worknet.store.pool import Collection

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
    def reviews(self) -> Collection:
        return self.store["reviews"]

    async def _gig_rating(self, gig_id: ObjectId) -> dict:
        """``gig_rating`` and ``review_count`` for a result, after recomputing them on the gig and its seller."""
        figures = await recompute_rating(self.store, gig_id)
        if figures is None:  # the gig document is gone (never happens with soft deletes)
            figures = {"rating": 0.0, "reviewCount": 0}
        return {"gig_rating": rounded(figures["rating"]), "review_count": figures["reviewCount"]}

    async def _check_order(self, order_id: ObjectId, gig_id: ObjectId, user_id: ObjectId) -> None:
        order = await self.store["orders"].find_one(
            {"_id": order_id}, projection={"gigId": 1, "buyerId": 1, "status": 1},
        )
        if order is None:
            raise NotFound("order not found", "order_id")
        if order.get("gigId") != gig_id:
            raise ValidationError("order_id", "the order is not for this gig")
        if order.get("buyerId") != user_id:
            raise Forbidden("only the buyer of the order can review it", "user_id")
        if order.get("status") != "completed":
            raise InvalidState("only a completed order can be reviewed", "order_id")

    async def _notify_seller(self, review: dict, title: str) -> None:
        """The seller's ``review`` notification, keyed by the review's id (written at most once)."""
        seller = review.get("sellerId")
        if seller is None:
            return
        await notify_once(
            self.store, seller, "review", f"New {review['rating']}-star review of your gig \u201c{title}\u201d",
            f"/gigs/{review['gigId']}", about=review,
        )

    @signature("struct", "string", "string", "int", "struct", returns={"review_id": "string", "review": "struct", "created": "boolean", "gig_rating": "double", "review_count": "int"})
    async def xmlrpc_create(self, review_id: Any, gig_id: Any, rating: Any, extra: Any = None) -> dict:
        """Review a live gig. review_id: client-chosen id or "" (a retry with the same id and content returns the first result with created: false before anything else is checked again, even if the gig, the author or the order changed since; different content is a CONFLICT). rating: integer 1-5. extra (optional): user_id (the author: a live user, not the gig's seller; one review per user and gig, else CONFLICT; without it the review is anonymous), order_id (a completed order of this gig bought by user_id, which it requires), comment (at most 1000 characters). The seller is notified and the gig's rating recomputed from its reviews. Returns review_id, review, created, gig_rating (the gig's new average, 2 decimals), review_count."""
        chosen = v.client_id(review_id, "review_id")
        _id = chosen or ObjectId()
        gig = v.object_id(gig_id, "gig_id")
        stars = _rating(rating, "rating")
        options = v.struct(extra, "extra", EXTRA)
        author = options.get("user_id")
        order = options.get("order_id")
        comment = options.get("comment", "")
        if order is not None and author is None:
            raise ValidationError("user_id", "user_id is required with order_id")
        request = {"gig_id": gig, "rating": stars, "user_id": author, "order_id": order, "comment": comment}
        if chosen is not None:  # a repeat answers the first result before anything is checked again
            first = await self.reviews.find_one({"_id": chosen})
            if first is not None:
                return await self._replay(first, request)
        gig_doc = await get_or_404(self.store["gigs"], gig, "gig", projection={"userId": 1, "title": 1})
        if author is not None:
            user = await self.store["users"].find_by_id(author, NOT_DELETED, projection={"_id": 1})
            if user is None:
                raise NotFound("user not found", "user_id")
            if gig_doc.get("userId") == author:
                raise Forbidden("sellers cannot review their own gigs", "user_id")
        if order is not None and author is not None:
            await self._check_order(order, gig, author)
        moment = now()
        doc: dict[str, Any] = {
            "_id": _id,
            "gigId": gig,
            "sellerId": gig_doc.get("userId"),
            "orderId": order,
            "rating": stars,
            "comment": comment,
            "createdAt": moment,
            "updatedAt": moment,
        }
        if author is not None:
            doc["userId"] = author
        try:
            review, created = await create_once(self.reviews, doc, request, "review")
        except DuplicateKeyError:
            # the (gigId, userId) index: a retry whose duplicate was reported on that index first,
            # or a second review of the same gig by the same user
            existing = await self.reviews.find_one({"_id": _id})
            if existing is None:
                raise Conflict("this user has already reviewed this gig", "user_id") from None
            if existing.get("requestHash") != request_hash(request):
                raise Conflict("a different review already exists with this id", "id") from None
            review, created = existing, False
        # idempotent: a retry after a crash completes what the first call left undone
        await self._notify_seller(review, str(gig_doc.get("title", "")))
        return ok(review_id=str(review["_id"]), review=review, created=created, **await self._gig_rating(gig))

    async def _replay(self, first: dict, request: dict) -> dict:
        """The answer to a repeated create: the first review (CONFLICT if the content differs), its
        notification completed if a crash stopped the first call, and the gig's rating now."""
        if first.get("requestHash") != request_hash(request):
            raise Conflict("a different review already exists with this id", "id")
        gig = await self.store["gigs"].find_one({"_id": first["gigId"]}, projection={"title": 1})
        await self._notify_seller(first, str((gig or {}).get("title", "")))
        return ok(review_id=str(first["_id"]), review=first, created=False, **await self._gig_rating(first["gigId"]))

    @signature("struct", "string", "struct", returns={"review": "struct", "gig_rating": "double", "review_count": "int"})
    async def xmlrpc_update(self, review_id: Any, updates: Any) -> dict:
        """Change the rating (integer 1-5) and/or the comment (at most 1000 characters) of a review; the gig's rating is recomputed. Returns review, gig_rating (the gig's new average), review_count."""
        _id = v.object_id(review_id, "review_id")
        changes = v.struct(updates, "updates", UPDATES, allow_empty=False)
        changes["updatedAt"] = now()
        review = await self.store.update_and_fetch("reviews", {"_id": _id}, {"$set": changes})
        if review is None:
            raise NotFound("review not found")
        return ok(review=review, **await self._gig_rating(review["gigId"]))

    @signature("struct", "string", returns={"deleted": "boolean", "gig_rating": "double", "review_count": "int"})
    async def xmlrpc_delete(self, review_id: Any) -> dict:
        """Delete a review for good; the gig's rating is recomputed. Returns deleted: true, gig_rating (the gig's new average), review_count."""
        _id = v.object_id(review_id, "review_id")
        # of two concurrent deletes only one deletes, the other is NOT_FOUND
        review = await self.store.delete_and_fetch("reviews", {"_id": _id}, projection={"gigId": 1})
        if review is None:
            raise NotFound("review not found")
        return ok(deleted=True, **await self._gig_rating(review["gigId"]))

    @signature("struct", "string", returns={"rating": "double", "count": "int", "distribution": "struct"})
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
        return ok(rating=average_rating(total, count), count=count, distribution=distribution)
