"""gigsService: the catalogue, its search, and gig ratings.

A gig belongs to a seller (a live user whose role is ``freelancer`` or whose
``isSeller`` is true) and to an active category (stored both as
``categoryId`` and as the category's slug ``category``).  Prices are money
(Decimal128).  Deleting is a soft delete (``deletedAt``), refused while
orders of the gig are pending or in progress; deleted gigs vanish from every
read.

Search uses the ``searchTerms`` array (see :mod:`worknet.search`): all the
folded words of the query must be among the gig's words.  With words, one
aggregation answers: a ``$match`` on the longest query word alone (an
equality on the multikey index, which every server plans as an index lookup),
then a ``$match`` with the whole filter (``$all`` of every word, price,
rating, ...), then a ``$facet`` giving the total and the sorted page in the
same pass.  Without words, a count and a sorted find on the compound indexes.
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
reviews collection (:func:`recompute_rating`, also used by reviewsService).
"""

from __future__ import annotations

import math
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

from bson import Decimal128, ObjectId
from txmongo.collection import ReturnDocument

from worknet import validators as v
from worknet.errors import Forbidden, InvalidState, NotFound, ValidationError
from worknet.rpc.dispatch import ServiceResource, signature
from worknet.search import search_terms, words
from worknet.services.common import NOT_DELETED, get_or_404, now, ok, paged

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
LIST_PROJECTION = {"searchTerms": 0, "ratingSeq": 0}
TEXT_FIELDS = ("title", "description", "tags")
UPDATE_ATTEMPTS = 5


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


def pivot(terms: list[str]) -> str:
    """The query word looked up in the index first: the longest (long words are the rare ones)."""
    return max(terms, key=len)


def search_filter(terms: list[str], options: dict, category_id: ObjectId | None = None) -> dict:
    """The query document of a search: active live gigs having every word, and the validated filters."""
    spec: dict[str, Any] = {"isActive": True, **NOT_DELETED}
    if terms:
        spec["searchTerms"] = {"$all": terms}
    if category_id is not None:
        spec["categoryId"] = category_id
    price: dict[str, Decimal128] = {}
    if "min_price" in options:
        price["$gte"] = Decimal128(options["min_price"])
    if "max_price" in options:
        price["$lte"] = Decimal128(options["max_price"])
    if price:
        spec["price"] = price
    if "min_rating" in options:
        spec["rating"] = {"$gte": options["min_rating"]}
    if "max_delivery_days" in options:
        spec["deliveryTime"] = {"$lte": options["max_delivery_days"]}
    if "seller_id" in options:
        spec["userId"] = options["seller_id"]
    return spec


def search_pipeline(terms: list[str], spec: dict, order: list[tuple[str, int]], page: int, limit: int) -> list[dict]:
    """One pass for a search with words: the gigs holding the pivot word (an equality on the
    multikey index), then the whole filter, then the total and the sorted page together."""
    return [
        {"$match": {"searchTerms": pivot(terms)}},
        {"$match": spec},
        {"$facet": {
            "total": [{"$count": "n"}],
            "gigs": [{"$sort": dict(order)}, {"$skip": (page - 1) * limit}, {"$limit": limit},
                     {"$project": LIST_PROJECTION}],
        }},
    ]


