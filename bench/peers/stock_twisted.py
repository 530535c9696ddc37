"""Stock ``twisted.web.xmlrpc`` with txmongo doing the same queries: no validation,
no envelopes, no metrics, no logging -- the floor the daemon's plumbing adds to.

Benchmark peer only. Usage: python -m bench.peers.stock_twisted PORT MONGODB_URI DB_NAME
"""

from __future__ import annotations

import sys

from twisted.internet import endpoints, reactor
from twisted.web import server, xmlrpc
from txmongo.connection import ConnectionPool


class Categories(xmlrpc.XMLRPC):
    def __init__(self, db) -> None:
        super().__init__(allowNone=True)
        self.db = db

    async def xmlrpc_get_by_slug(self, slug):
        doc = await self.db.categories.find_one({"slug": slug, "deletedAt": None})
        if doc is None:
            return {"success": False, "error": "category not found", "code": "NOT_FOUND"}
        doc["id"] = str(doc.pop("_id"))
        doc.pop("nameLower", None)
        for key in ("createdAt", "updatedAt"):
            doc[key] = doc[key].isoformat()
        return {"success": True, "category": doc}


class Root(xmlrpc.XMLRPC):
    def __init__(self, pool, db_name) -> None:
        super().__init__(allowNone=True)
        self.pool = pool
        self.putSubHandler("categoriesService", Categories(pool[db_name]))

    async def xmlrpc_ping(self):
        await self.pool[sys.argv[3]].command("ping")
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
