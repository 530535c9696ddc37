"""gigsService: the catalogue, its search, and gig ratings.

A gig belongs to a seller (a live user whose role is ``freelancer`` or whose
``isSeller`` is true) and to an active category (stored both as
``categoryId`` and as the category's slug ``category``).  Prices are money
(Decimal128).  Deleting is a soft delete (``deletedAt``), refused while
orders of the gig are pending or in progress; deleted gigs vanish from every
read.

Search and category browses are answered by the catalogue index
(:mod:`worknet.catalogue`: roaring bitmaps of the gigs holding each folded
word -- see :mod:`worknet.search` --, each category, each seller and the
active gigs, plus sort columns, all kept in the database); every write of a
gig marks it for that index once written, before the call returns, so a gig is found by the
next call after its create or update returns.  Then the page's gigs are read
by ``_id``.
Sorts, each with a final tie-breaker on ``_id`` so paging is deterministic:

* ``relevance`` (default): best rated first -- ``rating`` desc, then
  ``reviewCount`` desc, then newest (``createdAt`` desc, ``_id`` desc).  Every
  listed gig matches all the query words, so the ranking among matches is by
  the buyers' verdict.
* ``price_asc`` / ``price_desc``: ``price``, then ``_id`` in the same direction.
* ``rating``: ``rating`` desc, ``reviewCount`` desc, ``_id`` desc.
* ``newest``: ``createdAt`` desc, ``_id`` desc.

Ratings: ``update_rating(gig_id, r)`` folds one rating into the running
average with a single atomic pipeline update (no read-modify-write), and
``update_rating(gig_id, nil)`` recomputes ``rating``/``reviewCount`` from the
reviews collection, and the seller's figures too (:func:`recompute_rating`, also
used by reviewsService after every review write).
"""

from __future__ import annotations

import math
from collections.abc import Coroutine
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import TYPE_CHECKING, Any

from bson import Decimal128, ObjectId
from twisted.internet import defer

from worknet import catalogue
from worknet import validators as v
from worknet.catalogue import Query, catalogue_of, update_marked, write_marked
from worknet.errors import DomainError, Forbidden, InvalidState, NotFound, ValidationError
from worknet.money import average_rating
from worknet.rpc.dispatch import ServiceResource, signature
from worknet.search import search_terms, words
from worknet.services.common import NOT_DELETED, get_or_404, now, ok, paged

if TYPE_CHECKING:
    from worknet.store.interface import Session, Store
    from worknet.store.pool import Collection

TITLE = (5, 120)
DESCRIPTION = (20, 5000)
QUERY_MAX = 200
QUERY_WORDS_MAX = 16
OPEN_ORDER_STATUSES = ["pending", "in_progress"]
SORTS: dict[str, list[tuple[str, int]]] = {
    "relevance": [("rating", -1), ("reviewCount", -1), ("createdAt", -1), ("_id", -1)],
    "price_asc": [("price", 1), ("_id", 1)],
    "price_desc": [("price", -1), ("_id", -1)],
    "rating": [("rating", -1), ("reviewCount", -1), ("_id", -1)],
    "newest": [("createdAt", -1), ("_id", -1)],
}
LIST_PROJECTION = {"searchTerms": 0, "ratingSeq": 0, "ratingTicket": 0, "ratingLog": 0}
RATING_LOG = 64  # the last folds kept on the gig, so that each call finds its own figures
TEXT_FIELDS = ("title", "description", "tags")
UPDATE_ATTEMPTS = 5
CATEGORY_REFS_KEPT = 10_000


def _title(value: Any, field: str) -> str:
    return v.text(value, field, *TITLE)


def _description(value: Any, field: str) -> str:
    return v.text(value, field, *DESCRIPTION)


def _category_ref(value: Any, field: str) -> str:
    return v.text(value, field, 1, 60)


