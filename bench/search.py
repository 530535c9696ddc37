"""Catalogue search under load: gigsService.search and get_by_id vs the same queries in pymongo.

    .venv/bin/python -m bench.search [--gigs 100000] [--duration 20] [--concurrency 32]
        [--pool-size 10] [--sellers 2000]

Starts a throw-away SecantusDB and a daemon, creates the daemon's indexes and
bulk-inserts the catalogue straight into the database with pymongo
``insert_many`` (progress bar).  The gig documents are the ones
``gigsService.create`` writes, field for field: same names and types,
Decimal128 prices, and ``searchTerms`` computed by
``worknet.search.search_terms`` -- the daemon's own function -- from title,
description and tags.  Titles draw words from a vocabulary of about 200 with
Zipf-like frequencies (a few words are in many gigs, most in few), accented
words included.

Then, for each of ``gigsService.get_by_id`` (random gigs) and
``gigsService.search`` (a 2-word query of middling-frequency words, a price
range and a sort -- ``price_asc``, ``rating`` or ``newest`` -- page 1 of 20),
the daemon next to the same work sent straight to the database with pymongo
(the search's aggregation built by ``worknet.services.gigs.search_pipeline``,
the function the daemon uses; the two ``find_one`` of ``get_by_id``, gig then
seller):

* one client: the service time without queueing, so the difference of the
  medians is the daemon's own share (the searches: the same queries, in the
  same order, on both sides);
* 32 concurrent keep-alive clients (threads for pymongo) for 20 s.

Every row ends when its calls have answered, so none leaves the database busy
for the next.  The ``explain`` of one search (winning plan, keys and documents
examined) is printed before the load.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pymongo
from bson import Decimal128, ObjectId
from tqdm import tqdm

from bench.loadgen import HEADER, Result, Workspace, call_body, create_indexes, direct_load, plan_summary, run_load
from worknet.search import search_terms, words
from worknet.services.gigs import SORTS, search_filter, search_pipeline

BATCH = 2000
CATEGORIES = ["graphic-design", "writing", "video-editing", "translation", "marketing",
              "programming", "music-audio", "photography", "business", "data"]
# Marketplace words first (the frequent ones), then a long tail.
VOCABULARY = (
    "logo design website wordpress seo video editing translation writing article blog social media "
    "marketing illustration animation voice over music mixing photo retouching resume café résumé "
    "branding packaging flyer poster banner icon app mobile android ios python script data analysis "
    "excel dashboard report podcast subtitle français español deutsch übersetzung traducción "
    "landing page shopify ecommerce product description copywriting newsletter email campaign "
    "youtube thumbnail intro outro 3d render model character portrait cartoon anime caricature "
    "tattoo font typography brochure menu restaurant wedding invitation card business presentation "
    "pitch deck infographic chart diagram architecture floor plan interior exterior furniture "
    "fashion jewelry cosmetics fitness yoga nutrition recipe cookbook ebook cover kindle novel poem "
    "lyrics song jingle beat guitar piano drums orchestra sound effect noise removal mastering "
    "crème brûlée naïve façade piñata zoë straße garçon château fiancé déjà soirée "
    "minimalist vintage retro modern elegant luxury playful bold simple clean professional creative "
    "unique custom fast express premium budget detailed quality original handmade organic natural "
    "game unity unreal discord bot telegram chatbot api integration database sql automation scraper "
    "crypto nft blockchain trading forex stock finance accounting tax legal contract"
).split()
QUERY_RANKS = (8, 60)  # query words are drawn from this band of the frequency ranking
PRICES = [Decimal(p) for p in ("5", "10", "15", "20", "25", "30", "40", "50", "75", "100", "150", "250", "500")]


def weights(n: int) -> list[float]:
    return [1 / (rank + 1) ** 0.9 for rank in range(n)]


def generate(db: Any, gigs: int, sellers: int, rng: random.Random) -> tuple[list[ObjectId], list[ObjectId]]:
    """Sellers, categories and gigs, as the daemon stores them."""
    epoch = datetime(2026, 1, 1, tzinfo=UTC)
    seller_ids = [ObjectId() for _ in range(sellers)]
    db.users.insert_many([
        {"_id": _id, "username": f"seller{i}", "usernameLower": f"seller{i}", "email": f"seller{i}@example.com",
         "passwordHash": "x", "role": "freelancer", "isSeller": True, "rating": round(rng.uniform(3, 5), 2),
         "reviewCount": 0, "totalEarnings": Decimal128("0.00"), "tokenVersion": 0,
         "createdAt": epoch, "updatedAt": epoch, "deletedAt": None}
        for i, _id in enumerate(seller_ids)
    ])
    categories = []
    for slug in CATEGORIES:
        _id = db.categories.insert_one({
            "name": slug.replace("-", " ").title(), "nameLower": slug.replace("-", " "), "slug": slug,
            "description": "", "icon": "", "image": "", "isActive": True, "createdAt": epoch, "updatedAt": epoch,
        }).inserted_id
        categories.append((_id, slug))
    w = weights(len(VOCABULARY))
    gig_ids: list[ObjectId] = []
    bar = tqdm(total=gigs, desc="gigs", unit="gig", unit_scale=True)
    while len(gig_ids) < gigs:
        docs = []
        for _ in range(min(BATCH, gigs - len(gig_ids))):
            title = " ".join(rng.choices(VOCABULARY, w, k=rng.randint(3, 7)))
            description = ("I will deliver " + " ".join(rng.choices(VOCABULARY, w, k=rng.randint(8, 25)))
                           + ", with care and on time.")
            tags = list(dict.fromkeys(rng.choices(VOCABULARY, w, k=rng.randint(0, 5))))
            at = epoch + timedelta(seconds=len(gig_ids) + len(docs))
            category_id, slug = rng.choice(categories)
            reviews = rng.choice([0, 0, 1, 3, 10, 40])
            doc = {
                "_id": ObjectId(), "userId": rng.choice(seller_ids), "title": title[:120],
                "description": description[:5000], "categoryId": category_id, "category": slug,
                "price": Decimal128(rng.choice(PRICES) + Decimal(rng.choice(["0", "0.99", "0.50"]))),
                "deliveryTime": rng.randint(1, 30), "revisionNumber": rng.randint(0, 3), "images": [],
                "features": [], "tags": tags, "rating": round(rng.uniform(1, 5), 4) if reviews else 0.0,
                "reviewCount": reviews, "isActive": rng.random() > 0.03, "createdAt": at, "updatedAt": at,
                "deletedAt": None,
            }
            doc["searchTerms"] = search_terms(doc["title"], doc["description"], doc["tags"])
            docs.append(doc)
        db.gigs.insert_many(docs, ordered=False)
        gig_ids += [d["_id"] for d in docs]
        bar.update(len(docs))
    bar.close()
    return gig_ids, seller_ids


def queries(rng: random.Random, n: int) -> list[tuple[str, dict]]:
    """``n`` searches: two words from the middle of the frequency ranking, a price range, a sort."""
    band = VOCABULARY[QUERY_RANKS[0]:QUERY_RANKS[1]]
    out = []
    for _ in range(n):
        low = rng.choice([5, 10, 20, 30])
        out.append((" ".join(rng.sample(band, 2)),
                    {"min_price": low, "max_price": low * rng.choice([5, 10, 20]),
                     "sort": rng.choice(["price_asc", "rating", "newest"])}))
    return out


def direct_pipeline(query: str, filters: dict) -> list[dict]:
    """The aggregation the daemon sends for ``gigsService.search(query, filters, 1, 20)``."""
    terms = words(query)
    options = {k: Decimal(v) if k.endswith("_price") else v for k, v in filters.items()}
    return search_pipeline(terms, search_filter(terms, options), SORTS[filters["sort"]], 1, 20)


def show_plan(db: Any, query: str, filters: dict) -> None:
    pipeline = direct_pipeline(query, filters)
    explained = db.command("explain", {"aggregate": "gigs", "pipeline": pipeline, "cursor": {}},
                           verbosity="executionStats")
    result = list(db.gigs.aggregate(pipeline))[0]
    total = result["total"][0]["n"] if result["total"] else 0
    pivot = pipeline[0]["$match"]["searchTerms"]
    with_pivot = db.gigs.count_documents({"searchTerms": pivot})
    print(f"\nsearch plan for {query!r} {filters}:")
    print(f"  first $match {{searchTerms: {pivot!r}}}: {plan_summary(explained)}")
    print(f"  gigs with {pivot!r}: {with_pivot}; matching the whole filter: {total}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gigs", type=int, default=100_000)
    parser.add_argument("--sellers", type=int, default=2_000)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pool-size", type=int, default=10, help="the daemon's MONGODB_POOL_SIZE")
    parser.add_argument("--seed", type=int, default=2026)
    parser.add_argument("--serial-searches", type=int, default=20, help="searches in the one-client rows")
    args = parser.parse_args()
    args.gigs = max(100, min(args.gigs, 1_000_000))
    args.duration = min(args.duration, 120.0)
    rng = random.Random(args.seed)

    with Workspace("bench-search") as workspace:
        uri = workspace.uri
        db_name = "bench_search"
        client: pymongo.MongoClient = pymongo.MongoClient(uri, directConnection=True)
        db = client[db_name]
        create_indexes(db)
        began = time.monotonic()
        gig_ids, seller_ids = generate(db, args.gigs, args.sellers, rng)
        took = time.monotonic() - began
        print(f"generated {len(gig_ids)} gigs of {len(seller_ids)} sellers in {took:.0f} s "
              f"({len(gig_ids) / took:.0f} gigs/s)")
        searches = queries(rng, 500)
        show_plan(db, *searches[0])

        # the daemon waits for the database as long as pymongo does (no UNAVAILABLE cut-off)
        port = workspace.daemon(db_name, MONGODB_POOL_SIZE=str(args.pool_size), DB_TIMEOUT_SECONDS="120")
        search_bodies = [call_body("gigsService.search", q, f, 1, 20) for q, f in searches]
        id_bodies = [call_body("gigsService.get_by_id", str(rng.choice(gig_ids))) for _ in range(5000)]
        run_load(port, id_bodies, args.concurrency, 2.0)  # warm-up
        pipelines = [direct_pipeline(q, f) for q, f in searches]

        def direct_search(database: Any, r: random.Random) -> None:
            list(database.gigs.aggregate(r.choice(pipelines)))

        def direct_get(database: Any, r: random.Random) -> None:
            gig = database.gigs.find_one({"_id": r.choice(gig_ids), "deletedAt": None},
                                         {"searchTerms": 0, "ratingSeq": 0})
            database.users.find_one({"_id": gig["userId"], "deletedAt": None}, {"username": 1, "rating": 1})

        def direct_searches_in_order(count: int) -> Result:
            """The first ``count`` searches one after another, as the one-client daemon row sends them."""
            result = Result()
            began = time.perf_counter()
            for pipeline in pipelines[:count]:
                started = time.perf_counter()
                list(db.gigs.aggregate(pipeline))
                result.latencies_ms.append((time.perf_counter() - started) * 1000)
                result.count += 1
            result.elapsed = time.perf_counter() - began
            return result

        # one client first (the service time without queueing: the daemon's own share is the
        # difference of the medians), then 32: every row ends when its calls have answered,
        # so none leaves the database busy for the next one
        serial = min(args.duration, 10.0)
        searches_in_order = min(args.serial_searches, len(pipelines))
        direct_searches_in_order(searches_in_order)  # untimed: both sides then find the same documents cached
        rows = [
            ("daemon get_by_id, 1 client", run_load(port, id_bodies, 1, serial)),
            ("pymongo get_by_id (gig + seller), 1 thread", direct_load(uri, db_name, 1, serial, direct_get)),
            ("daemon search, 1 client, same queries", run_load(port, search_bodies, 1, 600.0, searches_in_order)),
            ("pymongo search aggregate, same queries", direct_searches_in_order(searches_in_order)),
            (f"daemon get_by_id (pool {args.pool_size})", run_load(port, id_bodies, args.concurrency, args.duration)),
            ("pymongo get_by_id (gig + seller)", direct_load(uri, db_name, args.concurrency, args.duration, direct_get)),
            (f"daemon search (pool {args.pool_size})", run_load(port, search_bodies, args.concurrency, args.duration)),
            ("pymongo search aggregate", direct_load(uri, db_name, args.concurrency, args.duration, direct_search)),
        ]
        print(f"\nrows 1-4: one client ({serial:.0f} s; searches: the same {searches_in_order} queries in order); "
              f"rows 5-8: {args.concurrency} concurrent clients for {args.duration:.0f} s; {len(gig_ids)} gigs:")
        print(HEADER)
        for name, result in rows:
            print(result.row(name))
        pairs = (("get_by_id, 1 client", rows[0][1], rows[1][1]), ("search, 1 client", rows[2][1], rows[3][1]),
                 (f"get_by_id, {args.concurrency} clients", rows[4][1], rows[5][1]),
                 (f"search, {args.concurrency} clients", rows[6][1], rows[7][1]))
        for label, daemon, direct in pairs:
            print(f"{label}: daemon adds {daemon.p50_ms - direct.p50_ms:+.2f} ms to the median, "
                  f"{daemon.rps / direct.rps if direct.rps else float('nan'):.2f}x the direct requests/s")


if __name__ == "__main__":
    main()
