"""The origin system's shape: SimpleXMLRPCServer + ThreadingMixIn + pymongo, same queries.

Benchmark peer only (blocking by design: that is what it stands for).  It
answers the benchmark's calls with the same queries the daemon makes, without
its validation, envelopes' details, metrics or logging.

Usage: python -m bench.peers.seed_server PORT MONGODB_URI DB_NAME [HTTP/1.1|HTTP/1.0]

``HTTP/1.1`` (default) keeps connections alive -- the naive server at its
best; ``HTTP/1.0`` closes each one after its answer, as the original ran.
"""

from __future__ import annotations

import math
import os
import sys
import time
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from socketserver import ThreadingMixIn
from xmlrpc.server import SimpleXMLRPCRequestHandler, SimpleXMLRPCServer

import bcrypt
import jwt
import pymongo
from bson import Decimal128, ObjectId

CENT = Decimal("0.01")
FEE_PERCENT = Decimal("20")
LIST_FIELDS = {"title": 1, "price": 1, "rating": 1, "reviewCount": 1, "category": 1, "userId": 1,
               "deliveryTime": 1, "createdAt": 1, "images": 1}
SECRET = os.environ.get("JWT_SECRET", "bench-peer-secret-bench-peer-secret-0")


class ThreadedServer(ThreadingMixIn, SimpleXMLRPCServer):
    daemon_threads = True
    request_queue_size = 1024


def plain(value):
    """Stored values as XML-RPC can carry them (the daemon's to_wire, in short)."""
    if isinstance(value, dict):
        return {("id" if k == "_id" else k): plain(v) for k, v in value.items()
                if k not in ("passwordHash", "searchTerms", "nameLower", "usernameLower", "tokenVersion")}
    if isinstance(value, list):
        return [plain(v) for v in value]
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Decimal128):
        return float(value.to_decimal().quantize(CENT))
    if isinstance(value, Decimal):
        return float(value.quantize(CENT))
    return value


def not_found(what):
    return {"success": False, "error": f"{what} not found", "code": "NOT_FOUND"}


class CategoriesService:
    def __init__(self, db) -> None:
        self.db = db

    def get_by_slug(self, slug):
        doc = self.db.categories.find_one({"slug": slug, "deletedAt": None})
        if doc is None:
            return not_found("category")
        return {"success": True, "category": plain(doc)}


class GigsService:
    def __init__(self, db) -> None:
        self.db = db

    def get_by_id(self, gig_id):
        gig = self.db.gigs.find_one({"_id": ObjectId(gig_id), "deletedAt": None})
        if gig is None:
            return not_found("gig")
        seller = self.db.users.find_one({"_id": gig["userId"]}, {"username": 1, "rating": 1})
        gig = plain(gig)
        gig["seller"] = plain(seller) if seller else None
        return {"success": True, "gig": gig}

    def search(self, query="", filters=None, page=1, limit=20):
        filters = filters or {}
        spec = {"isActive": True, "deletedAt": None}
        words = [w for w in query.lower().split() if w]
        if words:
            spec["searchTerms"] = {"$all": words}
        if "category" in filters:
            category = self.db.categories.find_one({"slug": filters["category"], "deletedAt": None})
            if category is None:
                return {"success": True, "gigs": [], "total": 0, "page": page, "limit": limit, "pages": 0}
            spec["categoryId"] = category["_id"]
        total = self.db.gigs.count_documents(spec)
        found = self.db.gigs.find(spec, LIST_FIELDS).sort(
            [("rating", -1), ("reviewCount", -1), ("createdAt", -1), ("_id", -1)]).skip((page - 1) * limit).limit(limit)
        return {"success": True, "gigs": plain(list(found)), "total": total, "page": page, "limit": limit,
                "pages": math.ceil(total / limit)}


