"""The in-process tier: the daemon's real ``Site`` and store, called by real XML-RPC clients, no process.

Each test process (each pytest-xdist worker) runs Twisted's global reactor in
one background thread, started once (:func:`start_reactor`).  An :class:`App` is
what one ``twistd worknet-rpc`` process (one worker) builds -- settings from
:func:`worknet.config.load_settings`, a ``MongoStore`` and the ``Site`` of
:func:`worknet.app.build_app` (:func:`assemble`), the daemon's own builder -- against
the test run's real database, minus the listening socket:

* calls go through a real ``xmlrpc.client.ServerProxy`` whose transport
  (:class:`InMemoryTransport`) lets ``http.client`` write the request bytes and
  read the answer bytes, as over a socket, while the bytes go to a connection of
  the real ``Site`` over an in-memory transport (Twisted's ``StringTransport``)
  on the reactor thread: HTTP parsing, the resource, the dispatcher, the
  services, the database, the encoded answer -- everything but the socket;
* :meth:`App.get` does ``GET /health`` or ``/metrics`` the same way;
* :meth:`App.log` is the app's log so far, formatted as the daemon formats it
  (``worknet.logs``), and :meth:`App.wait_log` waits for a line (no sleep: the
  lines are collected as they are emitted, not written in batches).

Teardown (:meth:`App.stop`) stops everything the app started -- the catalogue
compactor, the change-stream follower, the password thread pool, the store's
service tree -- so that nothing of one test runs on into the next.
"""

from __future__ import annotations

import contextvars
import http.client
import io
import itertools
import os
import queue
import secrets
import tempfile
import threading
import time
import urllib.request
import xmlrpc.client
from collections.abc import Callable
from typing import Any

from twisted.internet import defer, task
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.logger import PredicateResult, globalLogPublisher
from twisted.python.failure import Failure

START_TIMEOUT = 30.0  # the database answers and the startup indexes exist
CALL_TIMEOUT = 120.0  # a call that never answers fails the test after this long (as a socket timeout would)
STOP_TIMEOUT = 30.0

# -- the reactor thread ----------------------------------------------------------------------------

_thread: threading.Thread | None = None
_lock = threading.Lock()


def reactor_thread() -> threading.Thread | None:
    return _thread


def start_reactor() -> None:
    """Run Twisted's global reactor in a background thread of this process (once; later calls return)."""
    global _thread
    with _lock:
        if _thread is not None:
            return
        from twisted.internet import reactor

        running = threading.Event()
        reactor.callWhenRunning(running.set)
        _thread = threading.Thread(target=reactor.run, kwargs={"installSignalHandlers": False},
                                   name="twisted-reactor", daemon=True)
        _thread.start()
        if not running.wait(START_TIMEOUT):
            raise RuntimeError("the reactor thread did not start")


def stop_reactor() -> None:
    global _thread
    with _lock:
        if _thread is None:
            return
        from twisted.internet import reactor

        reactor.callFromThread(reactor.stop)
        _thread.join(STOP_TIMEOUT)
        _thread = None


def on_reactor(function: Callable[..., Any], *args: Any, timeout: float = CALL_TIMEOUT, **kwargs: Any) -> Any:
    """``function(*args, **kwargs)`` on the reactor thread; its result once it (a Deferred, a coroutine) has one."""
    if threading.current_thread() is _thread:
        raise RuntimeError("on_reactor would wait for the reactor thread on the reactor thread")
    if _thread is None:
        raise RuntimeError("the reactor thread is not running (tests.inprocess.start_reactor)")
    from twisted.internet import reactor

    outcome: queue.SimpleQueue[Any] = queue.SimpleQueue()

    def run() -> None:
        defer.maybeDeferred(function, *args, **kwargs).addBoth(outcome.put)

    reactor.callFromThread(run)
    try:
        result = outcome.get(timeout=timeout)
    except queue.Empty:
        raise TimeoutError(f"no answer from the reactor thread within {timeout:g} s ({function!r})") from None
    if isinstance(result, Failure):
        result.raiseException()
    return result


# -- the app ---------------------------------------------------------------------------------------

