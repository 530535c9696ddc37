"""Search and browse follow the database, whoever writes it (worknet/follow.py).

Another writer -- an operator in mongosh, the Node backend's models, a
migration -- changes gigs with pymongo straight in the database of a running
daemon (its service tree in process); search and the category browse must
reflect each change within 2 s (API.md, "The database is shared").
"""

from __future__ import annotations

import statistics
import time
from datetime import UTC, datetime

import pytest
from bson import Decimal128, ObjectId

from tests.conftest import wait_for
from tests.test_gigs import make_category, make_gig, seed_user

WITHIN = 2.0  # the contract
GIVE_UP = 30.0  # how long a failing test waits before it says so (the figure that matters is WITHIN)


@pytest.fixture
def world(rpc, db):
    make_category(rpc)
    return seed_user(db, "follow_seller", rating=4.5)


def searched(rpc, words: str, **filters) -> list[str]:
    result = rpc.gigsService.search(words, filters, 1, 50)
    assert result["success"], result
    return [gig["id"] for gig in result["gigs"]]


def browsed(rpc, category: str = "graphic-design") -> list[str]:
    return searched(rpc, "", category=category)


def seen_within(what, predicate) -> float:
    """Seconds until ``predicate()`` holds (it must within GIVE_UP; the caller checks WITHIN)."""
    began = time.monotonic()
    wait_for(predicate, GIVE_UP, what, interval=0.02)
    return time.monotonic() - began


def node_gig(db, seller: str, category_id: str, title: str, **over) -> ObjectId:
    """A gig as another writer inserts it (docs/DATA_MODEL.md), without this daemon's internal fields."""
    now = datetime.now(UTC)
    doc = {"userId": ObjectId(seller), "title": title, "description": "Written by the Node backend.",
           "categoryId": ObjectId(category_id), "category": "graphic-design", "price": Decimal128("30.00"),
           "deliveryTime": 2, "revisionNumber": 1, "images": [], "features": [], "tags": ["nodejs"],
           "rating": 0, "reviewCount": 0, "isActive": True, "createdAt": now, "updatedAt": now, **over}
    return db.gigs.insert_one(doc).inserted_id


def test_an_operators_changes_reach_search_and_browse(rpc, db, world):
    gig = make_gig(rpc, world, title="An offending walrus gig")
    assert searched(rpc, "walrus") == [gig] and gig in browsed(rpc)

    # a moderator deactivates it in mongosh
    db.gigs.update_one({"_id": ObjectId(gig)}, {"$set": {"isActive": False}})
    took = seen_within("search to drop the deactivated gig", lambda: gig not in searched(rpc, "walrus"))
    assert gig not in browsed(rpc)
    assert took < WITHIN, took

    # and back; then re-titled, re-priced, soft-deleted, hard-deleted, each outside the daemon
    db.gigs.update_one({"_id": ObjectId(gig)}, {"$set": {"isActive": True}})
    assert seen_within("the gig back", lambda: searched(rpc, "walrus") == [gig]) < WITHIN
    db.gigs.update_one({"_id": ObjectId(gig)}, {"$set": {"title": "A renamed narwhal gig"}})
    assert seen_within("the new title", lambda: searched(rpc, "narwhal") == [gig]) < WITHIN
    assert searched(rpc, "walrus") == []
    db.gigs.update_one({"_id": ObjectId(gig)}, {"$set": {"price": Decimal128("700.00")}})
    assert seen_within("the new price", lambda: searched(rpc, "narwhal", min_price=600) == [gig]) < WITHIN
    db.gigs.update_one({"_id": ObjectId(gig)}, {"$set": {"deletedAt": datetime.now(UTC)}})
    assert seen_within("the soft delete", lambda: searched(rpc, "narwhal") == []) < WITHIN
    other = make_gig(rpc, world, title="A doomed okapi gig")
    db.gigs.delete_one({"_id": ObjectId(other)})
    assert seen_within("the hard delete", lambda: searched(rpc, "okapi") == []) < WITHIN


def test_another_writers_gigs_are_found_and_malformed_ones_left_out(rpc, db, world, app):
    category = db.categories.find_one({"slug": "graphic-design"})["_id"]
    inserted = node_gig(db, world, str(category), "A Mongoose-made axolotl gig")
    took = seen_within("the inserted gig in search", lambda: searched(rpc, "axolotl") == [str(inserted)])
    assert took < WITHIN, took
    assert str(inserted) in browsed(rpc)
    assert searched(rpc, "nodejs") == [str(inserted)]  # tags count, without searchTerms
    # a plain number for the price (a Mongoose Number) is read without float arithmetic
    plain = node_gig(db, world, str(category), "A plainly priced axolotl gig", price=19.99)
    wait_for(lambda: len(searched(rpc, "axolotl", max_price=20)) == 1, GIVE_UP, "the plain price")
    assert searched(rpc, "axolotl", max_price=20) == [str(plain)]

    bad = node_gig(db, world, str(category), "A malformed axolotl gig", price="cheap")
    untitled = node_gig(db, world, str(category), "x")
    db.gigs.update_one({"_id": untitled}, {"$unset": {"title": ""}})
    after = node_gig(db, world, str(category), "A later axolotl gig")
    wait_for(lambda: str(after) in searched(rpc, "axolotl"), GIVE_UP, "a later gig, after the malformed ones")
    assert str(bad) not in searched(rpc, "axolotl") and str(untitled) not in browsed(rpc)
    # compaction is not stuck on them: every mark is folded, and each bad gig was named once
    wait_for(lambda: db.catalogueDirty.count_documents({}) == 0, GIVE_UP, "the marks to be folded")
    log = app.log()
    assert log.count(f"gig {bad} is left out of search: price is str") == 1, log[-2000:]
    assert log.count(f"gig {untitled} is left out of search: no title") == 1