def rounded(rating: Any) -> float:
    """A rating for display: two decimals, half up."""
    return float(Decimal(repr(float(rating or 0))).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


async def find_category(store: Any, ref: str, field: str = "category") -> dict | None:
    """The live category named by ``ref`` (its id or its slug), or None; a malformed ``ref`` is a validation error."""
    clauses: list[dict] = []
    try:
        clauses.append({"_id": v.object_id(ref, field)})
    except ValidationError:
        pass
    try:
        clauses.append({"slug": v.slug(ref, field)})
    except ValidationError:
        pass
    if not clauses:
        raise ValidationError(field, f"{field} must be a category slug or id")
    query = clauses[0] if len(clauses) == 1 else {"$or": clauses}
    found: dict | None = await store["categories"].find_one({**query, **NOT_DELETED})
    return found


async def recompute_rating(store: Any, gig_id: ObjectId) -> dict | None:
    """Set the gig's ``rating`` and ``reviewCount`` from its reviews (one aggregation).

    Concurrent recomputations of one gig are ordered by ``ratingSeq``: each
    takes a ticket before reading the reviews and writes only if no later
    ticket was taken, so an older view never overwrites a newer one.
    Returns ``{"rating", "reviewCount"}`` as computed (None if the gig is gone).
    """
    gigs = store["gigs"]
    ticket = await gigs.find_one_and_update(
        {"_id": gig_id}, {"$inc": {"ratingSeq": 1}},
        projection={"ratingSeq": 1}, return_document=ReturnDocument.AFTER,
    )
    if ticket is None:
        return None
    figures = await store["reviews"].aggregate([
        {"$match": {"gigId": gig_id}},
        {"$group": {"_id": None, "sum": {"$sum": "$rating"}, "count": {"$sum": 1}}},
    ])
    count = int(figures[0]["count"]) if figures else 0
    rating = figures[0]["sum"] / count if count else 0.0
    await gigs.update_one(
        {"_id": gig_id, "ratingSeq": ticket["ratingSeq"]},
        {"$set": {"rating": float(rating), "reviewCount": count}},
    )
    return {"rating": float(rating), "reviewCount": count}


class GigsService(ServiceResource):
    """gigsService.*"""

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

    @signature("struct", "string", "struct", returns={"gig_id": "string", "gig": "struct"})
    async def xmlrpc_create(self, user_id: Any, gig_data: Any) -> dict:
        """Create a gig for a seller. user_id: a live user whose role is freelancer or whose isSeller is true (else FORBIDDEN). gig_data: title 5-120, description 20-5000, category (slug or id of an active category), price (money), deliveryTime 1-365 days, optional revisionNumber 0-20 (default 0), images (at most 10 http(s) URLs), features (at most 20 strings), tags (at most 10 strings). Returns gig_id, gig."""
        owner = v.object_id(user_id, "user_id")
        data = v.struct(gig_data, "gig_data", GIG_FIELDS)
        for name in REQUIRED:
            if name not in data:
                raise ValidationError(name, f"{name} is required")
        await self._seller(owner)
        category = await self._active_category(data["category"])
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
        await self.gigs.insert_one(doc)
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
            doc = await self.gigs.find_one_and_update(
                filter_, {"$set": changes}, projection=LIST_PROJECTION, return_document=ReturnDocument.AFTER,
            )
            if doc is not None:
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
        result = await self.gigs.update_one(
            {"_id": _id, **NOT_DELETED}, {"$set": {"deletedAt": moment, "isActive": False, "updatedAt": moment}},
        )
        if result.modified_count == 0:
            raise NotFound("gig not found")
        busy = await self.store["orders"].count_documents(
            {"gigId": _id, "status": {"$in": OPEN_ORDER_STATUSES}}, limit=1,
        )
        if busy:
            await self.gigs.update_one(
                {"_id": _id, "deletedAt": moment},
                {"$set": {"deletedAt": None, "isActive": gig.get("isActive", True), "updatedAt": now()}},
            )
            raise InvalidState("the gig has pending or in-progress orders")
        return ok(deleted=True)

    @signature("struct", "string", returns={"gig": "struct"})
    async def xmlrpc_get_by_id(self, gig_id: Any) -> dict:
        """One live gig by id, with seller: {id, username, rating} (nil if the seller account is gone). Returns gig."""
        _id = v.object_id(gig_id, "gig_id")
        gig = await get_or_404(self.gigs, _id, "gig", projection=LIST_PROJECTION)
        seller = await self.store["users"].find_one(
            {"_id": gig.get("userId"), **NOT_DELETED}, projection={"username": 1, "rating": 1},
        )
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
            category = await find_category(self.store, options["category"])
            if category is None:
                return ok(gigs=[], total=0, page=page, limit=limit, pages=0)
            category_id = category["_id"]
        spec = search_filter(terms, options, category_id)
        order = SORTS[options.get("sort", "relevance")]
        if not terms:
            return await paged(self.gigs, spec, order, page, limit, "gigs", projection=LIST_PROJECTION)
        found = await self.gigs.aggregate(search_pipeline(terms, spec, order, page, limit))
        counted = found[0]["total"] if found else []
        total = int(counted[0]["n"]) if counted else 0
        return ok(gigs=found[0]["gigs"] if found else [], total=total, page=page, limit=limit,
                  pages=math.ceil(total / limit))

    @signature("struct", "string", "double", returns={"rating": "double", "reviewCount": "int"})
    async def xmlrpc_update_rating(self, gig_id: Any, new_rating: Any = None) -> dict:
        """Fold one rating (a number 1-5) into the gig's average atomically: rating = (rating * reviewCount + new_rating) / (reviewCount + 1), reviewCount + 1, in one update. With new_rating nil, recompute rating and reviewCount from the reviews collection. Returns rating, reviewCount."""
        _id = v.object_id(gig_id, "gig_id")
        if new_rating is None:
            await get_or_404(self.gigs, _id, "gig", projection={"_id": 1})
            figures = await recompute_rating(self.store, _id)
            if figures is None:
                raise NotFound("gig not found")
            return ok(**figures)
        value = _rating_value(new_rating, "new_rating", 1, 5)
        count = {"$ifNull": ["$reviewCount", 0]}
        doc = await self.gigs.find_one_and_update(
            {"_id": _id, **NOT_DELETED},
            [{"$set": {
                "rating": {"$divide": [
                    {"$add": [{"$multiply": [{"$ifNull": ["$rating", 0]}, count]}, value]},
                    {"$add": [count, 1]},
                ]},
                "reviewCount": {"$add": [count, 1]},
                "updatedAt": now(),
            }}],
            projection={"rating": 1, "reviewCount": 1},
            return_document=ReturnDocument.AFTER,
        )
        if doc is None:
            raise NotFound("gig not found")
        return ok(rating=float(doc["rating"]), reviewCount=int(doc["reviewCount"]))