# Which app a call or a startup belongs to: set around each exchange, copied into the coroutines it starts
# (as the daemon's request id is), so a log event says which app emitted it.
_current: contextvars.ContextVar[App | None] = contextvars.ContextVar("worknet_test_app", default=None)
_empty_env_file: str | None = None


def _env_file() -> str:
    """An empty settings file: ``load_settings`` would otherwise read a ``.env`` in the current directory."""
    global _empty_env_file
    if _empty_env_file is None:
        fd, _empty_env_file = tempfile.mkstemp(prefix="worknet-test-", suffix=".env")
        os.close(fd)
    return _empty_env_file


def app_environment(database_uri: str, db_name: str, **env: str) -> dict[str, str]:
    """The settings a test daemon gets (tests/conftest.py ``Daemon``), pointed at ``db_name``."""
    return {
        "NODE_ENV": "test",
        "JWT_SECRET": secrets.token_urlsafe(48),
        "LOG_LEVEL": "INFO",
        "DB_TIMEOUT_SECONDS": "3",
        "MONGODB_URI": database_uri,
        "DB_NAME": db_name,
        **env,
    }


def assemble(settings: Any, reactor: Any) -> tuple[Any, Any, Any]:
    """The service tree of one daemon process, without its listener: ``(top, store, site)``.

    :func:`worknet.app.build_app`, the builder ``twistd worknet-rpc`` and every ``--workers``
    process use: the store, the password pool, the catalogue compactor, the change-stream
    follower, the drain of in-flight calls on stop.
    """
    from worknet.app import build_app

    app = build_app(settings, lambda: settings.mongodb_uri, reactor)
    return app, app.store, app.site


def _background_loops(top: Any) -> dict[str, Any]:
    """The loops an app runs beside its calls (services of its tree)."""
    return {"compactor": top.getServiceNamed("catalogue-compactor"),
            "follower": top.getServiceNamed("search-follower"), "cpu_pool": top.getServiceNamed("password-pool")}


_ports = itertools.count(40000)