def test_a_change_made_while_no_daemon_runs_is_caught_at_restart(rpc, db, world, app, make_app):
    gig = make_gig(rpc, world, title="A sleeping dormouse gig")
    wait_for(lambda: db.catalogueLease.find_one({"_id": "stream", "resume": {"$ne": None}}), GIVE_UP,
             "the stream position to be saved")
    app.stop()
    db.gigs.update_one({"_id": ObjectId(gig)}, {"$set": {"title": "A woken hedgehog gig"}})
    rpc = make_app(db_name=app.db_name).proxy()  # restarted
    took = seen_within("the change made while stopped", lambda: searched(rpc, "hedgehog") == [gig])
    assert took < WITHIN, took
    assert searched(rpc, "dormouse") == []


def test_delay_from_another_writer_to_search(rpc, db, world, record_property):
    """The delay between another writer's change and search seeing it, over 50 changes."""
    gig = make_gig(rpc, world, title="A timed gig zero")
    delays = []
    for n in range(50):
        word = f"tick{n}word"
        db.gigs.update_one({"_id": ObjectId(gig)}, {"$set": {"title": f"A timed gig {word}"}})
        delays.append(seen_within(f"change {n}", lambda word=word: searched(rpc, word) == [gig]))
    record_property("delays", delays)
    print(f"\nsearch sees another writer's change after: median {statistics.median(delays):.3f} s, "
          f"worst {max(delays):.3f} s (50 changes)")
    assert max(delays) < WITHIN, delays


def test_the_follower_is_one_per_database_and_another_takes_over(rpc, db, world, app, make_app):
    second = make_app(db_name=app.db_name)
    wait_for(lambda: db.catalogueLease.find_one({"_id": "stream"}), GIVE_UP, "a follower")
    holder = db.catalogueLease.find_one({"_id": "stream"})["holder"]
    followed_by_first = holder == app.loops["follower"].holder  # host:pid:id, one per app
    assert followed_by_first or holder == second.loops["follower"].holder
    (app if followed_by_first else second).stop()
    survivor = (second if followed_by_first else app).proxy()
    gig = make_gig(survivor, world, title="A handed over quokka gig")
    db.gigs.update_one({"_id": ObjectId(gig)}, {"$set": {"title": "A handed over wombat gig"}})
    # the stopped app hands the lease over (or it runs out: 6 s) and the other one resumes from its position
    wait_for(lambda: searched(survivor, "wombat") == [gig], GIVE_UP, "the other daemon to take over")


def test_a_server_without_change_streams_is_named_and_reconciled(tmp_path, make_app, request):
    """A standalone server (SecantusDB --standalone answers $changeStream as mongod does: code 40573):
    one startup line, a /health warning, and gigs written by others before the start are found."""
    import json

    import pymongo

    from tests.conftest import Database, unique_db_name

    server = Database(tmp_path / "standalone", "--standalone")
    server.start()
    try:
        name = unique_db_name(request)
        with pymongo.MongoClient(server.uri, directConnection=True, tz_aware=True) as client:
            db = client[name]
            seller = seed_user(db, "standalone_seller")
            gig = node_gig(db, seller, str(ObjectId()), "A standalone capybara gig")
            app = make_app(db_name=name, mongodb_uri=server.uri)
            rpc = app.proxy()
            wait_for(lambda: searched(rpc, "capybara") == [str(gig)], GIVE_UP, "the reconciliation")
            health = json.loads(app.get("/health")[1])
            assert any("no change streams" in w for w in health.get("warnings", [])), health
            assert app.log().count("the database has no change streams") == 1
            app.stop()
    finally:
        server.stop()


def test_a_saved_position_the_server_cannot_resume_from_is_caught_up(rpc, db, world, app, make_app):
    """The history after the saved position is gone (here: a position this server cannot read, as after a
    restore onto another server): a new stream, a reconciliation, the change made meanwhile found."""
    gig = make_gig(rpc, world, title="A restored lemur gig")
    wait_for(lambda: db.catalogueLease.find_one({"_id": "stream", "resume": {"$ne": None}}), GIVE_UP,
             "the stream position to be saved")
    app.stop()
    db.gigs.update_one({"_id": ObjectId(gig)}, {"$set": {"title": "A restored gibbon gig"}})
    db.catalogueLease.update_one({"_id": "stream"}, {"$set": {"resume": {"_data": "00"}}})
    restarted = make_app(db_name=app.db_name)
    rpc = restarted.proxy()
    wait_for(lambda: searched(rpc, "gibbon") == [gig], GIVE_UP, "the reconciliation to find the change")
    log = restarted.log()
    assert "no longer holds the gigs' change history after the saved position" in log
    restarted.wait_log("re-indexed 1 that differed", GIVE_UP)


def test_rebuild_on_a_data_directory_a_daemon_holds_says_so_in_one_line(tmp_path, make_daemon):
    import subprocess
    import sys

    from tests.conftest import ROOT

    data_dir = tmp_path / "held-data"
    daemon = make_daemon(mongodb_uri="", DATA_DIR=str(data_dir))
    done = subprocess.run([sys.executable, "-m", "worknet.catalogue", "rebuild", "--data-dir", str(data_dir),
                           "--quiet"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                          env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert done.returncode == 1, done
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("python -m worknet.catalogue rebuild: the data directory"), lines
    assert "is in use by process" in lines[0] and "stop the daemon first" in lines[0]
    assert daemon.proxy().ping()["status"] == "ok"
