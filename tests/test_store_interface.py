"""The store helpers that hide what differs between database servers (worknet/store/interface.py).

Each runs against both servers available here: SecantusDB as a replica set
(transactions) and SecantusDB ``--standalone`` (none).  A helper with a form
per server (``findAndModify`` where it is indexed, a read plus a write where it
scans; conditions checked by the server or on the documents read by ``_id``)
is also run in the form a real MongoDB gets, forced through the store's
capability flags: SecantusDB accepts both forms, so both must answer alike.
"""

from __future__ import annotations

import contextlib
import dataclasses

import pytest
import pytest_twisted
from bson import ObjectId
from twisted.internet import defer

from tests.conftest import unique_db_name
from tests.test_store import make_store
from worknet.store.interface import Capabilities


@pytest.fixture(params=["replica-set", "standalone"])
def server(request):
    """``(uri, pymongo client, whether it runs transactions)`` of each server form."""
    if request.param == "standalone":
        server, client = request.getfixturevalue("standalone")
        uri = server.uri
        return uri, client, False
    return request.getfixturevalue("database"), request.getfixturevalue("mongo"), True


@pytest.fixture
def db_name(request) -> str:
    return unique_db_name(request)


@contextlib.asynccontextmanager
async def running(server, db_name, **forced: bool):
    """A running store on ``server``, its capability flags overridden by ``forced``; stopped on the way out."""
    store = make_store(server[0], db_name)
    try:
        await store.wait_ready()
        if forced:
            store.capabilities = dataclasses.replace(store.capabilities, **forced)
        yield store
    finally:
        await store.stopService()


@pytest_twisted.ensureDeferred
async def test_the_capabilities_are_the_servers(server, db_name):
    uri, client, transactions = server
    async with running(server, db_name) as store:
        secantus = "secantusVersion" in client.admin.command("buildInfo")
        assert store.capabilities == Capabilities(
            transactions=transactions, indexed_find_and_modify=not secantus, point_lookups=secantus)
        assert store.supports_transactions is transactions


@pytest_twisted.ensureDeferred
async def test_a_unit_of_work_that_gives_up_leaves_nothing_behind(server, db_name):
    """transaction + undo_outside_transaction: with transactions the abort discards the first write
    and the undo does not run; without them the undo takes it back.  Either way nothing stays."""
    _, client, transactions = server
    undone: list[int] = []
    async with running(server, db_name) as store:
        async def undo() -> None:
            undone.append(1)
            await store["payments"].delete_one({"_id": 1})

        async def steps(session) -> None:
            await store["payments"].insert_one({"_id": 1}, session=session)
            await store.undo_outside_transaction(session, undo)
            raise RuntimeError("the order is no longer payable")

        with pytest.raises(RuntimeError):
            await store.transaction(steps)
        assert client[db_name].payments.count_documents({}) == 0
        assert undone == ([] if transactions else [1])

        async def kept(session) -> str:
            await store["payments"].insert_one({"_id": 2}, session=session)
            return "done"

        assert await store.transaction(kept) == "done"
        assert client[db_name].payments.count_documents({"_id": 2}) == 1


@pytest_twisted.ensureDeferred
async def test_finish_interrupted_repairs_only_where_flows_are_not_atomic(server, db_name):
    _, _, transactions = server
    repaired: list[int] = []
    async with running(server, db_name) as store:
        async def repair() -> None:
            repaired.append(1)

        await store.finish_interrupted(repair)
        assert repaired == ([] if transactions else [1])


FORMS = pytest.mark.parametrize("indexed", [True, False], ids=["findAndModify", "read-then-write"])


@FORMS
@pytest_twisted.ensureDeferred
async def test_delete_and_fetch(server, db_name, indexed):
    _, client, _ = server
    async with running(server, db_name, indexed_find_and_modify=indexed) as store:
        client[db_name].reviews.insert_many([{"_id": 1, "gigId": 7, "rating": 5}, {"_id": 2, "gigId": 8}])
        assert await store.delete_and_fetch("reviews", {"_id": 1, "gigId": 9}) is None  # not that one
        assert await store.delete_and_fetch("reviews", {"_id": 3}) is None
        assert client[db_name].reviews.count_documents({}) == 2
        assert await store.delete_and_fetch("reviews", {"_id": 1, "gigId": 7}, projection={"gigId": 1}) == {
            "_id": 1, "gigId": 7}
        assert await store.delete_and_fetch("reviews", {"_id": 1}) is None  # deleted once only
        assert [doc["_id"] for doc in client[db_name].reviews.find()] == [2]
        with pytest.raises(ValueError):
            await store.delete_and_fetch("reviews", {"gigId": 8})

        # two deletes of one document at the same time: exactly one gets it
        both = await defer.gatherResults([
            defer.ensureDeferred(store.delete_and_fetch("reviews", {"_id": 2})) for _ in range(2)])
        assert sorted(both, key=lambda doc: doc is not None) == [None, {"_id": 2, "gigId": 8}]
        assert client[db_name].reviews.count_documents({}) == 0