class OrdersService:
    def __init__(self, db) -> None:
        self.db = db

    def create(self, gig_id, buyer_id, quantity, total_price, options=None):
        gig = self.db.gigs.find_one({"_id": ObjectId(gig_id), "deletedAt": None})
        if gig is None:
            return not_found("gig")
        buyer = self.db.users.find_one({"_id": ObjectId(buyer_id), "deletedAt": None}, {"_id": 1})
        if buyer is None:
            return not_found("buyer")
        unit = gig["price"].to_decimal()
        total = (unit * quantity).quantize(CENT)
        if Decimal(str(total_price)).quantize(CENT) != total:
            return {"success": False, "error": "total_price mismatch", "code": "VALIDATION_ERROR"}
        if self.db.orders.find_one({"gigId": gig["_id"], "buyerId": buyer["_id"], "status": "pending"}, {"_id": 1}):
            return {"success": False, "error": "a pending order exists", "code": "CONFLICT"}
        fee = (total * FEE_PERCENT / 100).quantize(CENT, ROUND_HALF_UP)
        at = datetime.now(UTC)
        doc = {"_id": ObjectId(), "gigId": gig["_id"], "buyerId": buyer["_id"], "sellerId": gig["userId"],
               "quantity": quantity, "unitPrice": Decimal128(unit), "totalPrice": Decimal128(total),
               "platformFee": Decimal128(fee), "sellerAmount": Decimal128(total - fee), "status": "pending",
               "statusHistory": [{"from": None, "to": "pending", "at": at}], "createdAt": at, "updatedAt": at}
        self.db.orders.insert_one(doc)
        return {"success": True, "order_id": str(doc["_id"]), "order": plain(doc), "created": True}


class PaymentsService:
    def __init__(self, db) -> None:
        self.db = db

    def calculate_fees(self, amount):
        total = Decimal(str(amount)).quantize(CENT)
        fee = (total * FEE_PERCENT / 100).quantize(CENT, ROUND_HALF_UP)
        return {"success": True, "total_amount": float(total), "platform_fee": float(fee),
                "platform_fee_percentage": float(FEE_PERCENT), "seller_amount": float(total - fee)}

    def create(self, payment_id, order_id, amount, payment_method):
        order = self.db.orders.find_one({"_id": ObjectId(order_id)})
        if order is None:
            return not_found("order")
        at = datetime.now(UTC)
        doc = {"_id": payment_id, "orderId": order["_id"], "buyerId": order["buyerId"],
               "sellerId": order["sellerId"], "amount": order["totalPrice"], "paymentMethod": payment_method,
               "status": "pending", "statusHistory": [{"from": None, "to": "pending", "at": at}],
               "createdAt": at, "updatedAt": at}
        self.db.payments.insert_one(doc)
        return {"success": True, "payment_id": payment_id, "payment": plain(doc), "created": True}

    def process(self, payment_id, status):
        at = datetime.now(UTC)
        payment = self.db.payments.find_one_and_update(
            {"_id": payment_id, "status": "pending"},
            {"$set": {"status": status, "updatedAt": at},
             "$push": {"statusHistory": {"from": "pending", "to": status, "at": at}}},
            return_document=pymongo.ReturnDocument.AFTER)
        if payment is None:
            return not_found("payment")
        self.db.orders.update_one({"_id": payment["orderId"], "status": "pending"},
                                  {"$set": {"status": "in_progress", "updatedAt": at}})
        return {"success": True, "payment": plain(payment), "order_status": "in_progress"}


class UsersService:
    def __init__(self, db) -> None:
        self.db = db

    def login(self, email, password):
        user = self.db.users.find_one({"email": email.lower(), "deletedAt": None})
        if user is None or not bcrypt.checkpw(password.encode(), user["passwordHash"].encode()):
            return {"success": False, "error": "invalid email or password", "code": "UNAUTHORIZED"}
        now = int(time.time())
        token = jwt.encode({"sub": str(user["_id"]), "role": user["role"], "iat": now, "exp": now + 7 * 86400},
                           SECRET, algorithm="HS256")
        return {"success": True, "token": token, "user": plain(user)}


class Root:
    def __init__(self, client, db) -> None:
        self.client = client
        self.categoriesService = CategoriesService(db)
        self.gigsService = GigsService(db)
        self.ordersService = OrdersService(db)
        self.paymentsService = PaymentsService(db)
        self.usersService = UsersService(db)

    def ping(self):
        self.client.admin.command("ping")
        return {"status": "ok", "message": "RPC Server is running", "mongodb": "connected"}


def main() -> None:
    port, uri, db_name = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    version = sys.argv[4] if len(sys.argv) > 4 else "HTTP/1.1"
    handler = type("Handler", (SimpleXMLRPCRequestHandler,), {"rpc_paths": ("/RPC2", "/"), "protocol_version": version})
    client = pymongo.MongoClient(uri, maxPoolSize=100)
    server = ThreadedServer(("127.0.0.1", port), requestHandler=handler, allow_none=True, logRequests=False)
    server.register_instance(Root(client, client[db_name]), allow_dotted_names=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
