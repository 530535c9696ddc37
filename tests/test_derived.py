"""Values the daemon derives from other documents, when another writer changes the source.

The database is shared with the Node backend, operators in mongosh and migrations
(docs/DATA_MODEL.md, "Derived values and other writers").  Each test changes a
source with pymongo beside a running daemon, as such a writer would, and shows
the call that repairs the derived value.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from bson import Decimal128, ObjectId

from tests.money_support import dec, earnings, ledger_sum
from tests.test_gigs import make_category, make_gig, seed_user
from tests.test_payments import paid_order


@pytest.fixture
def market(rpc, db):
    """A seller with two gigs and three buyers: (seller, [gig_a, gig_b], [buyers])."""
    seller = seed_user(db, "seller_one")
    make_category(rpc)
    gigs = [make_gig(rpc, seller, title="Café logo design"), make_gig(rpc, seller, title="Business card design")]
    buyers = [seed_user(db, f"buyer_{i}", role="client") for i in range(3)]
    return seller, gigs, buyers


def node_review(db, gig, user, rating):
    """A review as the Node backend's model writes it: no ``sellerId``, no ``requestHash``."""
    moment = datetime.now(UTC)
    _id = ObjectId()
    db.reviews.insert_one({"_id": _id, "gigId": ObjectId(gig), "userId": ObjectId(user), "rating": rating,
                           "comment": "written elsewhere", "createdAt": moment, "updatedAt": moment})
    return _id


def figures(db, collection, _id):
    doc = db[collection].find_one({"_id": ObjectId(_id)}, projection={"rating": 1, "reviewCount": 1})
    return doc.get("rating"), doc.get("reviewCount")


def test_update_rating_nil_repairs_the_gig_and_its_seller_after_another_writers_review(rpc, db, market):
    seller, (gig, _other), (a, b, _) = market
    assert rpc.reviewsService.create("", gig, 5, {"user_id": a})["success"]
    written = node_review(db, gig, b, 1)
    # the source changed behind the daemon's back: nothing derived moved yet
    assert figures(db, "gigs", gig) == (5.0, 1)
    assert figures(db, "users", seller) == (5.0, 1)

    repaired = rpc.gigsService.update_rating(gig, None)
    assert repaired == {"success": True, "rating": 3.0, "reviewCount": 2}
    assert figures(db, "gigs", gig) == (3.0, 2)
    assert figures(db, "users", seller) == (3.0, 2)
    assert db.reviews.find_one({"_id": written})["sellerId"] == ObjectId(seller)
    assert rpc.gigsService.get_by_id(gig)["gig"]["seller"]["rating"] == 3.0
    stats = rpc.usersService.get_stats(seller)["stats"]
    assert (stats["totalReviews"], stats["averageRating"]) == (2, 3.0)


def test_another_writers_review_counts_for_the_seller_at_the_gigs_next_review(rpc, db, market):
    seller, (gig, _other), (a, b, _) = market
    node_review(db, gig, a, 2)
    answer = rpc.reviewsService.create("", gig, 5, {"user_id": b})
    assert (answer["gig_rating"], answer["review_count"]) == (3.5, 2)
    assert figures(db, "users", seller) == (3.5, 2)
    assert db.reviews.count_documents({"sellerId": ObjectId(seller)}) == 2


def test_an_operators_edit_of_the_seller_rating_is_undone_by_the_next_recomputation(rpc, db, market):
    seller, (gig_a, gig_b), (a, b, _) = market
    rpc.reviewsService.create("", gig_a, 4, {"user_id": a})
    db.users.update_one({"_id": ObjectId(seller)}, {"$set": {"rating": 1.0, "reviewCount": 99}})
    assert rpc.gigsService.get_by_id(gig_a)["gig"]["seller"]["rating"] == 1.0
    assert rpc.gigsService.update_rating(gig_b, None) == {"success": True, "rating": 0.0, "reviewCount": 0}
    assert figures(db, "users", seller) == (4.0, 1)
    # a review deleted in mongosh: the gig and the seller follow at the next recomputation
    db.reviews.delete_many({"gigId": ObjectId(gig_a)})
    assert rpc.gigsService.update_rating(gig_a, None)["reviewCount"] == 0
    assert figures(db, "gigs", gig_a) == (0.0, 0)
    assert figures(db, "users", seller) == (0.0, 0)