def _rating_value(value: Any, field: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValidationError(field, f"{field} must be a number")
    if not low <= value <= high:
        raise ValidationError(field, f"{field} must be between {low:g} and {high:g}")
    return float(value)


GIG_FIELDS = {
    "title": _title,
    "description": _description,
    "category": _category_ref,
    "price": v.money,
    "deliveryTime": lambda value, field: v.integer(value, field, 1, 365),
    "revisionNumber": lambda value, field: v.integer(value, field, 0, 20),
    "images": lambda value, field: v.string_list(value, field, 10, v.url),
    "features": lambda value, field: v.string_list(value, field, 20, lambda x, f: v.text(x, f, 1, 200)),
    "tags": lambda value, field: v.string_list(value, field, 10, lambda x, f: v.text(x, f, 1, 50)),
}
REQUIRED = ("title", "description", "category", "price", "deliveryTime")
UPDATES = {**GIG_FIELDS, "isActive": v.boolean}

FILTERS = {
    "category": _category_ref,
    "min_price": v.money,
    "max_price": v.money,
    "min_rating": lambda value, field: _rating_value(value, field, 0, 5),
    "max_delivery_days": lambda value, field: v.integer(value, field, 1, 365),
    "seller_id": v.object_id,
    "sort": lambda value, field: v.choice(value, field, tuple(SORTS)),
}


def search_query(terms: list[str], options: dict, category_id: ObjectId | None = None) -> Query:
    """The catalogue query of a search: its words and validated filters (prices in cents)."""
    return Query(
        terms=terms,
        category_id=category_id,
        seller_id=options.get("seller_id"),
        min_price=catalogue.cents(options["min_price"]) if "min_price" in options else None,
        max_price=catalogue.cents(options["max_price"]) if "max_price" in options else None,
        min_rating=options.get("min_rating"),
        max_delivery=options.get("max_delivery_days"),
        sort=options.get("sort", "relevance"),
    )


def rounded(rating: Any) -> float:
    """A rating for display: two decimals, half up."""
    return float(Decimal(repr(float(rating or 0))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


async def find_category(store: Store, ref: str, field: str = "category") -> dict | None:
    """The live category named by ``ref`` (its id or its slug), or None; a malformed ``ref`` is a validation error."""
    as_id: ObjectId | None = None
    as_slug: str | None = None
    try:
        as_id = v.object_id(ref, field)
    except ValidationError:
        pass
    try:
        as_slug = v.slug(ref, field)
    except ValidationError:
        pass
    if as_id is None and as_slug is None:
        raise ValidationError(field, f"{field} must be a category slug or id")
    # by id, then by slug (a 24-hex-digit ref is both)
    by_id = [{"_id": as_id, **NOT_DELETED}] if as_id is not None else []
    by_slug = [{"slug": as_slug, **NOT_DELETED}] if as_slug is not None else []
    found = await store.find_first("categories", by_id + by_slug)
    return found[1] if found is not None else None


async def recompute_seller_rating(store: Store, seller_id: ObjectId) -> dict | None:
    """Set the seller's ``rating`` and ``reviewCount`` from the reviews of all the seller's gigs.

    The reviews are those whose ``sellerId`` is the seller (:func:`recompute_rating`
    gives a gig's reviews their gig's owner first).  ``rating`` is stored as shown: the average rounded
    half up to 2 decimals (:func:`worknet.money.average_rating`), 0 when there is no review.
    Concurrent recomputations for one seller are ordered like the gigs' ones:
    each takes a ticket (``ratingSeq`` on the user, incremented atomically)
    before reading the reviews and writes only while no later ticket was taken,
    so a view read before a concurrent review never overwrites one read after
    it.  Returns ``{"rating", "reviewCount"}`` as computed (None when the user
    document is gone).
    """
    ticket = await store.update_and_fetch("users", {"_id": seller_id}, {"$inc": {"ratingSeq": 1}},
                                          projection={"ratingSeq": 1})
    if ticket is None:
        return None
    figures = await store["reviews"].aggregate([
        {"$match": {"sellerId": seller_id}},
        {"$group": {"_id": None, "sum": {"$sum": "$rating"}, "count": {"$sum": 1}}},
    ])
    count = int(figures[0]["count"]) if figures else 0
    rating = average_rating(figures[0]["sum"], count) if count else 0.0
    await store["users"].update_one(
        {"_id": seller_id, "ratingSeq": ticket["ratingSeq"]},
        {"$set": {"rating": rating, "reviewCount": count}},
    )
    return {"rating": rating, "reviewCount": count}


async def recompute_rating(store: Store, gig_id: ObjectId) -> dict | None:
    """Set the gig's ``rating`` and ``reviewCount`` from its reviews (one aggregation), then its seller's.

    Concurrent recomputations of one gig are ordered by ``ratingTicket``: each
    sets a fresh ticket before reading the reviews and writes only if no later
    ticket was set, so an older view never overwrites a newer one.

    Then the seller's figures (:func:`recompute_seller_rating`), which count
    reviews by their ``sellerId``: a review of this gig whose ``sellerId`` is
    not the gig's owner -- one written by another writer (the Node backend, a
    migration) without it -- gets the owner's id first, and a seller it named
    instead is recomputed as well.  The same aggregation tells whether there is
    any, so a recomputation costs no more round trips than before.
    Returns the gig's ``{"rating", "reviewCount"}`` as computed (None if the gig is gone).
    """
    ticket = ObjectId()
    gig = await store.update_and_fetch("gigs", {"_id": gig_id}, {"$set": {"ratingTicket": ticket}},
                                       projection={"userId": 1})
    if gig is None:
        return None
    groups = await store["reviews"].aggregate([
        {"$match": {"gigId": gig_id}},
        {"$group": {"_id": "$sellerId", "sum": {"$sum": "$rating"}, "count": {"$sum": 1}}},
    ])
    count = sum(int(group["count"]) for group in groups)
    rating = sum(group["sum"] for group in groups) / count if count else 0.0

    async def write(session: Session) -> None:
        await store["gigs"].update_one(
            {"_id": gig_id, "ratingTicket": ticket},
            {"$set": {"rating": float(rating), "reviewCount": count}}, session=session,
        )

    await write_marked(store, [gig_id], write)
    owner = gig.get("userId")
    if isinstance(owner, ObjectId):
        strays = [group["_id"] for group in groups if group["_id"] != owner]
        for stray in strays:  # {"sellerId": None} also matches reviews without the field
            await store["reviews"].update_many({"gigId": gig_id, "sellerId": stray}, {"$set": {"sellerId": owner}})
        for seller in [owner, *(stray for stray in strays if isinstance(stray, ObjectId))]:
            await recompute_seller_rating(store, seller)
    return {"rating": float(rating), "reviewCount": count}


async def withdraw_gigs(store: Store, owner: ObjectId, moment: datetime) -> int:
    """Soft-delete every live gig of ``owner`` (a deleted account), marked for the catalogue; how many.

    usersService.delete_user marks the user first, then calls this: a gig created
    at the same time checks its seller again once written (``_still_there``), so
    it either withdraws itself or is found here.
    """
    found = await store["gigs"].find({"userId": owner, **NOT_DELETED}, projection={"_id": 1})
    ids = [doc["_id"] for doc in found]
    for start in range(0, len(ids), 100):
        part = ids[start:start + 100]

        async def withdraw(session: Session, part: list = part) -> None:
            await store["gigs"].update_many(
                {"_id": {"$in": part}, **NOT_DELETED},
                {"$set": {"deletedAt": moment, "isActive": False, "updatedAt": moment}}, session=session,
            )

        await write_marked(store, part, withdraw)
    return len(ids)


async def _live(collection: Collection, _id: ObjectId | None, query: dict | None = None) -> dict | bool | None:
    """The live document ``_id`` of ``collection`` (projection: ``_id``); True when there is no id to check."""
    if _id is None:
        return True
    found: dict | None = await collection.find_by_id(_id, {**NOT_DELETED, **(query or {})}, projection={"_id": 1})
    return found


async def together(*steps: Coroutine[Any, Any, Any]) -> list[Any]:
    """Run independent reads at once (each its own round trip); their results in order, or the
    error of the first failed one in argument order."""
    outcomes = await defer.DeferredList([defer.ensureDeferred(step) for step in steps], consumeErrors=True)
    for succeeded, value in outcomes:
        if not succeeded:
            value.raiseException()
    return [value for _succeeded, value in outcomes]


class GigsService(ServiceResource):
    """gigsService.*"""

    def __init__(self, store: Any, settings: Any) -> None:
        super().__init__(store, settings)
        # the catalogue's compactor and the change-stream follower are services of the daemon's tree
        # (worknet.app.build_app), other writers' gig changes reaching search through the latter
        self.category_ids: dict[str, ObjectId] = {}  # search filter: category slug or id -> its id

    @property
    def gigs(self) -> Any:
        return self.store["gigs"]

    async def _seller(self, user_id: ObjectId) -> dict:
        user = await get_or_404(self.store["users"], user_id, "user", projection={"role": 1, "isSeller": 1})
        if user.get("role") != "freelancer" and user.get("isSeller") is not True:
            raise Forbidden("only sellers can offer gigs")
        return user

    async def _active_category(self, ref: str) -> dict:
        category = await find_category(self.store, ref)
        if category is None:
            raise NotFound("category not found")
        if not category.get("isActive"):
            raise ValidationError("category", "the category is not active")
        return category

    async def _still_there(self, gig_id: ObjectId, owner: ObjectId | None, category_id: ObjectId | None,
                           mark_too: bool = False) -> None:
        """After a gig was written: its seller and category must still be live, else the gig is withdrawn.

        ``categoriesService.delete`` and ``usersService.delete_user`` mark first,
        then look for the gigs (of the category, of the seller): a create or a
        category change running at the same time either sees the mark here, or
        wrote its gig before the mark and is seen there.
        """
        category, seller, *_marked = await together(
            _live(self.store["categories"], category_id, {"isActive": True}), _live(self.store["users"], owner),
            *([catalogue.mark(self.store, [gig_id])] if mark_too else []))
        if category is not None and seller is not None:
            return
        gone: DomainError = (ValidationError("category", "the category is not active") if category is None
                             else NotFound("user not found"))
        moment = now()

        async def withdraw(session: Session) -> None:
            await self.gigs.update_one({"_id": gig_id, **NOT_DELETED},
                                       {"$set": {"deletedAt": moment, "isActive": False, "updatedAt": moment}},
                                       session=session)

        await write_marked(self.store, [gig_id], withdraw)
        raise gone

    @signature("struct", "string", "struct", returns={"gig_id": "string", "gig": "struct"})
    async def xmlrpc_create(self, user_id: Any, gig_data: Any) -> dict:
        """Create a gig for a seller. user_id: a live user whose role is freelancer or whose isSeller is true (else FORBIDDEN). gig_data: title 5-120, description 20-5000, category (slug or id of an active category), price (money), deliveryTime 1-365 days, optional revisionNumber 0-20 (default 0), images (at most 10 http(s) URLs), features (at most 20 strings), tags (at most 10 strings). Returns gig_id, gig."""
        owner = v.object_id(user_id, "user_id")
        data = v.struct(gig_data, "gig_data", GIG_FIELDS)
        for name in REQUIRED:
            if name not in data:
                raise ValidationError(name, f"{name} is required")
        _seller, category = await together(self._seller(owner), self._active_category(data["category"]))
        moment = now()
        doc: dict[str, Any] = {
            "_id": ObjectId(),
            "userId": owner,
            "title": data["title"],
            "description": data["description"],
            "categoryId": category["_id"],
            "category": category["slug"],
            "price": Decimal128(data["price"]),
            "deliveryTime": data["deliveryTime"],
            "revisionNumber": data.get("revisionNumber", 0),
            "images": data.get("images", []),
            "features": data.get("features", []),
            "tags": data.get("tags", []),
            "rating": 0.0,
            "reviewCount": 0,
            "isActive": True,
            "createdAt": moment,
            "updatedAt": moment,
            "deletedAt": None,
        }
        doc["searchTerms"] = search_terms(doc["title"], doc["description"], doc["tags"])

        # A new gig needs no mark before its insert (no search can know it yet): one mark after
        # it, sent together with the re-reads of the seller and the category.
        await self.gigs.insert_one(dict(doc))
        await self._still_there(doc["_id"], owner, category["_id"], mark_too=True)
        return ok(gig_id=str(doc["_id"]), gig=doc)

    @signature("struct", "string", "struct", returns={"gig": "struct"})
    async def xmlrpc_update(self, gig_id: Any, updates: Any) -> dict:
        """Update a gig: title, description, category (slug or id of an active category), price, deliveryTime, revisionNumber, images, features, tags (same rules as create) and isActive. The owner and the rating counters cannot be changed. Returns gig."""
        _id = v.object_id(gig_id, "gig_id")
        changes = v.struct(updates, "updates", UPDATES, allow_empty=False)
        if "category" in changes:
            category = await self._active_category(changes["category"])
            changes["categoryId"] = category["_id"]
            changes["category"] = category["slug"]
        if "price" in changes:
            changes["price"] = Decimal128(changes["price"])
        texts = {"title", "description", "tags"} & set(changes)
        for _attempt in range(UPDATE_ATTEMPTS):
            filter_: dict[str, Any] = {"_id": _id, **NOT_DELETED}
            if texts:
                current = await get_or_404(self.gigs, _id, "gig", projection=dict.fromkeys(TEXT_FIELDS, 1))
                merged = {**current, **changes}
                changes["searchTerms"] = search_terms(merged["title"], merged["description"], merged.get("tags", []))
                # compare-and-set on the texts the terms were computed from
                filter_.update({key: current.get(key) for key in TEXT_FIELDS if key not in changes})
            changes["updatedAt"] = now()

            doc = await update_marked(self.store, _id, filter_, {"$set": changes}, projection=LIST_PROJECTION)
            if doc is not None:
                if "categoryId" in changes or changes.get("isActive") is True:
                    await self._still_there(_id, doc.get("userId"), doc.get("categoryId"))
                return ok(gig=doc)
            if not texts:
                break
        await get_or_404(self.gigs, _id, "gig", projection={"_id": 1})
        raise InvalidState("the gig was changed at the same time; try again")

    @signature("struct", "string", returns={"deleted": "boolean"})
    async def xmlrpc_delete(self, gig_id: Any) -> dict:
        """Soft-delete a gig; refused (INVALID_STATE) while orders of it are pending or in progress. Returns deleted: true."""
        _id = v.object_id(gig_id, "gig_id")
        gig = await get_or_404(self.gigs, _id, "gig", projection={"isActive": 1})
        # Mark first, then look for open orders: an order being placed at the same
        # time either finds the gig gone (it touches the gig when it is placed) or
        # is seen here, and then the mark is taken back.
        moment = now()

        async def mark_deleted(session: Session) -> int:
            result = await self.gigs.update_one(
                {"_id": _id, **NOT_DELETED},
                {"$set": {"deletedAt": moment, "isActive": False, "updatedAt": moment}}, session=session,
            )
            return int(result.modified_count)

        if await write_marked(self.store, [_id], mark_deleted) == 0:
            raise NotFound("gig not found")
        busy = await self.store["orders"].count_documents(
            {"gigId": _id, "status": {"$in": OPEN_ORDER_STATUSES}}, limit=1,
        )
        if busy:
            async def take_back(session: Session) -> None:
                await self.gigs.update_one(
                    {"_id": _id, "deletedAt": moment},
                    {"$set": {"deletedAt": None, "isActive": gig.get("isActive", True), "updatedAt": now()}},
                    session=session,
                )

            await write_marked(self.store, [_id], take_back)
            raise InvalidState("the gig has pending or in-progress orders")
        return ok(deleted=True)

    @signature("struct", "string", returns={"gig": "struct"})
    async def xmlrpc_get_by_id(self, gig_id: Any) -> dict:
        """One live gig by id, with seller: {id, username, rating} (nil if the seller account is gone). Returns gig."""
        _id = v.object_id(gig_id, "gig_id")
        gig = await get_or_404(self.gigs, _id, "gig", projection=LIST_PROJECTION)
        seller = await self.store["users"].find_by_id(gig.get("userId"), NOT_DELETED,
                                                      projection={"username": 1, "rating": 1})
        gig["seller"] = None if seller is None else {
            "id": seller["_id"], "username": seller.get("username", ""), "rating": float(seller.get("rating") or 0),
        }
        return ok(gig=gig)

    @signature("struct", "string", "int", "int", returns={"gigs": "array", "total": "int", "page": "int", "limit": "int", "pages": "int"})
    async def xmlrpc_get_by_user(self, user_id: Any, page: Any = None, limit: Any = None) -> dict:
        """The live gigs (active or paused) of a user, newest first, paged (page >= 1, limit 1-100, default 20). Returns gigs, total, page, limit, pages."""
        owner = v.object_id(user_id, "user_id")
        page, limit = v.paging(page, limit)
        await get_or_404(self.store["users"], owner, "user", projection={"_id": 1})
        return await paged(
            self.gigs, {"userId": owner, **NOT_DELETED}, SORTS["newest"], page, limit, "gigs",
            projection=LIST_PROJECTION,
        )

    @signature("struct", "string", "struct", "int", "int", returns={"gigs": "array", "total": "int", "page": "int", "limit": "int", "pages": "int"})
    async def xmlrpc_search(self, query: Any = None, filters: Any = None, page: Any = None, limit: Any = None) -> dict:
        """Search active gigs. query: words (at most 200 characters) that must all appear in the title, description or tags, case- and accent-insensitively (empty or blank lists everything; a query with no letters or digits, such as ".*", finds nothing). filters: category (slug or id), min_price, max_price (money), min_rating (0-5), max_delivery_days (1-365), seller_id, sort: relevance (default: rating, then review count, then newest), price_asc, price_desc, rating, newest. Returns gigs, total, page, limit, pages."""
        text = "" if query is None else v.text(query, "query", 0, QUERY_MAX)
        terms = words(text)
        if len(terms) > QUERY_WORDS_MAX:
            raise ValidationError("query", f"query must have at most {QUERY_WORDS_MAX} words")
        options = v.struct(filters, "filters", FILTERS)
        page, limit = v.paging(page, limit)
        if "min_price" in options and "max_price" in options and options["min_price"] > options["max_price"]:
            raise ValidationError("min_price", "min_price must not exceed max_price")
        if text.strip() and not terms:
            # only punctuation: no word could ever match it (an empty query lists everything)
            return ok(gigs=[], total=0, page=page, limit=limit, pages=0)
        category_id = None
        if "category" in options:
            # a slug names one category forever (slugs are immutable and stay reserved after a
            # delete), so the id it resolves to is remembered; a deleted category has no live gig
            ref = options["category"]
            category_id = self.category_ids.get(ref)
            if category_id is None:
                category = await find_category(self.store, ref)
                if category is None:
                    return ok(gigs=[], total=0, page=page, limit=limit, pages=0)
                category_id = category["_id"]
                if len(self.category_ids) < CATEGORY_REFS_KEPT:
                    self.category_ids[ref] = category_id
        ids, total = await catalogue_of(self.store).search(search_query(terms, options, category_id), page, limit)
        found = {doc["_id"]: doc for doc in await self.gigs.find({"_id": {"$in": ids}}, projection=LIST_PROJECTION)}
        gigs = [found[_id] for _id in ids if _id in found]
        return ok(gigs=gigs, total=total, page=page, limit=limit, pages=math.ceil(total / limit))

    @signature("struct", "string", "double", returns={"rating": "double", "reviewCount": "int"})
    async def xmlrpc_update_rating(self, gig_id: Any, new_rating: Any = None) -> dict:
        """Fold one rating (a number 1-5) into the gig's average atomically: rating = (rating * reviewCount + new_rating) / (reviewCount + 1), reviewCount + 1, in one update. With new_rating nil, recompute rating and reviewCount from the reviews collection (this also repairs figures another writer left behind), and the seller's rating and reviewCount from the reviews of all the seller's gigs. Returns rating, reviewCount (the gig's)."""
        _id = v.object_id(gig_id, "gig_id")
        if new_rating is None:
            await get_or_404(self.gigs, _id, "gig", projection={"_id": 1})
            figures = await recompute_rating(self.store, _id)
            if figures is None:
                raise NotFound("gig not found")
            return ok(**figures)
        value = _rating_value(new_rating, "new_rating", 1, 5)
        count = {"$ifNull": ["$reviewCount", 0]}
        ticket = ObjectId()
        fold = [{"$set": {
            "rating": {"$divide": [
                {"$add": [{"$multiply": [{"$ifNull": ["$rating", 0]}, count]}, value]},
                {"$add": [count, 1]},
            ]},
            "reviewCount": {"$add": [count, 1]},
            "updatedAt": now(),
        }}, {"$set": {"ratingLog": {"$concatArrays": [
            {"$slice": [{"$ifNull": ["$ratingLog", []]}, -(RATING_LOG - 1)]},
            [{"t": ticket, "rating": "$rating", "reviewCount": "$reviewCount"}],
        ]}}}]

        doc = await update_marked(self.store, _id, {"_id": _id, **NOT_DELETED}, fold,
                                  projection={"rating": 1, "reviewCount": 1, "ratingLog": 1})
        if doc is None:
            raise NotFound("gig not found")
        # the figures this fold produced (the document may already show later folds)
        mine = next((entry for entry in doc.get("ratingLog", []) if entry.get("t") == ticket), doc)
        return ok(rating=float(mine["rating"]), reviewCount=int(mine["reviewCount"]))