class App:
    """One daemon's service tree in this process, on a database of the test run."""

    def __init__(self, database_uri: str, db_name: str, **env: str) -> None:
        from worknet.config import load_settings
        from worknet.logs import formatter, level_filter

        self.db_name = db_name
        self.env = app_environment(database_uri, db_name, **env)
        self.settings = load_settings(self.env, env_file=_env_file())
        self.expected_errors = False
        self.lines: list[str] = []
        self._lines_changed = threading.Condition()
        self._admits = level_filter(self.settings.log_level)
        self._format = formatter("text")
        self.top: Any = None
        self.store: Any = None
        self.site: Any = None
        self.running = False

    # -- life --------------------------------------------------------------------------------------

    def start(self) -> App:
        globalLogPublisher.addObserver(self._observe)
        try:
            on_reactor(self._in_context, self._start, timeout=START_TIMEOUT + 5)
        except BaseException:
            self.stop()
            raise
        return self

    def _in_context(self, function: Callable[..., Any], *args: Any) -> defer.Deferred[Any]:
        """``function(*args)`` with this app as the current one: a coroutine it returns, and every one it
        starts, run in that context (Twisted copies the context when it starts one)."""
        context = contextvars.copy_context()
        context.run(_current.set, self)
        return context.run(defer.maybeDeferred, function, *args)

    async def _start(self) -> None:
        from twisted.internet import reactor

        from worknet.security import TEST_CLOCK_VARIABLE

        # The test clock file is read from the environment when the users service is built (as in the
        # daemon, whose environment it is): set for this build only, on the reactor thread.
        clock = self.env.get(TEST_CLOCK_VARIABLE)
        before = os.environ.get(TEST_CLOCK_VARIABLE)
        if clock:
            os.environ[TEST_CLOCK_VARIABLE] = clock
        else:
            os.environ.pop(TEST_CLOCK_VARIABLE, None)
        try:
            self.top, self.store, self.site = assemble(self.settings, reactor)
        finally:
            if before is None:
                os.environ.pop(TEST_CLOCK_VARIABLE, None)
            else:
                os.environ[TEST_CLOCK_VARIABLE] = before
        self.loops = _background_loops(self.top)
        self.top.startService()
        self.running = True
        ready = self.store.wait_ready()
        ready.addTimeout(START_TIMEOUT, reactor)
        await ready
        # As a daemon is by the time it answers a test: search follows the database (or stands by for another
        # app on it) and has compared it with its index -- its first commands must not fall among a test's.
        follower = self.loops["follower"]
        deadline = reactor.seconds() + START_TIMEOUT
        while (follower.status == "starting" or follower.catching_up is not None) and reactor.seconds() < deadline:
            await task.deferLater(reactor, 0.01, lambda: None)

    def stop(self) -> None:
        """Stop the app and everything it started; idempotent."""
        try:
            if self.top is not None:
                on_reactor(self._stop, timeout=STOP_TIMEOUT + 5)
        finally:
            globalLogPublisher.removeObserver(self._observe)

    async def _stop(self) -> None:
        from twisted.internet import reactor

        top, self.top = self.top, None
        self.running = False
        loops = self.loops
        compactor, follower, cpu_pool = loops["compactor"], loops["follower"], loops["cpu_pool"]
        streaming = follower.stream is not None  # else it is in a pause (standby, no change streams)
        if top.running:
            # in the daemon's order: the drain, the follower (it hands its lease over), the compactor (a round in
            # progress ends first), the password pool, the store last
            await top.stopService()
        # A catch-up (the first start on a database compares every gig with the index) ends before the next
        # test (a stopped follower neither says it failed nor tries again).
        deadline = reactor.seconds() + STOP_TIMEOUT
        while follower.catching_up is not None:
            if reactor.seconds() > deadline:
                raise TimeoutError(f"the follower's catch-up did not end within {STOP_TIMEOUT:g} s")
            await task.deferLater(reactor, 0.01, lambda: None)
        # The loops' last rounds end before the next test: a follower reading its stream closes it now that
        # the store is gone; one in a pause (standby, or between two reconciliations on a server without
        # change streams: up to 2 s) stops when the pause ends, touching nothing -- not waited for.
        if streaming:
            await _ended(follower.done, "the change-stream follower")
        _forget_shutdown_triggers(reactor, {id(compactor), id(follower), id(cpu_pool)})

    # -- calls -------------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """What a client would be given (the host part is not used: nothing listens)."""
        return "http://127.0.0.1/RPC2"

    def proxy(self, *, source: str = "127.0.0.1", userinfo: str | None = None, timeout: float = CALL_TIMEOUT,
              **kwargs: Any) -> xmlrpc.client.ServerProxy:
        """A real ``xmlrpc.client.ServerProxy`` on this app; ``source``: the client's address as the
        daemon sees it; ``userinfo``: ``user:password`` for HTTP basic authentication (in the URL)."""
        transport_options = {k: kwargs.pop(k) for k in ("use_datetime", "use_builtin_types", "headers") if k in kwargs}
        kwargs.setdefault("allow_none", True)
        url = f"http://{userinfo}@127.0.0.1/RPC2" if userinfo else self.url
        return xmlrpc.client.ServerProxy(url, transport=InMemoryTransport(self, source, timeout, **transport_options),
                                         **kwargs)

    def connection(self, source: str = "127.0.0.1", timeout: float = CALL_TIMEOUT) -> http.client.HTTPConnection:
        """An ``http.client`` connection to this app (one request: the app closes it after the answer)."""
        return InMemoryConnection(self, source, "127.0.0.1", timeout=timeout)

    def opener(self, *handlers: Any) -> urllib.request.OpenerDirector:
        """A ``urllib`` opener whose ``http://`` requests go to this app (``handlers``: basic auth...)."""
        app = self

        class ToApp(urllib.request.HTTPHandler):
            def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
                return self.do_open(lambda host, timeout=CALL_TIMEOUT, **_: app.connection(timeout=timeout), req)

        return urllib.request.build_opener(ToApp, *handlers)

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
        """``GET path`` (``/health``, ``/metrics``): the status and the body, as ``tests.support.http_get``."""
        conn = self.connection()
        conn.request("GET", path, headers=headers or {})
        answer = conn.getresponse()
        return answer.status, answer.read().decode("utf-8", errors="replace")

    def exchange(self, data: bytes, source: str = "127.0.0.1", timeout: float = CALL_TIMEOUT) -> bytes:
        """Hand ``data`` (whole HTTP requests) to a new connection of the site; every byte it answered
        once it closed the connection."""
        if self.site is None:
            raise RuntimeError("the app is not running")
        return on_reactor(self._in_context, self._exchange, data, source, timeout=timeout)

    def _exchange(self, data: bytes, source: str) -> defer.Deferred[bytes]:
        port = next(_ports)
        transport = _ClosingTransport(peerAddress=IPv4Address("TCP", source, port),
                                      hostAddress=IPv4Address("TCP", "127.0.0.1", 8000))
        channel = self.site.buildProtocol(transport.getPeer())
        channel.makeConnection(transport)
        channel.dataReceived(data)

        def closed(_: Any) -> bytes:
            channel.connectionLost(Failure(ConnectionDone("the answer is complete")))
            return transport.value()

        return transport.closed.addCallback(closed)

    # -- the log -----------------------------------------------------------------------------------

    def _observe(self, event: dict) -> None:
        owner = _current.get()
        if owner is not None and owner is not self:
            return  # another app's event
        if self._admits(event) is PredicateResult.no:
            return
        text = self._format(event)
        if not text:
            return
        with self._lines_changed:
            self.lines.extend(text.splitlines())
            self._lines_changed.notify_all()

    def log(self) -> str:
        """The log so far (every line of every call answered before now included)."""
        with self._lines_changed:
            return "".join(line + "\n" for line in self.lines)

    def wait_log(self, predicate: str | Callable[[str], bool], timeout: float = 30.0) -> str:
        """The first log line containing ``predicate`` (or for which it is true), waiting up to ``timeout`` s."""
        test = (lambda line: predicate in line) if isinstance(predicate, str) else predicate
        deadline = time.monotonic() + timeout
        seen = 0
        with self._lines_changed:
            while True:
                for line in self.lines[seen:]:
                    if test(line):
                        return line
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"timed out after {timeout} s waiting for a log line {predicate!r}:\n"
                                         + "\n".join(self.lines[-20:]))
                self._lines_changed.wait(left)

    def internal_errors(self) -> list[str]:
        return [line for line in self.log().splitlines() if "#critical]" in line or "#error]" in line]