LOOKUPS = pytest.mark.parametrize("point_lookups", [True, False], ids=["by-_id-then-checked", "whole-filter"])


@LOOKUPS
@pytest_twisted.ensureDeferred
async def test_find_first_takes_the_filters_in_order(server, db_name, point_lookups):
    _, client, _ = server
    async with running(server, db_name, point_lookups=point_lookups) as store:
        category = ObjectId()
        client[db_name].categories.insert_many([
            {"_id": category, "nameLower": "design", "slug": "design", "deletedAt": None, "isActive": True},
            {"_id": ObjectId(), "nameLower": "hex", "slug": str(category), "deletedAt": None},  # another's id
            {"_id": ObjectId(), "nameLower": "gone", "slug": "gone", "deletedAt": "2026-01-01"},
        ])
        live = {"deletedAt": None}
        by_id, by_slug = {"_id": category, **live}, {"slug": str(category), **live}
        assert await store.find_first("categories", [by_id, by_slug]) == (0, client[db_name].categories.find_one(
            {"_id": category}))
        second = await store.find_first("categories", [by_slug, by_id], projection={"slug": 1})
        assert second is not None and second[0] == 0 and second[1]["slug"] == str(category)
        assert set(second[1]) == {"_id", "slug"}
        assert await store.find_first("categories", [{"_id": ObjectId(), **live}, {"slug": "design"}],
                                      projection={"_id": 1}) == (1, {"_id": category})
        assert await store.find_first("categories", [{"slug": "gone", **live}, {"_id": category, "isActive": False}]) \
            is None
        assert await store.find_first("categories", []) is None


@pytest_twisted.ensureDeferred
async def test_matches_any(server, db_name):
    _, client, _ = server
    async with running(server, db_name) as store:
        buyer, seller, other = ObjectId(), ObjectId(), ObjectId()
        client[db_name].orders.insert_many([
            {"_id": 1, "buyerId": buyer, "sellerId": other, "status": "completed"},
            {"_id": 2, "buyerId": other, "sellerId": seller, "status": "pending"},
        ])
        open_orders = {"status": {"$in": ["pending", "in_progress"]}}

        def sides(user: ObjectId) -> list[dict]:
            return [{"buyerId": user, **open_orders}, {"sellerId": user, **open_orders}]

        assert await store.matches_any("orders", sides(seller))
        assert await store.matches_any("orders", sides(other))
        assert not await store.matches_any("orders", sides(buyer))  # only a completed order
        assert not await store.matches_any("orders", [])


@LOOKUPS
@pytest_twisted.ensureDeferred
async def test_find_by_ids_answers_as_one_in_query(server, db_name, point_lookups):
    """More ids than one chunk, some unknown, some of deleted users: the same documents as one
    ``{_id: {$in: ids}, **query}`` answered by the server."""
    _, client, _ = server
    async with running(server, db_name, point_lookups=point_lookups) as store:
        users = [{"_id": ObjectId(), "username": f"u{i}", "usernameLower": f"u{i}", "email": f"u{i}@example.com",
                  **({"deletedAt": "gone"} if i % 7 == 0 else {})} for i in range(130)]
        users[1]["deletedAt"] = None
        client[db_name].users.insert_many(users)
        ids = [user["_id"] for user in users] + [ObjectId() for _ in range(5)]
        for query in (None, {"deletedAt": None}, {"username": {"$in": ["u1", "u2", "u7"]}}):
            for projection in (None, {"_id": 1}, {"username": 1}, {"deletedAt": 0, "email": 0}):
                expected = list(client[db_name].users.find({"_id": {"$in": ids}, **(query or {})}, projection))
                got = await store.find_by_ids("users", ids, query, projection=projection)
                key = lambda doc: doc["_id"]  # noqa: E731
                assert sorted(got, key=key) == sorted(expected, key=key), (query, projection)
        assert await store.find_by_ids("users", []) == []


@pytest_twisted.ensureDeferred
async def test_aggregate_each_runs_every_pipeline(server, db_name):
    _, client, _ = server
    async with running(server, db_name) as store:
        user = ObjectId()
        client[db_name].orders.insert_many([
            {"_id": 1, "buyerId": user, "sellerId": ObjectId(), "status": "completed"},
            {"_id": 2, "buyerId": user, "sellerId": ObjectId(), "status": "pending"},
            {"_id": 3, "buyerId": ObjectId(), "sellerId": user, "status": "pending"},
        ])
        pipelines = [[{"$match": {field: user}}, {"$group": {"_id": "$status", "n": {"$sum": 1}}},
                      {"$sort": {"_id": 1}}] for field in ("buyerId", "sellerId", "gigId")]
        assert await store.aggregate_each("orders", pipelines) == [
            [{"_id": "completed", "n": 1}, {"_id": "pending", "n": 1}], [{"_id": "pending", "n": 1}], []]
        assert await store.aggregate_each("orders", []) == []
