"""The service tree of a serving process (worknet.app.build_app) and the blocking launcher of the embedded
database (worknet.store.embedded.Secantusd).  In process, against a real SecantusDB."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
import pytest_twisted
from twisted.internet import task

from worknet.app import build_app
from worknet.config import load_settings
from worknet.store import lifeline
from worknet.store.embedded import NotStarted, Secantusd


@pytest.fixture
def db_name(request) -> str:
    from tests.conftest import unique_db_name

    return unique_db_name(request)


def settings_for(db_name: str):
    return load_settings(environ={"NODE_ENV": "development", "DB_NAME": db_name, "DB_TIMEOUT_SECONDS": "3"})


def test_one_tree_for_both_process_models_its_store_first_and_the_drain_last(db_name):
    from twisted.internet import reactor

    settings = settings_for(db_name)
    single = build_app(settings, lambda: "mongodb://127.0.0.1:9/", reactor)
    worker = build_app(settings, lambda: "mongodb://127.0.0.1:9/", reactor, worker=True)
    loops = ["mongodb", "password-pool", "catalogue-compactor", "search-follower"]
    assert [child.name for child in single] == [*loops, "drain"]
    assert [child.name for child in worker] == [*loops, "gauges", "close-connections", "drain"]
    assert single.store is list(single)[0] and single.site.gauges is not None


@pytest_twisted.ensureDeferred
async def test_the_tree_stops_its_loops_before_the_store_and_the_follower_hands_its_lease_over(
        database, db_name, mongo):
    from twisted.internet import reactor

    app = build_app(settings_for(db_name), lambda: database, reactor)
    follower = app.getServiceNamed("search-follower")
    compactor = app.getServiceNamed("catalogue-compactor")
    passwords = app.getServiceNamed("password-pool")
    app.startService()
    try:
        await app.store.wait_ready()
        assert passwords.pool.started and compactor.loop.running
        held: list = []

        async def holding() -> None:
            held[:] = [await app.store["catalogueLease"].find_one({"_id": "stream", "holder": follower.holder})]

        for _ in range(600):  # the follower takes the stream lease once the store is ready (30 s at most)
            await holding()
            if held[0] is not None:
                break
            await task.deferLater(reactor, 0.05, lambda: None)
        assert held[0] is not None, "the follower never took its lease"
    finally:
        await app.stopService()
    # the lease was handed over through the store: it stopped after the follower
    lease = mongo[db_name].catalogueLease.find_one({"_id": "stream"})
    assert lease["holder"] == follower.holder and lease["until"] == datetime.fromtimestamp(0, UTC)
    assert not compactor.loop.running and not follower.running and not passwords.pool.started
    assert not app.store.running


def test_the_launcher_refuses_a_held_directory_and_starts_again_on_its_port(tmp_path):
    first = Secantusd(tmp_path / "data", log=tmp_path / "secantusd.log")
    with first:
        assert first.ping()
        second = Secantusd(tmp_path / "data")
        with pytest.raises(NotStarted) as refused:
            second.start(timeout=60)
        assert refused.value.code == lifeline.HELD
        assert "is in use by process" in refused.value.said
        port = first.port
        first.stop()
        assert not first.ping()
        assert first.start() == f"mongodb://127.0.0.1:{port}/"
