"""What a call asks of the database must not grow with the data (issue 17, the soak).

Each test builds the history that made a call slower as a marketplace ran for
minutes (a seller with many sales, ...), runs the call once with the
database's profiler recording every command of the test's database, and
checks the commands' shape: no list of ids that grows with the history, no
filter the embedded database can only answer by a full scan.  The profiler
is MongoDB's (``profile`` level 2, ``system.profile``), which SecantusDB
has too.  bench/soak.py measures the same thing as time.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from bson import Decimal128, ObjectId

from tests.money_support import check_invariants, earnings, ledger_sum, market

LONG_IN = 10  # an $in longer than this is a list that grew with the data


@contextmanager
def profiled(db) -> Iterator[list[dict]]:
    """Every command of ``db`` run inside the block (their ``system.profile`` entries), in the list yielded."""
    db.command("profile", 0)
    db.drop_collection("system.profile")
    db.command("profile", 2)
    seen: list[dict] = []
    try:
        yield seen
    finally:
        db.command("profile", 0)
        seen.extend(entry for entry in db["system.profile"].find()
                    if not str(entry.get("ns", "")).endswith(".system.profile"))


def longest_in(value: Any) -> int:
    """The length of the longest ``$in`` list anywhere in ``value``."""
    if isinstance(value, dict):
        own = len(value["$in"]) if isinstance(value.get("$in"), list) else 0
        return max([own, *(longest_in(v) for v in value.values())])
    if isinstance(value, list):
        return max([0, *(longest_in(v) for v in value)])
    return 0


def on(entries: list[dict], collection: str) -> list[dict]:
    return [e for e in entries if str(e.get("ns", "")).endswith(f".{collection}")]


def test_completing_an_order_does_not_send_the_sellers_history(rpc, db):
    """The ledger's guard looked at the seller's last 200 applied entries with an ``$in`` of their ids,
    in every completion's transaction: ~60 ms on SecantusDB, growing with the seller's sales."""
    seller, gig, buyer = market(db, "10.00")
    window = [ObjectId() for _ in range(200)]  # a seller with 200 sales applied before
    db.users.update_one({"_id": ObjectId(seller)}, {"$set": {"ledgerApplied": window}})
    oid = rpc.ordersService.create(gig, buyer, 1, "10.00")["order_id"]
    pid = rpc.paymentsService.create("", oid, "10.00", "stripe")["payment_id"]
    assert rpc.paymentsService.process(pid, "completed")["success"]

    with profiled(db) as entries:
        assert rpc.ordersService.update_status(oid, "completed")["success"]

    ledger = on(entries, "ledger")
    assert ledger, "the completion wrote no ledger entry?"
    assert max(longest_in(e.get("command")) for e in entries) <= LONG_IN, [
        (e.get("op"), e.get("ns"), longest_in(e.get("command"))) for e in entries]
    assert earnings(db, seller) == Decimal("8.00") == ledger_sum(db, seller)
    applied = db.users.find_one({"_id": ObjectId(seller)})["ledgerApplied"]
    assert len(applied) == 200 and applied[-1] == db.ledger.find_one({"key": f"credit:{oid}"})["_id"]


def test_an_entry_a_stopped_attempt_applied_is_marked_by_the_sellers_next_sale(rpc, db):
    """A credit applied to the seller (in the window) but left at ``applied: false`` -- a crash between
    the two steps without transactions -- is marked by the next sale of that seller, before the
    window can slide past it."""
    seller, gig, buyer = market(db, "10.00")
    stray = db.ledger.insert_one({
        "key": f"credit:{ObjectId()}", "kind": "credit", "sellerId": ObjectId(seller), "orderId": ObjectId(),
        "paymentId": None, "amount": Decimal128("8.00"), "applied": False,
    }).inserted_id
    untouched = db.ledger.insert_one({  # not in the window: an attempt still running, not to be marked
        "key": f"credit:{ObjectId()}", "kind": "credit", "sellerId": ObjectId(seller), "orderId": ObjectId(),
        "paymentId": None, "amount": Decimal128("1.00"), "applied": False,
    }).inserted_id
    db.users.update_one({"_id": ObjectId(seller)}, {"$set": {"ledgerApplied": [stray]},
                                                    "$inc": {"totalEarnings": Decimal128("8.00")}})
    oid = rpc.ordersService.create(gig, buyer, 1, "10.00")["order_id"]
    pid = rpc.paymentsService.create("", oid, "10.00", "stripe")["payment_id"]
    assert rpc.paymentsService.process(pid, "completed")["success"]
    assert rpc.ordersService.update_status(oid, "completed")["success"]

    assert db.ledger.find_one({"_id": stray})["applied"] is True
    assert db.ledger.find_one({"_id": untouched})["applied"] is False
    assert earnings(db, seller) == Decimal("16.00")
    db.ledger.delete_one({"_id": untouched})
    check_invariants(db, [seller], only_these_sellers=True)


SCANNING = ("$or", "$and", "$expr")  # a top-level one disables every index on SecantusDB: a full scan


def filters_of(entry: dict) -> list[dict]:
    """The filters a profiled command ran with (find, count, update, delete, an aggregate's first $match)."""
    command = entry.get("command") or {}
    found = [command.get(name) for name in ("filter", "query", "q")]
    found += [u.get("q") for u in command.get("updates", []) + command.get("deletes", []) if isinstance(u, dict)]
    pipeline = command.get("pipeline") or []
    if pipeline and isinstance(pipeline[0], dict):
        found.append(pipeline[0].get("$match"))
    return [f for f in found if isinstance(f, dict)]


def scans(entries: list[dict]) -> list[tuple[str, str, dict]]:
    return [(e.get("op"), e.get("ns"), f) for e in entries for f in filters_of(e) if set(f) & set(SCANNING)]


def test_a_users_analytics_and_deletion_use_an_index_per_side(rpc, db):
    """``$or: [{buyerId}, {sellerId}]`` scanned every order: once per analytics call and per deletion."""
    seller, gig, buyer = market(db, "10.00")
    oid = rpc.ordersService.create(gig, buyer, 1, "10.00")["order_id"]
    pid = rpc.paymentsService.create("", oid, "10.00", "stripe")["payment_id"]
    assert rpc.paymentsService.process(pid, "completed")["success"]
    assert rpc.ordersService.update_status(oid, "completed")["success"]

    with profiled(db) as entries:
        as_seller = rpc.ordersService.get_analytics(seller, "all")["analytics"]
        as_buyer = rpc.ordersService.get_analytics(buyer, "all")["analytics"]
        assert rpc.usersService.delete_user(buyer)["success"]
    assert scans(entries) == []
    assert as_seller["asSeller"]["orders"] == 1 and as_seller["asSeller"]["byStatus"]["completed"] == 1
    assert Decimal(str(as_seller["asSeller"]["earned"])) == Decimal("8.00")
    assert [row["date"] for row in as_seller["asSeller"]["revenueByDay"]] != []
    assert as_seller["asBuyer"]["orders"] == 0 and Decimal(str(as_seller["asBuyer"]["spent"])) == 0
    assert as_buyer["asBuyer"]["orders"] == 1 and Decimal(str(as_buyer["asBuyer"]["spent"])) == Decimal("10.00")
    assert as_buyer["asSeller"]["orders"] == 0


def test_a_user_with_open_orders_on_either_side_is_not_deleted(rpc, db):
    seller, gig, buyer = market(db, "10.00")
    assert rpc.ordersService.create(gig, buyer, 1, "10.00")["success"]
    for user in (buyer, seller):
        refused = rpc.usersService.delete_user(user)
        assert refused["code"] == "INVALID_STATE", refused
        assert db.users.find_one({"_id": ObjectId(user)})["deletedAt"] is None


def test_a_category_named_by_its_id_is_found_without_a_scan(rpc, db):
    """A category id is also a valid slug (24 hex digits): ``$or: [{_id}, {slug}]`` scanned every category."""
    seller, _gig, _buyer = market(db)
    category = rpc.categoriesService.create("Growth tests", "growth-tests", "")["category_id"]
    lookalike = rpc.categoriesService.create("Hex slug", "0123456789abcdef01234567", "")["category_id"]
    gig = {"title": "A logo for your company", "description": "d" * 30, "price": "25.00", "deliveryTime": 3}
    with profiled(db) as entries:
        by_id = rpc.gigsService.create(seller, {**gig, "category": category})
        by_hex_slug = rpc.gigsService.create(seller, {**gig, "category": "0123456789abcdef01234567"})
    assert [(op, ns, f) for op, ns, f in scans(entries) if ns.endswith(".categories")] == []
    assert by_id["gig"]["categoryId"] == category
    assert by_hex_slug["gig"]["categoryId"] == lookalike
    assert rpc.gigsService.create(seller, {**gig, "category": "ffffffffffffffffffffffff"})["code"] == "NOT_FOUND"
