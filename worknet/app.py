"""A serving process: its HTTP resource tree (``/RPC2`` and ``/``, ``/health``, ``/metrics``) and its
service tree (:func:`build_app`, used by the single-process daemon, worknet/tap.py, and by each
``--workers`` process, worknet/workers.py), with the services that order its shutdown."""

from __future__ import annotations

import functools
import gc
import json
import signal
from collections.abc import Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST
from twisted.application import service
from twisted.internet import defer
from twisted.web import http, resource, server

from worknet.config import Settings
from worknet.logs import logger
from worknet.rpc.channel import GuardedSite, connection_cap, raise_file_limit
from worknet.rpc.metrics import Metrics, render
from worknet.rpc.resource import RPCRoot, authorized, refuse_unauthorized, request_factory
from worknet.services import build_services

log = logger("worknet.app")


class Health(resource.Resource):
    """``GET /health``: 200 when the database answers a ping and the startup indexes exist.

    503 otherwise, with ``status``: ``"starting"`` while the indexes are being
    created, ``"degraded"`` while the database cannot be used; then ``cause``
    says why when the daemon knows (wrong credentials, a TLS failure, a
    plaintext connection to a TLS server, a startup index that cannot be
    created, a full disk), in the same words as the log line; ``warnings``
    lists what the operator should know while it serves (low free space in
    the embedded database's directory, before it stops the database; search
    catching up with other writers), at any status.  Open to all.
    """

    isLeaf = True

    def __init__(self, store: Any) -> None:
        super().__init__()
        self.store = store

    def render_GET(self, request: server.Request) -> Any:
        if not self.store.is_ready and getattr(self.store, "refused", None):
            # refused, and known why: answer at once (an index conflict means the database itself answers)
            d: defer.Deferred[bool] = defer.succeed(bool(getattr(self.store, "index_problem", None)))
        else:
            d = defer.ensureDeferred(self.store.ping())
        finished: list = []
        request.notifyFinish().addBoth(finished.append)  # a probe may hang up before the answer

        def answer(connected: bool) -> None:
            if finished:
                return
            serving = connected and self.store.is_ready
            cause = getattr(self.store, "cause", None)
            request.setResponseCode(200 if serving else 503)
            request.setHeader(b"content-type", b"application/json")
            if serving:
                status = "ok"
            elif connected and cause is None:
                status = "starting"
            else:
                status = "degraded"
            body: dict[str, Any] = {"status": status, "mongodb": "connected" if connected else "disconnected"}
            if not serving and cause:
                body["cause"] = cause
            elif status == "degraded":
                body["cause"] = "the database does not answer"
            warnings = list(getattr(self.store, "health_warnings", []))
            if warnings:  # low free space before the disk is full, search catching up with other writers
                body["warnings"] = warnings
            request.write(json.dumps(body).encode())
            request.finish()

        d.addCallback(answer)
        return server.NOT_DONE_YET


class MetricsPage(resource.Resource):
    """``GET /metrics``: Prometheus text format (requires the token when one is set)."""

    isLeaf = True

    def __init__(self, metrics: Metrics, settings: Settings, gauges: Gauges) -> None:
        super().__init__()
        self.metrics = metrics
        self.settings = settings
        self.gauges = gauges

    def render_GET(self, request: server.Request) -> bytes:
        if not authorized(request, self.settings.rpc_auth_token):
            return refuse_unauthorized(request, self.metrics)
        self.gauges.refresh()
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        return render(self.metrics)


class Gauges:
    """The gauges of ``/metrics`` that are read, not counted: the database (from the store), the password
    pool's jobs, the HTTP connections (from the site).

    Read at each scrape.  In a ``--workers`` process they are also written
    every second (:func:`build_app` parents a timer): whichever worker answers
    a scrape renders every worker's values from the shared files
    (worknet/workers.py), so each worker keeps its own current there.
    """

    def __init__(self, metrics: Metrics, store: Any, settings: Settings, jobs: dict[str, int]) -> None:
        self.metrics = metrics
        self.store = store
        self.settings = settings
        self.jobs = jobs  # the password pool's outcomes so far
        self.site: GuardedSite | None = None

    def refresh(self) -> None:
        metrics, store = self.metrics, self.store
        metrics.db_connected.set(1 if store.connected else 0)
        metrics.db_pool_size.set(self.settings.mongodb_pool_size)
        metrics.db_pool_connected.set(store.open_connections())
        for outcome, count in self.jobs.items():
            metrics.password_jobs.labels(outcome).set(count)
        site = self.site
        if site is not None:
            metrics.http_connections.set(site.open_connections)
            metrics.http_dropped.labels("over_cap").set(site.refused_connections)
            metrics.http_dropped.labels("too_slow").set(site.slow_requests)


