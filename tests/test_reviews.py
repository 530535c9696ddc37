"""reviewsService end to end: the daemon's service tree in process, a real database, xmlrpc.client."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal

import pytest
from bson import ObjectId

from tests.test_gigs import make_category, make_gig, seed_user

MISSING = "0" * 24


@pytest.fixture
def market(rpc, db):
    """A seller with a gig (price 49.99) and three buyers: (seller, gig, [buyers])."""
    seller = seed_user(db, "seller_one")
    make_category(rpc)
    gig = make_gig(rpc, seller, title="Café logo design")
    buyers = [seed_user(db, f"buyer_{i}", role="client") for i in range(3)]
    return seller, gig, buyers


def completed_order(rpc, gig, buyer):
    """An order of ``gig`` by ``buyer`` taken through ordersService to ``completed``."""
    placed = rpc.ordersService.create(gig, buyer, 1, "49.99")
    assert placed["success"], placed
    order = placed["order_id"]
    for status in ("in_progress", "completed"):
        moved = rpc.ordersService.update_status(order, status)
        assert moved["success"], moved
    return order


def stored_gig(db, gig):
    return db.gigs.find_one({"_id": ObjectId(gig)})


def test_create_stores_the_review_and_recomputes_the_gig_rating(rpc, db, market):
    seller, gig, (a, b, _) = market
    rid = str(ObjectId())
    first = rpc.reviewsService.create(rid, gig, 5, {"user_id": a, "comment": "Très bien, Zoë! 東京"})
    assert first["success"] is True and first["created"] is True, first
    assert first["review_id"] == rid and first["gig_rating"] == 5.0 and first["review_count"] == 1
    review = first["review"]
    assert review["id"] == rid and review["gigId"] == gig and review["userId"] == a and review["sellerId"] == seller
    assert review["rating"] == 5 and review["comment"] == "Très bien, Zoë! 東京" and review["orderId"] is None
    assert review["createdAt"].endswith("Z") and "requestHash" not in review
    second = rpc.reviewsService.create("", gig, 2, {"user_id": b})
    assert second["success"] and ObjectId(second["review_id"]) and second["review_id"] != rid
    assert (second["gig_rating"], second["review_count"]) == (3.5, 2)
    gig_doc = stored_gig(db, gig)
    assert (gig_doc["rating"], gig_doc["reviewCount"]) == (3.5, 2)
    fetched = rpc.gigsService.get_by_id(gig)["gig"]
    assert (fetched["rating"], fetched["reviewCount"]) == (3.5, 2)
    stored = db.reviews.find_one({"_id": ObjectId(rid)})
    assert stored["gigId"] == ObjectId(gig) and stored["userId"] == ObjectId(a) and stored["rating"] == 5


def test_the_seller_is_notified_once_per_review(rpc, db, market):
    seller, gig, (a, b, _) = market
    rid = str(ObjectId())
    rpc.reviewsService.create(rid, gig, 4, {"user_id": a})
    notes = list(db.notifications.find({"userId": ObjectId(seller)}))
    assert len(notes) == 1
    note = notes[0]
    assert note["type"] == "review" and note["isRead"] is False and note["link"] == f"/gigs/{gig}"
    assert "4-star" in note["message"] and "Café logo design" in note["message"]
    replay = rpc.reviewsService.create(rid, gig, 4, {"user_id": a})
    assert replay["created"] is False
    assert db.notifications.count_documents({"userId": ObjectId(seller)}) == 1
    assert rpc.notificationsService.get_unread_count(seller)["by_type"]["review"] == 1
    rpc.reviewsService.create("", gig, 3, {"user_id": b})
    assert db.notifications.count_documents({"userId": ObjectId(seller), "type": "review"}) == 2
    assert db.notifications.count_documents({"userId": {"$ne": ObjectId(seller)}}) == 0


def test_a_replay_returns_the_first_result_and_other_content_is_a_conflict(rpc, db, market):
    _, gig, (a, b, _) = market
    rid = str(ObjectId())
    args = (rid, gig, 4, {"user_id": a, "comment": "Good"})
    first = rpc.reviewsService.create(*args)
    again = rpc.reviewsService.create(*args)
    assert again["success"] is True and again["created"] is False
    assert again["review"] == first["review"] and again["review_id"] == rid
    assert (again["gig_rating"], again["review_count"]) == (4.0, 1)
    for changed in ((rid, gig, 5, {"user_id": a, "comment": "Good"}),
                    (rid, gig, 4, {"user_id": a, "comment": "Great"}),
                    (rid, gig, 4, {"user_id": b, "comment": "Good"})):
        conflict = rpc.reviewsService.create(*changed)
        assert conflict["code"] == "CONFLICT", (changed, conflict)
    assert db.reviews.count_documents({}) == 1
    assert db.reviews.find_one({"_id": ObjectId(rid)})["comment"] == "Good"
    assert stored_gig(db, gig)["reviewCount"] == 1


def test_one_review_per_user_and_gig(app, rpc, db, market):
    seller, gig, (a, b, _) = market
    assert rpc.reviewsService.create("", gig, 5, {"user_id": a})["success"]
    twice = rpc.reviewsService.create("", gig, 1, {"user_id": a})
    assert twice["code"] == "CONFLICT" and twice["field"] == "user_id"
    other_gig = make_gig(rpc, seller, title="Another gig entirely")
    assert rpc.reviewsService.create("", other_gig, 1, {"user_id": a})["success"]

    def review(i):
        return app.proxy().reviewsService.create(str(ObjectId()), gig, 1 + i % 5, {"user_id": b})

    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(review, range(10)))
    assert sum(r["success"] for r in results) == 1, results
    assert {r["code"] for r in results if not r["success"]} == {"CONFLICT"}
    assert db.reviews.count_documents({"gigId": ObjectId(gig), "userId": ObjectId(b)}) == 1
    assert stored_gig(db, gig)["reviewCount"] == 2


def test_anonymous_reviews_as_the_original_client_sends_them(rpc, db, market):
    seller, gig, _ = market
    first = rpc.reviewsService.create("", gig, 5)
    second = rpc.reviewsService.create("", gig, 3, None)
    assert first["success"] and second["success"], (first, second)
    assert "userId" not in first["review"] and second["review_count"] == 2 and second["gig_rating"] == 4.0
    assert db.reviews.count_documents({"gigId": ObjectId(gig), "userId": {"$exists": False}}) == 2
    assert db.notifications.count_documents({"userId": ObjectId(seller), "type": "review"}) == 2


def test_order_must_be_a_completed_order_of_that_gig_bought_by_that_user(rpc, db, market):
    seller, gig, (a, b, c) = market
    done = completed_order(rpc, gig, a)
    other_gig = make_gig(rpc, seller, title="Second gig on offer")
    elsewhere = completed_order(rpc, other_gig, b)
    pending = rpc.ordersService.create(gig, c, 1, "49.99")["order_id"]

    def create(order, user=a):
        return rpc.reviewsService.create("", gig, 4, {"user_id": user, "order_id": order})

    assert create(done, user=b)["code"] == "FORBIDDEN"
    mismatch = create(elsewhere, user=b)
    assert mismatch["code"] == "VALIDATION_ERROR" and mismatch["field"] == "order_id"
    assert create(pending, user=c)["code"] == "INVALID_STATE"
    assert create(MISSING)["code"] == "NOT_FOUND"
    assert create("not-an-id")["field"] == "order_id"
    without_user = rpc.reviewsService.create("", gig, 4, {"order_id": done})
    assert without_user["code"] == "VALIDATION_ERROR" and without_user["field"] == "user_id"
    assert db.reviews.count_documents({}) == 0
    good = create(done)
    assert good["success"] and good["review"]["orderId"] == done, good
    in_progress = rpc.ordersService.update_status(pending, "in_progress")
    assert in_progress["success"], in_progress
    assert create(pending, user=c)["code"] == "INVALID_STATE"
    assert db.reviews.count_documents({}) == 1


def test_create_validates_its_arguments(rpc, db, market):
    seller, gig, (a, _, _) = market
    gone_user = seed_user(db, "gone_user", role="client", deleted=True)
    deleted_gig = make_gig(rpc, seller, title="Soon deleted gig")
    assert rpc.gigsService.delete(deleted_gig)["success"]
    validation = [
        (("bad-id", gig, 4, {"user_id": a}), "review_id"),
        (("", "bad", 4, {"user_id": a}), "gig_id"),
        (("", gig, 0, {"user_id": a}), "rating"),
        (("", gig, 6, {"user_id": a}), "rating"),
        (("", gig, 3.5, {"user_id": a}), "rating"),
        (("", gig, "4", {"user_id": a}), "rating"),
        (("", gig, True, {"user_id": a}), "rating"),
        (("", gig, 4, {"user_id": "abc"}), "user_id"),
        (("", gig, 4, {"user_id": a, "comment": "x" * 1001}), "comment"),
        (("", gig, 4, {"user_id": a, "comment": 5}), "comment"),
        (("", gig, 4, {"user_id": a, "rating": 5}), "extra.rating"),
        (("", gig, 4, {"user_id": a, "$set": {"rating": 5}}), "extra"),
        (("", gig, 4, "extra"), "extra"),
    ]
    for args, field in validation:
        result = rpc.reviewsService.create(*args)
        assert (result["code"], result.get("field")) == ("VALIDATION_ERROR", field), (args, result)
    assert rpc.reviewsService.create("", MISSING, 4, {"user_id": a})["code"] == "NOT_FOUND"
    assert rpc.reviewsService.create("", deleted_gig, 4, {"user_id": a})["code"] == "NOT_FOUND"
    assert rpc.reviewsService.create("", gig, 4, {"user_id": MISSING})["code"] == "NOT_FOUND"
    assert rpc.reviewsService.create("", gig, 4, {"user_id": gone_user})["code"] == "NOT_FOUND"
    own = rpc.reviewsService.create("", gig, 5, {"user_id": seller})
    assert own["code"] == "FORBIDDEN" and own["field"] == "user_id"
    assert rpc.reviewsService.create("", gig, 1001 * "x")["code"] == "VALIDATION_ERROR"
    assert db.reviews.count_documents({}) == 0
    assert db.notifications.count_documents({}) == 0
    assert stored_gig(db, gig)["reviewCount"] == 0


def test_update_changes_rating_and_comment_and_recomputes(rpc, db, market):
    _, gig, (a, b, _) = market
    rid = rpc.reviewsService.create("", gig, 5, {"user_id": a, "comment": "Great"})["review_id"]
    rpc.reviewsService.create("", gig, 4, {"user_id": b})
    updated = rpc.reviewsService.update(rid, {"rating": 1, "comment": "Changed my mind"})
    assert updated["success"], updated
    assert updated["review"]["rating"] == 1 and updated["review"]["comment"] == "Changed my mind"
    assert updated["review"]["updatedAt"] >= updated["review"]["createdAt"]
    assert (updated["gig_rating"], updated["review_count"]) == (2.5, 2)
    assert (stored_gig(db, gig)["rating"], stored_gig(db, gig)["reviewCount"]) == (2.5, 2)
    comment_only = rpc.reviewsService.update(rid, {"comment": ""})
    assert comment_only["review"]["comment"] == "" and comment_only["gig_rating"] == 2.5
    for bad in ({}, {"rating": 0}, {"rating": 2.5}, {"rating": "5"}, {"comment": "x" * 1001},
                {"userId": b}, {"gigId": MISSING}, {"$set": {"rating": 5}}, "rating"):
        assert rpc.reviewsService.update(rid, bad)["code"] == "VALIDATION_ERROR", bad
    assert rpc.reviewsService.update(MISSING, {"rating": 3})["code"] == "NOT_FOUND"
    assert rpc.reviewsService.update("zz", {"rating": 3})["field"] == "review_id"
    assert db.reviews.find_one({"_id": ObjectId(rid)})["rating"] == 1


def test_delete_removes_the_review_and_recomputes(rpc, db, market):
    _, gig, (a, b, _) = market
    ra = rpc.reviewsService.create("", gig, 5, {"user_id": a})["review_id"]
    rb = rpc.reviewsService.create("", gig, 2, {"user_id": b})["review_id"]
    assert rpc.reviewsService.delete(ra) == {"success": True, "deleted": True, "gig_rating": 2.0, "review_count": 1}
    assert db.reviews.count_documents({"_id": ObjectId(ra)}) == 0
    assert rpc.reviewsService.delete(ra)["code"] == "NOT_FOUND"
    last = rpc.reviewsService.delete(rb)
    assert (last["gig_rating"], last["review_count"]) == (0.0, 0)
    assert (stored_gig(db, gig)["rating"], stored_gig(db, gig)["reviewCount"]) == (0, 0)
    # the review is gone for good: the user may review the gig again
    again = rpc.reviewsService.create("", gig, 3, {"user_id": a})
    assert again["success"] and again["review_count"] == 1
    assert rpc.reviewsService.delete("nope")["code"] == "VALIDATION_ERROR"
    assert rpc.reviewsService.delete(MISSING)["code"] == "NOT_FOUND"


def test_calculate_rating_gives_average_count_and_distribution(rpc, db, market):
    seller, gig, (a, b, c) = market
    empty = rpc.reviewsService.calculate_rating(gig)
    assert empty == {"success": True, "rating": 0, "count": 0,
                     "distribution": {"1": 0, "2": 0, "3": 0, "4": 0, "5": 0}}
    for user, stars in ((a, 5), (b, 4), (c, 4)):
        rpc.reviewsService.create("", gig, stars, {"user_id": user})
    rated = rpc.reviewsService.calculateRating(gig)
    assert rated == {"success": True, "rating": 4.33, "count": 3,
                     "distribution": {"1": 0, "2": 0, "3": 0, "4": 2, "5": 1}}
    rpc.reviewsService.create("", gig, 1)  # anonymous: 14 / 4 = 3.5
    assert rpc.reviewsService.calculate_rating(gig)["rating"] == 3.5
    other = make_gig(rpc, seller, title="A gig without reviews")
    assert rpc.reviewsService.calculate_rating(other)["count"] == 0
    assert rpc.reviewsService.calculate_rating(MISSING)["code"] == "NOT_FOUND"
    assert rpc.reviewsService.calculate_rating("x")["code"] == "VALIDATION_ERROR"


def test_concurrent_reviews_leave_the_exact_rating(app, rpc, db, market):
    _, gig, _ = market
    users = [seed_user(db, f"rater_{i}", role="client") for i in range(24)]
    rng = random.Random(11)
    stars = [rng.randint(1, 5) for _ in users]

    def review(pair):
        user, value = pair
        return app.proxy().reviewsService.create("", gig, value, {"user_id": user})

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(review, zip(users, stars, strict=True)))
    assert all(r["success"] for r in results), results
    gig_doc = stored_gig(db, gig)
    assert gig_doc["reviewCount"] == 24
    assert gig_doc["rating"] == pytest.approx(sum(stars) / 24, abs=1e-12)
    assert rpc.reviewsService.calculate_rating(gig)["count"] == 24


def test_methods_answer_under_their_camel_case_names(rpc, market):
    methods = set(rpc.system.listMethods())
    assert {"reviewsService.calculateRating", "reviewsService.calculate_rating",
            "gigsService.updateRating", "gigsService.getByUser"} <= methods
    assert "average" in rpc.system.methodHelp("reviewsService.calculateRating")


# -- the seller's rating (users.rating / reviewCount) ------------------------------------


def stored_user(db, user):
    return db.users.find_one({"_id": ObjectId(user)})


def test_the_seller_rating_follows_the_reviews_of_all_the_sellers_gigs(rpc, db, market):
    seller, gig, (a, b, c) = market
    other_gig = make_gig(rpc, seller, title="Second gig of the seller")
    assert rpc.gigsService.get_by_id(gig)["gig"]["seller"]["rating"] == 0
    ra = rpc.reviewsService.create("", gig, 5, {"user_id": a})["review_id"]
    rpc.reviewsService.create("", gig, 4, {"user_id": b})
    rc = rpc.reviewsService.create("", other_gig, 2, {"user_id": c})["review_id"]
    rpc.reviewsService.create("", other_gig, 4)  # anonymous: counts too (15 / 4 = 3.75)
    assert (stored_user(db, seller)["rating"], stored_user(db, seller)["reviewCount"]) == (3.75, 4)
    for g in (gig, other_gig):
        assert rpc.gigsService.get_by_id(g)["gig"]["seller"] == {"id": seller, "username": "seller_one", "rating": 3.75}
    user = rpc.usersService.get_by_id(seller)["user"]
    assert (user["rating"], user["reviewCount"]) == (3.75, 4) and "ratingSeq" not in user
    assert rpc.reviewsService.update(rc, {"rating": 5})["success"]  # 18 / 4 = 4.5
    assert (stored_user(db, seller)["rating"], stored_user(db, seller)["reviewCount"]) == (4.5, 4)
    assert rpc.reviewsService.update(rc, {"comment": "only the comment"})["success"]
    assert stored_user(db, seller)["rating"] == 4.5
    assert rpc.reviewsService.delete(ra)["success"]  # 13 / 3 = 4.333...
    assert (stored_user(db, seller)["rating"], stored_user(db, seller)["reviewCount"]) == (4.33, 3)
    assert rpc.usersService.get_stats(seller)["stats"]["averageRating"] == 4.33
    # the buyers' own ratings are not touched by reviews they write
    assert stored_user(db, a)["rating"] == 0.0 and stored_user(db, a)["reviewCount"] == 0


SELLER_ROUNDS = 20
BURST = 10  # concurrent creates per round, plus one update and one delete


def test_concurrent_reviews_of_one_seller_leave_the_exact_seller_rating(app, make_app, db):
    """Reviews, updates and deletes of two gigs of one seller, all at once through two daemons, 20 fresh sellers.

    Each recomputation reads the reviews at some moment; without an order between
    them, one that read early can write last and leave a stale rating.
    """
    other = make_app(db_name=app.db_name)
    rpc = app.proxy()
    make_category(rpc)
    rng = random.Random(7)
    stale = []
    for round_no in range(SELLER_ROUNDS):
        seller = seed_user(db, f"race_seller_{round_no}")
        gigs = [make_gig(rpc, seller, title=f"Race gig {round_no} {k}") for k in range(2)]
        buyers = [seed_user(db, f"race_buyer_{round_no}_{i}", role="client") for i in range(BURST + 2)]
        # two reviews exist already: one is re-rated and one deleted during the burst
        keep = rpc.reviewsService.create("", gigs[0], 1, {"user_id": buyers[0]})["review_id"]
        drop = rpc.reviewsService.create("", gigs[1], 1, {"user_id": buyers[1]})["review_id"]
        calls = [("create", gigs[i % 2], rng.randint(1, 5), buyers[i]) for i in range(2, BURST + 2)]
        calls += [("update", keep, rng.randint(1, 5), None), ("delete", drop, None, None)]
        rng.shuffle(calls)

        def run(indexed):
            i, (kind, target, stars, buyer) = indexed
            proxy = (app if i % 2 else other).proxy()
            if kind == "create":
                return proxy.reviewsService.create("", target, stars, {"user_id": buyer})
            if kind == "update":
                return proxy.reviewsService.update(target, {"rating": stars})
            return proxy.reviewsService.delete(target)

        with ThreadPoolExecutor(max_workers=len(calls)) as pool:
            results = list(pool.map(run, enumerate(calls)))
        assert all(r["success"] for r in results), results
        ratings = [r["rating"] for r in db.reviews.find({"sellerId": ObjectId(seller)})]
        expected = (float((Decimal(sum(ratings)) / len(ratings)).quantize(Decimal("0.01"), ROUND_HALF_UP)), len(ratings))
        doc = stored_user(db, seller)
        if (doc.get("rating"), doc.get("reviewCount")) != expected:
            stale.append((round_no, doc.get("rating"), doc.get("reviewCount"), expected))
            continue
        assert rpc.gigsService.get_by_id(gigs[0])["gig"]["seller"]["rating"] == expected[0]
        assert rpc.usersService.get_stats(seller)["stats"]["averageRating"] == expected[0]
    assert not stale, f"{len(stale)} of {SELLER_ROUNDS} rounds left a stale seller rating: {stale}"


def test_a_replay_answers_the_first_review_before_checking_the_gig_user_or_order_again(rpc, db, market):
    _, gig, (a, _, _) = market
    order = completed_order(rpc, gig, a)
    rid = str(ObjectId())
    args = (rid, gig, 5, {"user_id": a, "order_id": order, "comment": "Fine"})
    first = rpc.reviewsService.create(*args)
    assert first["success"] is True, first
    # the gig and the author are deleted since: a new review is refused, the retried one is the first
    now = datetime.now(UTC)
    db.gigs.update_one({"_id": ObjectId(gig)}, {"$set": {"deletedAt": now, "isActive": False}})
    db.users.update_one({"_id": ObjectId(a)}, {"$set": {"deletedAt": now}})
    assert rpc.reviewsService.create("", gig, 5, {"user_id": a})["code"] == "NOT_FOUND"
    again = rpc.reviewsService.create(*args)
    assert again["success"] is True and again["created"] is False, again
    assert again["review"] == first["review"]
    assert rpc.reviewsService.create(rid, gig, 4, {"user_id": a, "order_id": order, "comment": "Fine"})["code"] \
        == "CONFLICT"
    assert db.reviews.count_documents({}) == 1
    assert db.notifications.count_documents({"type": "review"}) == 1