def test_a_gig_moved_to_another_seller_takes_its_reviews_along(rpc, db, market):
    seller, (gig, _other), (a, b, buyer_c) = market
    rpc.reviewsService.create("", gig, 5, {"user_id": a})
    rpc.reviewsService.create("", gig, 3, {"user_id": b})
    heir = seed_user(db, "seller_two")
    db.gigs.update_one({"_id": ObjectId(gig)}, {"$set": {"userId": ObjectId(heir)}})  # a migration
    assert figures(db, "users", seller) == (4.0, 2)

    assert rpc.gigsService.update_rating(gig, None)["reviewCount"] == 2
    assert figures(db, "users", heir) == (4.0, 2)
    assert figures(db, "users", seller) == (0.0, 0)
    assert db.reviews.count_documents({"sellerId": ObjectId(heir)}) == 2


def earnings_from_the_ledger(db, seller):
    """docs/DATA_MODEL.md's check and repair of ``totalEarnings`` (mongosh there), step by step:
    ``(user as read, the ledger's figure, the repair's conditional update)``."""
    _id = ObjectId(seller)
    user = db.users.find_one({"_id": _id}, {"ledgerApplied": 1, "totalEarnings": 1})
    done = user.get("ledgerApplied") or []
    rows = list(db.ledger.aggregate([
        {"$match": {"sellerId": _id}},
        {"$match": {"$or": [{"applied": True}, {"_id": {"$in": done}}]}},
        {"$group": {"_id": None, "total": {"$sum": {"$cond": [
            {"$eq": ["$kind", "debit"]}, {"$subtract": [Decimal128("0"), "$amount"]}, "$amount"]}}}},
    ]))
    total = rows[0]["total"] if rows else Decimal128("0.00")

    def repair():
        window = user["ledgerApplied"] if user.get("ledgerApplied") is not None else {"$exists": False}
        return db.users.update_one({"_id": _id, "ledgerApplied": window}, {"$set": {"totalEarnings": total}})

    return user, total, repair


def test_the_documented_earnings_repair_restores_the_ledgers_figure(rpc, db):
    seller, oid, pid = paid_order(rpc, db, "33.33")
    assert rpc.ordersService.update_status(oid, "completed")["success"]
    assert rpc.paymentsService.refund(pid, 10)["success"]
    owed = ledger_sum(db, seller)
    assert earnings(db, seller) == owed and owed > 0
    db.users.update_one({"_id": ObjectId(seller)}, {"$set": {"totalEarnings": Decimal128("999.99")}})  # mongosh
    assert dec(rpc.usersService.get_stats(seller)["stats"]["totalEarnings"]) == Decimal("999.99")

    user, total, repair = earnings_from_the_ledger(db, seller)
    assert dec(user["totalEarnings"]) == Decimal("999.99") and dec(total) == owed
    assert repair().matched_count == 1
    assert earnings(db, seller) == owed
    assert dec(rpc.usersService.get_stats(seller)["stats"]["totalEarnings"]) == owed

    # an entry applied by an attempt that stopped before marking it (still applied: false, its id in
    # the seller's window) is counted
    entry = db.ledger.find_one({"sellerId": ObjectId(seller), "kind": "credit"})
    db.ledger.update_one({"_id": entry["_id"]}, {"$set": {"applied": False}})
    assert dec(earnings_from_the_ledger(db, seller)[1]) == owed


def test_the_earnings_repair_writes_nothing_when_a_sale_came_between_its_reads(rpc, db):
    seller, oid, _pid = paid_order(rpc, db, "20.00")
    db.users.update_one({"_id": ObjectId(seller)}, {"$set": {"totalEarnings": Decimal128("5.00")}})
    _user, total, repair = earnings_from_the_ledger(db, seller)
    assert dec(total) == 0
    assert rpc.ordersService.update_status(oid, "completed")["success"]  # credits 16.00 on 5.00
    assert repair().matched_count == 0  # the window changed: the figure read is out of date
    assert earnings(db, seller) == Decimal("21.00")
    _user, total, repair = earnings_from_the_ledger(db, seller)  # run again
    assert repair().matched_count == 1
    assert earnings(db, seller) == Decimal("16.00") == ledger_sum(db, seller)
