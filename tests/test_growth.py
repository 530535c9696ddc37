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
