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

import ctypes
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
import xmlrpc.client
from collections.abc import Iterator
from pathlib import Path

import pymongo
import pytest

from worknet.logs import BATCH_SECONDS

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child below only makes one plain call


def _die_with_the_tests() -> None:
    """In the child before exec: SIGKILL it when the test process dies (Linux), so that a
    killed or timed-out test run leaves no database or daemon behind."""
    _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class Database:
    """A SecantusDB server process (``secantusd-py``) on a free loopback port."""

    def __init__(self, storage: Path, *extra: str) -> None:
        self.storage = storage
        self.extra = extra
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def probe_uri(self) -> str:
        """What ``start`` pings to know the server is up (a TLS server needs its CA)."""
        return self.uri

    def start(self) -> None:
        executable = BIN / "secantusd-py"
        argv = [str(executable if executable.exists() else shutil.which("secantusd-py")),
                "--host", "127.0.0.1", "--port", str(self.port), "--storage-path", str(self.storage),
                "--sync-on-commit", "--log-level", "WARNING", *self.extra]
        self.log = open(self.storage.parent / f"secantusd-{self.port}.log", "ab")
        self.process = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        preexec_fn=_die_with_the_tests)
        client = pymongo.MongoClient(self.probe_uri, serverSelectionTimeoutMS=500, directConnection=True)

        def answers() -> bool:
            assert self.process is not None and self.process.poll() is None, "secantusd-py exited"
            try:
                return bool(client.admin.command("ping")["ok"])
            except pymongo.errors.PyMongoError:
                return False

        try:
            wait_for(answers, START_TIMEOUT, "the database to answer")
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM, then wait for the exit (it must release its data directory)."""
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None


def _has_credentials(uri: str) -> bool:
    return "@" in uri.split("://", 1)[-1].split("/", 1)[0]


class Daemon:
    """``twistd -n worknet-rpc`` as a subprocess."""

    def __init__(self, workdir: Path, mongodb_uri: str, db_name: str, **env: str) -> None:
        self.workdir = workdir
        self.mongodb_uri = mongodb_uri
        self.db_name = db_name
        self.port = free_port()
        self.listen = f"tcp:{self.port}:interface=127.0.0.1"
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "NODE_ENV": "test",
            "JWT_SECRET": secrets.token_urlsafe(48),
            "LOG_LEVEL": "INFO",
            "DB_TIMEOUT_SECONDS": "3",
            **env,
        }
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / f"daemon-{self.port}.log"
        self.expected_errors = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/RPC2"

    def argv(self) -> list[str]:
        argv = [str(BIN / "twistd"), "-n", "--pidfile=", "worknet-rpc",
                "--listen", self.listen, "--db-name", self.db_name]
        if self.mongodb_uri and not _has_credentials(self.mongodb_uri):
            argv += ["--mongodb-uri", self.mongodb_uri]
        return argv

    def start(self, wait: bool = True) -> None:
        self.log_file = open(self.log_path, "ab")
        env = dict(self.env)
        if self.mongodb_uri and _has_credentials(self.mongodb_uri):
            env["MONGODB_URI"] = self.mongodb_uri  # a password never goes on a command line (ps shows it)
        self.process = subprocess.Popen(
            self.argv(), cwd=self.workdir, env=env, stdout=self.log_file,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_the_tests,
        )
        if wait:
            wait_for(self.serving, START_TIMEOUT, f"the daemon on port {self.port} (log: {self.log_path})")

    def serving(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        # /health is 200 once the database answers and the startup indexes exist;
        # only then may a test write to the database beside the daemon.
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as answer:  # noqa: S310
                return answer.status == 200
        except OSError:  # refused, or an HTTPError (503) while starting
            return False

    def proxy(self, **kwargs) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy(self.url, allow_none=True, **kwargs)

    def log(self) -> str:
        """The log so far, the lines of every call answered before this one included (the daemon
        writes call lines in batches, at most ``BATCH_SECONDS`` after the call)."""
        if self.process is not None and self.process.poll() is None:
            time.sleep(BATCH_SECONDS + 0.05)
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError("the daemon did not stop within the timeout") from None
        code = self.process.returncode
        self.process = None
        self.log_file.close()
        return code

    def internal_errors(self) -> list[str]:
        return [line for line in self.log().splitlines() if "#critical]" in line or "#error]" in line]


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
    "test_scale_out", "test_startup", "test_transport", "test_uri", "test_workers",
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


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        module = getattr(getattr(item, "module", None), "__name__", "").rpartition(".")[2]
        if module in PROCESS_MODULES or any(name in item.fixturenames for name in PROCESS_FIXTURES):
            item.add_marker(pytest.mark.process)


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