class Root(resource.Resource):
    """``/`` is the XML-RPC endpoint too; other paths are 404."""

    def __init__(self, rpc: RPCRoot) -> None:
        super().__init__()
        self.rpc = rpc

    def getChild(self, path: bytes, request: server.Request) -> resource.Resource:
        if path == b"":
            return self.rpc
        return resource.NoResource()


class QuietSite(GuardedSite):
    """No access log: the dispatcher already logs one line per call."""

    gauges: Gauges

    def log(self, request: http.Request) -> None:
        pass


class SequentialMultiService(service.MultiService):
    """Stops its children one after the other, in reverse order, each waiting for the previous.

    (``MultiService`` stops them all at once.)  The daemon's order: listener,
    drain of in-flight calls, background loops, database pool, embedded
    database (see :func:`build_app`).
    """

    async def stopService(self) -> None:
        service.Service.stopService(self)
        for child in reversed(list(self)):
            await defer.maybeDeferred(child.stopService)


class GracefulTermination(service.Service):
    """SIGTERM is the normal way to stop the daemon: a clean shutdown, then exit code 0.

    (twistd re-raises the stopping signal at exit, which supervisors read as a crash.)
    Installed once the reactor runs, replacing the reactor's own SIGTERM handler.
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def startService(self) -> None:
        super().startService()
        # After the reactor has installed its own handlers (it does so when it starts running).
        self.reactor.callWhenRunning(signal.signal, signal.SIGTERM, self._terminate)

    def _terminate(self, signum: int, frame: Any) -> None:
        self.reactor.callFromThread(self._stop)

    def _stop(self) -> None:
        if self.reactor.running:
            log.info("Received SIGTERM, shutting down.")  # as Twisted logs SIGINT
            self.reactor.stop()


class DrainService(service.Service):
    """On stop, waits (up to ``timeout`` seconds) for in-flight XML-RPC calls to finish."""

    name = "drain"

    def __init__(self, site: server.Site, timeout: float, reactor: Any) -> None:
        self.site = site
        self.timeout = timeout
        self.reactor = reactor

    async def stopService(self) -> None:
        super().stopService()
        rpc: RPCRoot = self.site.resource.rpc
        d = rpc.dispatcher.drained()
        d.addTimeout(self.timeout, self.reactor)
        try:
            await d
        except defer.TimeoutError:
            pass


class CloseConnections(service.Service):
    """On stop (after the drain), closes every HTTP connection cleanly and waits for them (<= 5 s).

    ``loseConnection`` sends what is still buffered -- the answers of the calls
    the drain waited for -- before closing; the reactor's own shutdown would
    drop those buffers and reset the connections.
    """

    name = "close-connections"

    def __init__(self, site: Any, reactor: Any, timeout: float = 5.0) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.open: set[Any] = set()
        self._empty: list[defer.Deferred[None]] = []
        build = site.buildProtocol

        def buildProtocol(addr: Any) -> Any:
            channel = build(addr)
            if channel is not None:
                lost = channel.connectionLost

                def connectionLost(reason: Any) -> None:
                    self.open.discard(channel)
                    if not self.open:
                        waiting, self._empty = self._empty, []
                        for d in waiting:
                            d.callback(None)
                    lost(reason)

                channel.connectionLost = connectionLost
                self.open.add(channel)
            return channel

        site.buildProtocol = buildProtocol

    async def stopService(self) -> None:
        super().stopService()
        if not self.open:
            return
        d: defer.Deferred[None] = defer.Deferred()
        self._empty.append(d)
        for channel in list(self.open):
            inner = getattr(channel, "_channel", channel)  # the HTTP/1.1-or-2 wrapper's channel
            transport = getattr(inner, "transport", None)
            if transport is not None:
                transport.loseConnection()
        d.addTimeout(self.timeout, self.reactor)
        try:
            await d
        except defer.TimeoutError:
            pass


def freeze_startup_objects(reactor: Any) -> None:
    """Once the reactor runs, hide every object made so far (modules, classes, the service tree:
    some 70,000) from the garbage collector (``gc.freeze``): a full collection then walks only
    what the calls made. Walking them all took 45 ms here, a pause every call in flight waits for."""
    reactor.callWhenRunning(gc.freeze)


def build_site(store: Any, settings: Settings, reactor: Any = None) -> QuietSite:
    """The HTTP site over ``store``: the resource tree and the XML-RPC services.

    Its background work is not started here: that is :func:`build_app`'s tree.
    """
    metrics = Metrics()
    services = build_services(store, settings)
    gauges = Gauges(metrics, store, settings, services["usersService"].passwords.pool.jobs)
    rpc = RPCRoot(store, settings, metrics, services, reactor=reactor)
    root = Root(rpc)
    root.putChild(b"RPC2", rpc)
    root.putChild(b"health", Health(store))
    root.putChild(b"metrics", MetricsPage(metrics, settings, gauges))
    # Idle keep-alive connections are closed (Twisted's default is 12 hours), requests must arrive
    # whole in time (no slowloris), and connections are capped below the open-files limit.
    cap = connection_cap(settings.rpc_max_connections, raise_file_limit(), settings.mongodb_pool_size)
    # With a caller token, a request without it is answered 401 once its headers are in: its body is never read.
    token = settings.rpc_auth_token
    site = QuietSite(root, idle_timeout=settings.rpc_idle_timeout_seconds,
                     read_timeout=settings.rpc_read_timeout_seconds, max_connections=cap, reactor=reactor,
                     authorize=functools.partial(authorized, token=token) if token else None)
    gauges.site = site
    site.gauges = gauges
    site.requestFactory = request_factory(settings.rpc_max_body)
    site.displayTracebacks = False
    site.noisy = False
    return site


class App(SequentialMultiService):
    """The service tree of one serving process (:func:`build_app`), with its ``store`` and its ``site``."""

    def __init__(self, store: Any, site: QuietSite) -> None:
        super().__init__()
        self.store = store
        self.site = site


def build_app(settings: Settings, uri: Callable[[], str], reactor: Any, *, data_dir: str | None = None,
              worker: bool = False) -> App:
    """The service tree of one serving process: the daemon (one process), or one ``--workers`` process.

    Its children, in start order (stopped in reverse, each after the
    previous): the store (``uri()`` read when it starts; ``data_dir``: the
    embedded database's directory, whose free space it watches), the
    password pool, the catalogue's compactor, the change-stream follower
    (:mod:`worknet.follow`), in a worker the gauges' timer and the closing of
    connections, then the drain of in-flight calls.  The caller parents the
    listener (serving ``app.site``) last, so that it stops first; the
    background loops stop before the store, the store last.

    ``worker``: a ``--workers`` process (worknet/workers.py): its gauges are
    written to the shared metrics files every second, and on stop, after the
    drain, its connections are closed cleanly.
    """
    from twisted.application.internet import TimerService

    from worknet.catalogue import Compactor
    from worknet.follow import Follower
    from worknet.store import MongoStore

    store = MongoStore(settings, uri, reactor=reactor, data_dir=data_dir)
    site = build_site(store, settings, reactor=reactor)
    app = App(store, site)
    store.setServiceParent(app)
    site.resource.rpc.getSubHandler("usersService").passwords.pool.setServiceParent(app)
    Compactor(store, reactor).setServiceParent(app)
    Follower(store, reactor).setServiceParent(app)  # other writers' gig changes reach search
    if worker:
        gauges = TimerService(1.0, site.gauges.refresh)
        gauges.clock = reactor
        gauges.setName("gauges")
        gauges.setServiceParent(app)
        CloseConnections(site, reactor).setServiceParent(app)
    DrainService(site, settings.db_timeout_seconds * 2, reactor).setServiceParent(app)
    return app
