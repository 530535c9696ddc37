"""The origin system's shape: SimpleXMLRPCServer + ThreadingMixIn + pymongo, same queries.

Benchmark peer only (blocking by design: that is what it stands for).
Usage: python -m bench.peers.seed_server PORT MONGODB_URI DB_NAME
"""

from __future__ import annotations

import sys
from socketserver import ThreadingMixIn
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import pymongo


class ThreadedServer(ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True


class Handler(SimpleXMLRPCRequestHandler):
    rpc_paths = ("/RPC2", "/")
    protocol_version = "HTTP/1.1"  # keep-alive, as the daemon offers


class CategoriesService:
    def __init__(self, db) -> None:
        self.db = db

    def get_by_slug(self, slug):
        doc = self.db.categories.find_one({"slug": slug, "deletedAt": None})
        if doc is None:
            return {"success": False, "error": "category not found", "code": "NOT_FOUND"}
        doc["id"] = str(doc.pop("_id"))
        doc.pop("nameLower", None)
        for key in ("createdAt", "updatedAt"):
            doc[key] = doc[key].isoformat()
        return {"success": True, "category": doc}


class Root:
    def __init__(self, client, db) -> None:
        self.client = client
        self.categoriesService = CategoriesService(db)

    def ping(self):
        self.client.admin.command("ping")
        return {"status": "ok", "message": "RPC Server is running", "mongodb": "connected"}


def main() -> None:
    port, uri, db_name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    client = pymongo.MongoClient(uri, maxPoolSize=50)
    server = ThreadedServer(("127.0.0.1", port), requestHandler=Handler, allow_none=True, logRequests=False)
    server.register_instance(Root(client, client[db_name]), allow_dotted_names=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
