"""categoriesService: the marketplace's categories.

A category has a unique ``name`` (case-insensitively) and a unique, immutable
``slug``.  Deleting is a soft delete (``deletedAt``), refused while live
gigs (active or paused) use the category; the slug of a deleted category stays reserved so that
old links never point at a different category.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from worknet import validators as v
from worknet.errors import Conflict, InvalidState, NotFound
from worknet.money import as_decimal
from worknet.rpc.dispatch import ServiceResource, signature
from worknet.services.common import NOT_DELETED, duplicate_key, get_or_404, now, ok, paged, set_on_live
from worknet.services.gigs import rounded

if TYPE_CHECKING:
    from worknet.store.pool import Collection

NAME = (2, 60)
DESCRIPTION_MAX = 1000


def _name(value: Any, field: str = "name") -> str:
    return v.text(value, field, *NAME)


def _description(value: Any, field: str = "description") -> str:
    return v.text(value, field, 0, DESCRIPTION_MAX)


def _image(value: Any, field: str) -> str:
    return "" if value == "" else v.url(value, field)


UPDATES = {
    "name": _name,
    "description": _description,
    "icon": lambda value, field: v.text(value, field, 0, 200),
    "image": _image,
    "isActive": v.boolean,
}


def _conflict(error: DuplicateKeyError) -> Conflict:
    if "slug" in duplicate_key(error):
        return Conflict("a category with this slug already exists", "slug")
    return Conflict("a category with this name already exists", "name")


class CategoriesService(ServiceResource):
    """categoriesService.*"""

    @property
    def categories(self) -> Collection:
        return self.store["categories"]

    @signature("struct", "string", "string", "string", returns={"category_id": "string", "category": "struct"})
    async def xmlrpc_create(self, name: Any, slug: Any, description: Any = "") -> dict:
        """Create a category. name 2-60 characters, unique; slug lower-case words joined by hyphens, unique, at most 60; description at most 1000. Returns category_id, category."""
        moment = now()
        clean_name = _name(name)
        doc: dict[str, Any] = {
            "_id": ObjectId(),
            "name": clean_name,
            "nameLower": clean_name.lower(),
            "slug": v.slug(slug),
            "description": _description(description if description is not None else ""),
            "icon": "",
            "image": "",
            "isActive": True,
            "createdAt": moment,
            "updatedAt": moment,
        }
        try:
            await self.categories.insert_one(doc)
        except DuplicateKeyError as e:
            raise _conflict(e) from None
        return ok(category_id=str(doc["_id"]), category=doc)

    @signature("struct", "string", "struct", returns={"category": "struct"})
    async def xmlrpc_update(self, category_id: Any, updates: Any) -> dict:
        """Update name, description, icon, image or isActive of a category (the slug never changes). Returns category."""
        _id = v.object_id(category_id, "category_id")
        changes = v.struct(updates, "updates", UPDATES, allow_empty=False)
        if "name" in changes:
            changes["nameLower"] = changes["name"].lower()
        changes["updatedAt"] = now()
        return ok(category=await set_on_live(self.store, "categories", _id, changes, "category", _conflict))

    @signature("struct", "string", returns={"deleted": "boolean"})
    async def xmlrpc_delete(self, category_id: Any) -> dict:
        """Soft-delete a category; refused (INVALID_STATE) while live gigs (active or paused) use it. Returns deleted: true."""
        _id = v.object_id(category_id, "category_id")
        category = await get_or_404(self.categories, _id, "category", projection={"isActive": 1})
        # Mark first, then look for gigs: a gig created (or moved here) at the same time
        # checks the category again once written, so it either sees the mark and
        # withdraws itself, or was written before the mark and is seen here.
        moment = now()
        marked = await self.categories.update_one(
            {"_id": _id, **NOT_DELETED}, {"$set": {"deletedAt": moment, "isActive": False, "updatedAt": moment}},
        )
        if marked.modified_count == 0:
            raise NotFound("category not found")
        in_use = await self.store["gigs"].count_documents({"categoryId": _id, **NOT_DELETED}, limit=1)
        if in_use:
            await self.categories.update_one(
                {"_id": _id, "deletedAt": moment},
                {"$set": {"deletedAt": None, "isActive": category.get("isActive", True), "updatedAt": now()}},
            )
            raise InvalidState("the category is used by gigs (active or paused)")
        return ok(deleted=True)

    @signature("struct", "int", "int", returns={"categories": "array", "total": "int", "page": "int", "limit": "int", "pages": "int"})
    async def xmlrpc_get_all(self, page: Any = None, limit: Any = None) -> dict:
        """Active categories by name, paged (page >= 1, limit 1-100, default 20). Returns categories, total, page, limit, pages."""
        page, limit = v.paging(page, limit)
        return await paged(self.categories, {"isActive": True, **NOT_DELETED}, [("name", 1)], page, limit, "categories")

    @signature("struct", "string", returns={"category": "struct"})
    async def xmlrpc_get_by_id(self, category_id: Any) -> dict:
        """One category by id. Returns category."""
        _id = v.object_id(category_id, "category_id")
        return ok(category=await get_or_404(self.categories, _id, "category"))

    @signature("struct", "string", returns={"category": "struct"})
    async def xmlrpc_get_by_slug(self, slug: Any) -> dict:
        """One category by slug. Returns category."""
        doc = await self.categories.find_one({"slug": v.slug(slug), **NOT_DELETED})
        if doc is None:
            raise NotFound("category not found")
        return ok(category=doc)

    @signature("struct", "string", returns={"stats": "struct"})
    async def xmlrpc_get_stats(self, category_id: Any) -> dict:
        """Figures of a category: totalGigs, activeGigs, totalOrders, completedOrders, averageRating (over all reviews of its gigs), totalRevenue (completed orders). Returns stats."""
        _id = v.object_id(category_id, "category_id")
        await get_or_404(self.categories, _id, "category")
        gigs = await self.store["gigs"].aggregate([
            {"$match": {"categoryId": _id, **NOT_DELETED}},
            {"$group": {
                "_id": None,
                "total": {"$sum": 1},
                "active": {"$sum": {"$cond": [{"$eq": ["$isActive", True]}, 1, 0]}},
                "ratingSum": {"$sum": {"$multiply": [{"$ifNull": ["$rating", 0]}, {"$ifNull": ["$reviewCount", 0]}]}},
                "reviews": {"$sum": {"$ifNull": ["$reviewCount", 0]}},
            }},
        ])
        orders = await self.store["orders"].aggregate([
            {"$match": {"categoryId": _id}},
            {"$group": {
                "_id": None,
                "total": {"$sum": 1},
                "completed": {"$sum": {"$cond": [{"$eq": ["$status", "completed"]}, 1, 0]}},
                "revenue": {"$sum": {"$cond": [{"$eq": ["$status", "completed"]}, "$totalPrice", 0]}},
            }},
        ])
        g = gigs[0] if gigs else {}
        o = orders[0] if orders else {}
        reviews = g.get("reviews", 0)
        average = rounded(g.get("ratingSum", 0) / reviews) if reviews else 0.0
        return ok(stats={
            "totalGigs": g.get("total", 0),
            "activeGigs": g.get("active", 0),
            "totalOrders": o.get("total", 0),
            "completedOrders": o.get("completed", 0),
            "averageRating": average,
            "totalRevenue": as_decimal(o.get("revenue", 0)),
        })
