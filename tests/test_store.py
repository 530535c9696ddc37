"""MongoStore in-process (pytest-twisted), against a real SecantusDB: readiness and transactions."""

from __future__ import annotations

import dataclasses

import pymongo
import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from tests.conftest import Database, unique_db_name
from worknet.config import load_settings
from worknet.store.indexes import INDEXES
from worknet.store.pool import MongoStore


@pytest.fixture
def db_name(request) -> str:
    return unique_db_name(request)


def make_store(uri: str, db_name: str) -> MongoStore:
    settings = load_settings(environ={"NODE_ENV": "development", "DB_NAME": db_name, "DB_TIMEOUT_SECONDS": "3"})
    store = MongoStore(settings, lambda: uri, reactor)
    store.startService()
    return store


async def until(predicate, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if predicate():
            return
        await task.deferLater(reactor, 0.05, lambda: None)
    raise AssertionError("condition not reached in time")


@pytest_twisted.ensureDeferred
async def test_a_cancelled_wait_leaves_the_other_waiters_waiting(tmp_path, db_name):
    server = Database(tmp_path / "late")
    store = make_store(server.uri, db_name)
    try:
        gives_up, keeps_waiting = store.wait_ready(), store.wait_ready()
        gives_up.cancel()  # a call that timed out
        with pytest.raises(defer.CancelledError):
            await gives_up
        assert not keeps_waiting.called and not store.is_ready

        server.start()
        await keeps_waiting
        assert store.is_ready
        assert store.wait_ready().called  # afterwards a wait costs nothing
        with pymongo.MongoClient(server.uri, directConnection=True) as client:
            made = {name for c in INDEXES for name in client[db_name][c].index_information()}
        assert {options["name"] for specs in INDEXES.values() for _, options in specs} <= made
    finally:
        await store.stopService()
        server.stop()


@pytest_twisted.ensureDeferred
async def test_a_failed_transaction_leaves_nothing_behind(database, db_name, mongo):
    store = make_store(database, db_name)
    try:
        await store.wait_ready()
        orders = store["orders"]

        async def both(session) -> None:
            await orders.insert_one({"_id": 1, "step": "first"}, session=session)
            await orders.insert_one({"_id": 2, "step": "second"}, session=session)

        await store.transaction(both)
        assert mongo[db_name].orders.count_documents({}) == 2

        async def half(session) -> None:
            await orders.insert_one({"_id": 3, "step": "first"}, session=session)
            raise RuntimeError("the second step failed")

        with pytest.raises(RuntimeError):
            await store.transaction(half)
        stored = mongo[db_name].orders.count_documents({"_id": 3})
        # with transactions the first step is rolled back; without them (a
        # standalone server) it stays, and callers' steps are guarded for that
        assert stored == (0 if store.supports_transactions else 1)
    finally:
        await store.stopService()


@pytest.mark.parametrize("secantus_form", [True, False], ids=["update-then-read", "findAndModify"])
@pytest_twisted.ensureDeferred
async def test_update_and_fetch_in_both_forms(database, db_name, mongo, secantus_form):
    """Both forms of the one store helper: the update-then-read SecantusDB needs, and the
    findAndModify a real MongoDB serves (SecantusDB runs it too, only slowly at scale)."""
    store = make_store(database, db_name)
    try:
        await store.wait_ready()
        assert store.is_secantus  # the test server is SecantusDB; the other form is forced below
        store.capabilities = dataclasses.replace(store.capabilities, indexed_find_and_modify=not secantus_form)
        await store["gigs"].insert_one({"_id": 1, "status": "active", "n": 0})

        doc = await store.update_and_fetch("gigs", {"_id": 1, "status": "active"}, {"$inc": {"n": 1}},
                                           projection={"n": 1})
        assert doc == {"_id": 1, "n": 1}
        assert await store.update_and_fetch("gigs", {"_id": 1, "status": "paused"}, {"$inc": {"n": 1}}) is None

        async def in_transaction(session):
            return await store.update_and_fetch("gigs", {"_id": 1}, [{"$set": {"n": {"$add": ["$n", 10]}}}],
                                                session=session)

        assert (await store.transaction(in_transaction))["n"] == 11
        assert mongo[db_name].gigs.find_one({"_id": 1})["n"] == 11
        with pytest.raises(ValueError):
            await store.update_and_fetch("gigs", {"status": "active"}, {"$set": {"n": 0}})
    finally:
        await store.stopService()


@pytest.mark.parametrize("point_lookup", [True, False], ids=["by-_id-then-checked", "whole-filter"])
@pytest_twisted.ensureDeferred
async def test_find_by_id_in_both_forms_answers_as_the_whole_filter(database, db_name, mongo, point_lookup):
    """find_by_id: SecantusDB's form (read by _id alone, conditions checked in the daemon) and the
    whole filter a real MongoDB gets; both must answer exactly as the server does for the whole filter."""
    store = make_store(database, db_name)
    try:
        await store.wait_ready()
        from bson import Decimal128
        docs = [
            {"_id": 1, "deletedAt": None, "isActive": True, "status": "open", "n": 1, "tags": ["a", "b"]},
            {"_id": 2, "isActive": 1, "status": "closed", "n": 1.0, "tags": [None]},  # no deletedAt at all
            {"_id": 3, "deletedAt": "gone", "isActive": False, "n": Decimal128("1"), "tags": "a"},
            {"_id": 4, "deletedAt": [None], "isActive": [True], "status": ["open"], "n": True},
        ]
        mongo[db_name].things.insert_many(docs)
        queries = [
            {"deletedAt": None}, {"isActive": True}, {"isActive": 1}, {"status": "open"},
            {"status": {"$in": ["open", "closed"]}}, {"n": 1}, {"n": True}, {"tags": "a"}, {"tags": None},
            {"deletedAt": None, "isActive": True}, {"missing": None}, {"status": {"$in": []}},
            {"n": {"$gt": 0}},  # not checked in the daemon: goes to the server in both forms
        ]
        projections = [None, {"_id": 1}, {"n": 1}, {"deletedAt": 0}, {"status": 0, "tags": 0}, {"_id": 0, "n": 1}]
        collection = store["things"]
        assert collection.point_lookups  # the test server is SecantusDB; the other form is forced below
        collection.point_lookups = point_lookup
        for query in queries:
            for projection in projections:
                for _id in (1, 2, 3, 4, 5):
                    expected = mongo[db_name].things.find_one({"_id": _id, **query}, projection)
                    got = await collection.find_by_id(_id, query, projection=projection)
                    assert got == expected, (query, projection, _id)
    finally:
        await store.stopService()


@pytest.mark.parametrize("secantus_form", [True, False], ids=["update-then-read", "findAndModify"])
@pytest_twisted.ensureDeferred
async def test_update_and_fetch_runs_its_alongside_step_after_a_matching_write_only(
        database, db_name, mongo, secantus_form):
    store = make_store(database, db_name)
    try:
        await store.wait_ready()
        store.capabilities = dataclasses.replace(store.capabilities, indexed_find_and_modify=not secantus_form)
        await store["gigs"].insert_one({"_id": 1, "n": 0})
        seen: list = []

        async def after() -> None:
            seen.append(mongo[db_name].gigs.find_one({"_id": 1})["n"])  # the write is applied by then

        assert (await store.update_and_fetch("gigs", {"_id": 1}, {"$inc": {"n": 1}}, alongside=after))["n"] == 1
        assert seen == [1]
        assert await store.update_and_fetch("gigs", {"_id": 2}, {"$inc": {"n": 1}}, alongside=after) is None
        assert seen == [1]
    finally:
        await store.stopService()
