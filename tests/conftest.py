"""Test harness: a real database server and real daemons, called by real clients.

* ``database`` (session): a throw-away SecantusDB on a free port, or the
  server named by ``WORKNET_TEST_MONGODB_URI``.
* ``daemon`` (per test): ``twistd -n worknet-rpc`` started as a user would
  start it, on a free port, with a database name of its own, so tests never
  see each other's data.  Its log goes to a file; a test fails if the daemon
  logged an internal error it did not expect.
* ``rpc``: an ``xmlrpc.client.ServerProxy`` on that daemon; ``db``: a pymongo
  handle on its database, to check what was really stored.
"""

from __future__ import annotations

import os
import uuid
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest

# the harness lives in tests/harness.py (the benchmarks use it too); tests import these names from here as well
from tests.harness import BIN, ROOT, START_TIMEOUT, Daemon, Database, free_port, wait_for  # noqa: F401


@pytest.fixture(scope="session")
def database(tmp_path_factory) -> Iterator[str]:
    external = os.environ.get("WORKNET_TEST_MONGODB_URI")
    if external:
        yield external
        return
    server = Database(tmp_path_factory.mktemp("secantus") / "data")
    server.start()
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture(scope="session")
def mongo(database) -> Iterator[pymongo.MongoClient]:
    client = pymongo.MongoClient(database, serverSelectionTimeoutMS=5000, tz_aware=True)
    yield client
    client.close()


def unique_db_name(request) -> str:
    stem = "".join(c if c.isalnum() else "_" for c in request.node.name)[:30]
    return f"t_{stem}_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def make_daemon(database, tmp_path, request):
    """Start extra daemons (same or other database) inside one test."""
    started: list[Daemon] = []

    def make(db_name: str | None = None, mongodb_uri: str | None = None, start: bool = True, **env: str) -> Daemon:
        daemon = Daemon(tmp_path, database if mongodb_uri is None else mongodb_uri,
                        db_name or unique_db_name(request), **env)
        started.append(daemon)
        if start:
            daemon.start()
        return daemon

    yield make
    problems = []
    for daemon in started:
        daemon.stop()
        if not daemon.expected_errors and daemon.internal_errors():
            problems.append("\n".join(daemon.internal_errors()[:5]))
    assert not problems, "the daemon logged internal errors:\n" + "\n".join(problems)


@pytest.fixture
def daemon(make_daemon) -> Daemon:
    return make_daemon()


@pytest.fixture
def clock_file(tmp_path) -> Path:
    """For ``WORKNET_TEST_CLOCK_FILE``: seconds to add to the daemon's clock (NODE_ENV=test only)."""
    path = tmp_path / "clock-offset"
    path.write_text("0")
    return path


@pytest.fixture
def rpc(daemon) -> xmlrpc.client.ServerProxy:
    return daemon.proxy()


@pytest.fixture
def db(daemon, mongo):
    return mongo[daemon.db_name]
