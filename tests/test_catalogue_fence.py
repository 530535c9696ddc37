"""The catalogue's compaction lease is fenced: a fold that outlives its lease cannot write over a later
holder's work.  In process (pytest-twisted): two stores on one real SecantusDB play two daemons."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import pytest_twisted
from bson import Decimal128, ObjectId
from twisted.internet import defer

from tests.test_store import make_store, until
from worknet import catalogue
from worknet.catalogue import LEASES, Catalogue, Query


@pytest.fixture
def db_name(request) -> str:
    from tests.conftest import unique_db_name

    return unique_db_name(request)


class Paused(Catalogue):
    """A daemon whose fold stops after it has planned and before it writes (a slow database, a paused
    process), until the test lets it go on."""

    def __init__(self, store) -> None:
        super().__init__(store)
        self.pause_next = False
        self.paused = defer.Deferred()
        self.go_on = defer.Deferred()

    async def load(self, view, keys) -> None:
        if self.pause_next and not keys:  # the fold's load of every column chunk: planned, nothing written
            self.pause_next = False
            self.paused.callback(None)
            await self.go_on
        await super().load(view, keys)


def gig(title: str) -> dict:
    now = datetime.now(UTC)
    return {"_id": ObjectId(), "userId": ObjectId(), "categoryId": ObjectId(), "title": title,
            "description": "a fenced fold", "tags": [], "price": Decimal128("25.00"), "deliveryTime": 3,
            "rating": 0.0, "reviewCount": 0, "isActive": True, "createdAt": now, "updatedAt": now}


async def found(cat: Catalogue, word: str) -> set[ObjectId]:
    ids, _total = await cat.search(Query(terms=[word]), 1, 50)
    return set(ids)


@pytest_twisted.ensureDeferred
async def test_a_fold_past_its_lease_cannot_overwrite_the_next_holders_work(database, db_name, mongo):
    first_store, second_store = make_store(database, db_name), make_store(database, db_name)
    try:
        await first_store.wait_ready()
        await second_store.wait_ready()
        gigs = mongo[db_name].gigs
        slow, other = Paused(first_store), Catalogue(second_store)
        before = [gig(f"fenced seed {n}") for n in range(3)]
        gigs.insert_many(before)
        await catalogue.mark(first_store, [g["_id"] for g in before])
        assert await slow.compact(force=True) == 3  # a base to build on

        late = gig("fenced late")  # folded by the slow daemon, which stops before writing
        gigs.insert_one(late)
        await catalogue.mark(first_store, [late["_id"]])
        slow.pause_next = True
        folding = defer.ensureDeferred(slow.compact(force=True))
        await slow.paused
        # the pause outlasts the lease: it runs out, and the other daemon takes it and folds
        mongo[db_name][LEASES].update_one({"_id": "compaction"},
                                          {"$set": {"until": datetime.now(UTC) - timedelta(seconds=1)}})
        newer = gig("fenced newer")
        gigs.insert_one(newer)
        await catalogue.mark(second_store, [newer["_id"]])
        assert await other.compact(force=True) >= 1
        slow.go_on.callback(None)  # the slow daemon wakes up with its old plan
        try:
            await folding
        except Exception:  # noqa: S110 - a fenced fold may end in an error: what matters is what it wrote
            pass
        # whatever is left marked is folded by the current holder; then the base alone must be right
        while await other.compact(force=True):
            pass
        await until(lambda: mongo[db_name].catalogueDirty.count_documents({}) == 0)
        fresh = Catalogue(second_store)  # a third daemon reading only the base
        expected = {g["_id"] for g in [*before, late, newer]}
        assert await found(fresh, "fenced") == expected
        assert await found(fresh, "newer") == {newer["_id"]}
        assert await found(fresh, "late") == {late["_id"]}
    finally:
        await first_store.stopService()
        await second_store.stopService()
