"""``make bench``'s data: categories, sellers and a catalogue made through the daemon's own API, and buyers.

The buyers share one bcrypt hash of ``PASSWORD`` (cost ``BCRYPT_ROUNDS``): they log in and order.
"""

from __future__ import annotations

import random
import xmlrpc.client
from datetime import UTC, datetime

import bcrypt
import pymongo
from bson import ObjectId

PASSWORD = "bench password 1"  # noqa: S105 - throw-away benchmark accounts
BCRYPT_ROUNDS = 10
WORDS = ("logo design brand modern minimal vector illustration website wordpress landing page seo audit "
         "python script automation data analysis video editing youtube shorts podcast mixing voice over "
         "translation spanish french article writing copy product photo retouch mobile app flutter").split()
CATEGORIES = ("graphic-design", "web-development", "writing", "video", "music-audio", "data")


def seed(uri: str, db_name: str, port: int, gigs: int, buyers: int) -> dict:
    """Categories, sellers and gigs through the daemon's API; buyers straight into the database.

    The catalogue goes through ``gigsService.create`` (batched in ``system.multicall``) so that
    every search structure the daemon keeps is built as in production.  Buyers are plain user
    documents with one bcrypt hash (cost ``BCRYPT_ROUNDS``) shared by all: they log in and order.
    """
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2", allow_none=True)
    for slug in CATEGORIES:
        answer = proxy.categoriesService.create(slug.replace("-", " ").title(), slug, f"All about {slug}")
        assert answer["success"], answer
    sellers = []
    for i in range(20):
        answer = proxy.usersService.register(f"seller{i}", f"seller{i}@example.com", PASSWORD, "freelancer")
        assert answer["success"], answer
        sellers.append(answer["user_id"])
    client: pymongo.MongoClient = pymongo.MongoClient(uri, directConnection=True)
    db = client[db_name]
    hashed = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(BCRYPT_ROUNDS)).decode()
    moment = datetime.now(UTC)
    buyer_docs = [{
        "_id": ObjectId(), "username": f"buyer{i}", "usernameLower": f"buyer{i}", "email": f"buyer{i}@example.com",
        "passwordHash": hashed, "role": "client", "isSeller": False, "rating": 0.0, "reviewCount": 0,
        "tokenVersion": 0, "createdAt": moment, "updatedAt": moment, "deletedAt": None,
    } for i in range(buyers)]
    db.users.insert_many(buyer_docs)
    rng = random.Random(11)
    gig_ids: list[tuple[str, str]] = []
    batch = 100
    for start in range(0, gigs, batch):
        calls = []
        for i in range(start, min(gigs, start + batch)):
            words = rng.sample(WORDS, 4)
            price = f"{rng.randint(5, 500)}.{rng.choice(('00', '50', '99'))}"
            calls.append({"methodName": "gigsService.create", "params": [sellers[i % len(sellers)], {
                "title": " ".join(words[:3]).capitalize() + f" #{i}",
                "description": f"I will do {' '.join(words)} for you, fast and with care ({i}).",
                "category": CATEGORIES[i % len(CATEGORIES)], "price": float(price), "deliveryTime": rng.randint(1, 30),
                "tags": words[2:],
            }]})
        for answer in proxy.system.multicall(calls):
            assert isinstance(answer, list) and answer[0]["success"], answer
            gig_ids.append((answer[0]["gig_id"], f"{answer[0]['gig']['price']:.2f}"))
    client.close()
    return {"gigs": gig_ids, "buyers": [str(d["_id"]) for d in buyer_docs],
            "emails": [d["email"] for d in buyer_docs]}

