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
def standalone(tmp_path_factory) -> Iterator[tuple[Database, pymongo.MongoClient]]:
    """A second SecantusDB, ``--standalone`` (no replica set: no transactions, no change streams, as a
    standalone mongod), with a pymongo client on it."""
    server = Database(tmp_path_factory.mktemp("standalone") / "data", "--standalone")
    server.start()
    client = pymongo.MongoClient(server.uri, serverSelectionTimeoutMS=5000, tz_aware=True, directConnection=True)
    try:
        yield server, client
    finally:
        client.close()
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


# -- the two tiers -------------------------------------------------------------------------------------
#
# In process (``app``, ``make_app``; tests/inprocess.py): the daemon's own service tree and Site in the test
# process, called through xmlrpc.client over an in-memory transport, on a database of this test process whose
# indexes exist (emptied after each test).  The process tier (``daemon``, ``make_daemon``): ``twistd`` as a
# user starts it, for what the process itself does (startup, signals, --workers, TLS, sockets, crashes, logs).
# A test is in the process tier -- marked ``process`` at collection -- when it uses ``daemon`` or
# ``make_daemon`` or its module is in PROCESS_MODULES; ``rpc`` and ``db`` are then its daemon's, else the
# app's.  ``make check`` runs the tests not marked ``process``.  (The harness imports stay in the functions:
# the classes above are moving to a module of their own.)

PROCESS_FIXTURES = ("daemon", "make_daemon")
# Modules in the process tier as a whole: what they check is the process or its sockets (startup, --workers,
# TLS, slow clients, crashes, logs), or they start processes themselves (twistd, the Node client, a database
# they kill).
PROCESS_MODULES = {
    "test_abuse", "test_accept", "test_audit", "test_crash", "test_daemon", "test_db_crash", "test_demo",
    "test_disk_full", "test_faults", "test_fuzz", "test_mongodb_tls", "test_node_client", "test_ops", "test_ping",
    "test_scale_out", "test_startup", "test_uri", "test_workers",
}


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config) -> None:
    """The reactor thread of the in-process tier, in each process that runs tests (not an xdist controller).

    (pytest-twisted's plugin is off: it would run every test on the reactor, see setup.cfg.)
    """
    config.addinivalue_line("markers", "process: checks a real daemon process (not run by make check)")
    if hasattr(config, "workerinput") or not config.getoption("numprocesses", None):
        from tests import inprocess

        inprocess.start_reactor()


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
    """An ``async def`` test (``@pytest_twisted.ensureDeferred``) runs on the reactor thread."""
    import inspect

    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    from tests import inprocess

    inprocess.on_reactor(pyfuncitem.obj, **{name: pyfuncitem.funcargs[name] for name in pyfuncitem._fixtureinfo.argnames})
    return True


def pytest_unconfigure(config) -> None:
    from tests import inprocess

    inprocess.stop_reactor()


# The files that take longest, longest first (`pytest --durations`, summed per file, in a `make test` run):
# `make test` hands whole files to its workers in collection order (pytest-xdist --dist loadfile
# --no-loadscope-reorder), so these start first and no long file begins when the others are done.  A file
# not named here comes after them, in its usual order.  Update the list when a file's cost changes much.
SLOWEST_FIRST = (
    "test_search", "test_money_properties", "test_mongodb_tls", "test_uri", "test_db_crash", "test_abuse",
    "test_daemon", "test_ops", "test_money_races", "test_money_standalone", "test_scale_out", "test_fuzz",
    "test_faults", "test_hostile", "test_workers", "test_node_client", "test_embedded_memory", "test_disk_full",
    "test_reviews", "test_ping", "test_security", "test_payments", "test_crash", "test_audit",
)


def _module_of(item) -> str:
    return getattr(getattr(item, "module", None), "__name__", "").rpartition(".")[2]


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if _module_of(item) in PROCESS_MODULES or any(name in item.fixturenames for name in PROCESS_FIXTURES):
            item.add_marker(pytest.mark.process)
    rank = {module: n for n, module in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(_module_of(item), len(rank)))  # stable: a file's tests keep their order


def in_process_tier(request) -> bool:
    return request.node.get_closest_marker("process") is None


@pytest.fixture(scope="session")
def app_databases(mongo):
    """Database names of this test process whose startup indexes exist: a test takes one, and gives it back
    emptied (indexes kept) -- creating the indexes of a fresh database costs more than a test's calls."""
    from tests import inprocess

    return inprocess.Databases(mongo, prefix=f"t_{os.environ.get('PYTEST_XDIST_WORKER', 'gw')}_{uuid.uuid4().hex[:6]}")


@pytest.fixture
def make_app(database, app_databases):
    """Start apps (the daemon's service tree in this process); ``db_name`` shares another app's database,
    ``mongodb_uri`` names another server (then the database is a new one of its own)."""
    from tests import inprocess

    started: list[inprocess.App] = []
    taken: list[str] = []

    def make(db_name: str | None = None, mongodb_uri: str | None = None, **env: str) -> inprocess.App:
        if db_name is None and mongodb_uri is None:
            db_name = app_databases.take()
            taken.append(db_name)
        elif db_name is None:
            db_name = f"t_app_{uuid.uuid4().hex[:12]}"
        app = inprocess.App(mongodb_uri or database, db_name, **env)
        started.append(app)
        return app.start()

    yield make
    problems, stopped = [], True
    for app in started:
        try:
            app.stop()
        except Exception as e:  # noqa: BLE001 - reported below, the database is not reused
            stopped = False
            problems.append(f"the app did not stop: {e!r}")
        if not app.expected_errors and app.internal_errors():
            problems.append("\n".join(app.internal_errors()[:5]))
    for name in taken:
        app_databases.give_back(name, reuse=stopped)
    assert not problems, "the app logged internal errors:\n" + "\n".join(problems)


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def rpc(request) -> xmlrpc.client.ServerProxy:
    """A ServerProxy on the test's app, or on its daemon in the process tier."""
    if in_process_tier(request):
        return request.getfixturevalue("app").proxy()
    return request.getfixturevalue("daemon").proxy()


@pytest.fixture
def db(request, mongo):
    """A pymongo handle on the database of the test's app (or daemon, in the process tier)."""
    if in_process_tier(request):
        return mongo[request.getfixturevalue("app").db_name]
    return mongo[request.getfixturevalue("daemon").db_name]