async def _ended(work: defer.Deferred[Any] | None, what: str) -> None:
    """Wait until ``work`` has fired (its outcome is the loop's own: not looked at); TimeoutError after
    ``STOP_TIMEOUT``."""
    from twisted.internet import reactor

    if work is None or work.called:
        return
    done: defer.Deferred[None] = defer.Deferred()
    work.addBoth(lambda _: None if done.called else done.callback(None))
    timer = reactor.callLater(STOP_TIMEOUT, lambda: done.called or done.errback(
        TimeoutError(f"{what} did not end within {STOP_TIMEOUT:g} s")))
    try:
        await done
    finally:
        if timer.active():
            timer.cancel()


def _forget_shutdown_triggers(reactor: Any, owned: set[int]) -> None:
    """Drop the reactor shutdown triggers of a stopped app's loops (they would pile up, one set per test).

    The loops register them themselves and keep no handle; this reads the reactor's trigger lists.
    """
    for event in getattr(reactor, "_eventTriggers", {}).values():
        for phase in (event.before, event.during, event.after):
            phase[:] = [t for t in phase if id(getattr(t[0], "__self__", None)) not in owned]


class _ClosingTransport(StringTransport):
    """A ``StringTransport`` that says when the site closes the connection (its answer is then complete)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed: defer.Deferred[None] = defer.Deferred()

    def loseConnection(self) -> None:
        super().loseConnection()
        if not self.closed.called:
            self.closed.callback(None)


# -- the client side: http.client over the in-memory exchange --------------------------------------


class _InMemorySocket:
    """What ``http.client`` needs of a socket: it collects the request, and its ``makefile`` is the answer."""

    def __init__(self, app: App, source: str, timeout: float) -> None:
        self.app = app
        self.source = source
        self.timeout = timeout
        self.sent: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sent.append(bytes(data))

    def makefile(self, mode: str = "rb", *args: Any, **kwargs: Any) -> io.BytesIO:
        request, self.sent = b"".join(self.sent), []
        return io.BytesIO(self.app.exchange(request, self.source, self.timeout))

    def close(self) -> None:
        pass

    def setsockopt(self, *args: Any) -> None:
        pass


class InMemoryConnection(http.client.HTTPConnection):
    """An ``HTTPConnection`` whose socket is an exchange with the app; every request says ``Connection: close``,
    so the app closes the connection once the answer is out, and that is how the answer is known complete."""

    def __init__(self, app: App, source: str, host: str, timeout: float = CALL_TIMEOUT) -> None:
        super().__init__(host, timeout=timeout)
        self.app = app
        self.source = source

    def connect(self) -> None:
        self.sock = _InMemorySocket(self.app, self.source, self.timeout or CALL_TIMEOUT)  # type: ignore[assignment]

    def putrequest(self, method: str, url: str, *args: Any, **kwargs: Any) -> None:
        self._says_close = False
        super().putrequest(method, url, *args, **kwargs)

    def putheader(self, header: str | bytes, *values: Any) -> None:
        name = header.decode("latin-1") if isinstance(header, bytes) else header
        self._says_close = self._says_close or name.lower() == "connection"
        super().putheader(header, *values)

    def endheaders(self, *args: Any, **kwargs: Any) -> None:
        if not self._says_close:
            self.putheader("Connection", "close")
        super().endheaders(*args, **kwargs)


class InMemoryTransport(xmlrpc.client.Transport):
    """``xmlrpc.client``'s own transport (headers, basic auth from the URL, gzip, parsing), over
    :class:`InMemoryConnection` instead of a TCP connection."""

    def __init__(self, app: App, source: str = "127.0.0.1", timeout: float = CALL_TIMEOUT, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.app = app
        self.source = source
        self.timeout = timeout

    def make_connection(self, host: Any) -> http.client.HTTPConnection:
        if self._connection and host == self._connection[0]:
            return self._connection[1]
        chost, self._extra_headers, _x509 = self.get_host_info(host)
        self._connection = host, InMemoryConnection(self.app, self.source, chost, timeout=self.timeout)
        return self._connection[1]


# -- databases -------------------------------------------------------------------------------------


class Databases:
    """This test process's database names whose startup indexes exist, emptied between tests.

    The first app on a new name creates its indexes (~35: 0.2 to 0.7 s on a loaded machine); an app on a
    name given back starts in ~0.05 s.  A name is given back emptied -- ``delete_many`` in every
    collection, indexes kept -- when its indexes are still exactly the daemon's; a test that changed them
    (dropped, added, a collection with other indexes) makes it dropped instead.
    """

    def __init__(self, mongo: Any, prefix: str) -> None:
        self.mongo = mongo
        self.prefix = prefix
        self.free: list[str] = []
        self.made = 0

    def take(self) -> str:
        if self.free:
            return self.free.pop()
        self.made += 1
        return f"{self.prefix}_{self.made}"

    def give_back(self, name: str, reuse: bool = True) -> None:
        database = self.mongo[name]
        if reuse and self._indexes_intact(database):
            for collection in database.list_collection_names():
                if not collection.startswith("system."):
                    database[collection].delete_many({})
            self.free.append(name)
        else:
            self.mongo.drop_database(name)

    @staticmethod
    def _indexes_intact(database: Any) -> bool:
        """Whether every collection has the daemon's indexes and no other (counted: one command)."""
        from worknet.store.indexes import INDEXES

        collections = [c for c in database.list_collection_names() if not c.startswith("system.")]
        if not set(INDEXES) <= set(collections):
            return False  # the app did not get as far as its indexes (or a test dropped a collection)
        expected = sum(1 + len(INDEXES.get(c, ())) for c in collections)
        return int(database.command("dbStats").get("indexes", -1)) == expected
