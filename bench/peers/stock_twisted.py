"""Stock ``twisted.web.xmlrpc`` with txmongo doing the same queries: no validation,
no envelopes, no metrics, no logging -- the floor the daemon's plumbing adds to.

Benchmark peer only. Usage: python -m bench.peers.stock_twisted PORT MONGODB_URI DB_NAME

Answers ``ping``, ``paymentsService.calculate_fees``, ``categoriesService.get_by_slug``,
``gigsService.get_by_id`` and ``gigsService.search`` (words or a category);
the write flow and logins are measured against the stdlib peers only.
"""

from __future__ import annotations

import math
import sys

from bson import ObjectId
from twisted.internet import endpoints, reactor
from twisted.web import server, xmlrpc
from txmongo import filter as qf
from txmongo.connection import ConnectionPool

from bench.peers.seed_server import LIST_FIELDS, PaymentsService, not_found, plain


class Categories(xmlrpc.XMLRPC):
    def __init__(self, db) -> None:
        super().__init__(allowNone=True)
        self.db = db

    async def xmlrpc_get_by_slug(self, slug):
        doc = await self.db.categories.find_one({"slug": slug, "deletedAt": None})
        if doc is None:
            return not_found("category")
        return {"success": True, "category": plain(doc)}


class Gigs(xmlrpc.XMLRPC):
    def __init__(self, db) -> None:
        super().__init__(allowNone=True)
        self.db = db

    async def xmlrpc_get_by_id(self, gig_id):
        gig = await self.db.gigs.find_one({"_id": ObjectId(gig_id), "deletedAt": None})
        if gig is None:
            return not_found("gig")
        seller = await self.db.users.find_one({"_id": gig["userId"]}, {"username": 1, "rating": 1})
        gig = plain(gig)
        gig["seller"] = plain(seller) if seller else None
        return {"success": True, "gig": gig}

    async def xmlrpc_search(self, query="", filters=None, page=1, limit=20):
        filters = filters or {}
        spec = {"isActive": True, "deletedAt": None}
        words = [w for w in query.lower().split() if w]
        if words:
            spec["searchTerms"] = {"$all": words}
        if "category" in filters:
            category = await self.db.categories.find_one({"slug": filters["category"], "deletedAt": None})
            if category is None:
                return {"success": True, "gigs": [], "total": 0, "page": page, "limit": limit, "pages": 0}
            spec["categoryId"] = category["_id"]
        total = await self.db.gigs.count_documents(spec)
        order = qf.sort(qf.DESCENDING("rating") + qf.DESCENDING("reviewCount") + qf.DESCENDING("createdAt")
                        + qf.DESCENDING("_id"))
        found = await self.db.gigs.find(spec, projection=LIST_FIELDS, sort=order, skip=(page - 1) * limit, limit=limit)
        return {"success": True, "gigs": plain(list(found)), "total": total, "page": page, "limit": limit,
                "pages": math.ceil(total / limit)}


class Payments(xmlrpc.XMLRPC):
    def __init__(self) -> None:
        super().__init__(allowNone=True)
        self.fees = PaymentsService(None)

    def xmlrpc_calculate_fees(self, amount):
        return self.fees.calculate_fees(amount)


class Root(xmlrpc.XMLRPC):
    def __init__(self, pool, db_name) -> None:
        super().__init__(allowNone=True)
        self.pool = pool
        self.db_name = db_name
        self.putSubHandler("categoriesService", Categories(pool[db_name]))
        self.putSubHandler("gigsService", Gigs(pool[db_name]))
        self.putSubHandler("paymentsService", Payments())

    async def xmlrpc_ping(self):
        await self.pool[self.db_name].command("ping")
        return {"status": "ok", "message": "RPC Server is running", "mongodb": "connected"}


def main() -> None:
    port, uri, db_name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    pool = ConnectionPool(uri, pool_size=10)
    site = server.Site(Root(pool, db_name))
    site.log = lambda request: None  # type: ignore[method-assign]
    endpoints.serverFromString(reactor, f"tcp:{port}:interface=127.0.0.1").listen(site)
    reactor.run()


if __name__ == "__main__":
    main()
