"""``twistd worknet-rpc``: command-line options and the top of the service tree (no logic here).

The top holds the SIGTERM handler, the embedded database when there is one,
then either the serving tree (:func:`worknet.app.build_app`) with its listener,
or, with ``--workers N``, the pool of worker processes (worknet/workers.py).
"""

from __future__ import annotations

import os
import socket
import sys
from typing import Any

from twisted.application import service
from twisted.python import usage

from worknet import __version__
from worknet.config import Settings, load_settings


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = (
        "WorkNet RPC: the XML-RPC business-logic server of the WorkNet marketplace. "
        "Settings come from the environment and an optional .env file; these options override them. "
        "Without MONGODB_URI the daemon runs an embedded SecantusDB database under --data-dir."
    )
    optParameters = [
        ["listen", "l", None,
         "Twisted endpoint string to listen on (default tcp:$RPC_PORT:interface=$RPC_HOST, "
         "i.e. tcp:8000:interface=127.0.0.1); e.g. ssl:8443:privateKey=key.pem:certKey=cert.pem"],
        ["mongodb-uri", None, None, "MongoDB connection string (default $MONGODB_URI; unset: embedded database)"],
        ["db-name", None, None, "database name (default $DB_NAME, else the path of the MongoDB URI, else worknet)"],
        ["env-file", None, None, "read settings from this file instead of ./.env"],
        ["log-level", None, None, "DEBUG, INFO, WARNING, ERROR or CRITICAL (default $LOG_LEVEL or INFO)"],
        ["data-dir", None, None, "data directory of the embedded database (default $DATA_DIR or ./var/db)"],
        ["pool-size", None, None,
         "database connections in the pool (default $MONGODB_POOL_SIZE, else the URI's maxPoolSize, else 10)"],
        ["workers", None, None,
         "reactor processes sharing the listening socket: a number or auto (one per CPU); "
         "default $RPC_WORKERS or 1. More than one needs a tcp: or tcp6: --listen endpoint"],
        ["log-format", None, "text", "text (twistd's classic lines) or json (one JSON object per line)"],
        ["log-rotate-bytes", None, "10000000", "rotate a log file when it reaches this size"],
        ["log-keep", None, "5", "rotated log files kept (older ones are deleted)"],
    ]
    optFlags = [
        ["check-config", None, "check the settings and the database connection, print one line, exit (0 ok, 2 not)"],
    ]

    settings: Settings

    def opt_version(self) -> None:
        """Print WorkNet RPC's version and exit."""
        print(f"worknet-rpc {__version__}")
        raise SystemExit(0)

    def parseOptions(self, options: list[str] | None = None) -> None:
        """As usage.Options does, but a bad option is one line and exit 2 (like a bad setting), not a usage dump."""
        try:
            super().parseOptions(options)
        except usage.UsageError as e:
            _stop(f"worknet-rpc: {e} (see twistd worknet-rpc --help)")

    def postOptions(self) -> None:
        overrides: dict[str, Any] = {
            "rpc_listen": self["listen"],
            "mongodb_uri": self["mongodb-uri"],
            "db_name": self["db-name"],
            "log_level": self["log-level"].upper() if self["log-level"] else None,
            "data_dir": self["data-dir"],
        }
        try:
            if self["pool-size"] is not None:
                overrides["mongodb_pool_size"] = _option_int("--pool-size", self["pool-size"])
            if self["workers"] is not None:
                from worknet.config import workers

                overrides["rpc_workers"] = workers("--workers", self["workers"])
            self.settings = load_settings(env_file=self["env-file"], overrides=overrides)
        except ValueError as e:  # ConfigError included: one line naming the setting, no usage text
            _stop(f"worknet-rpc: configuration error: {e}")
        if self.settings.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            _stop("worknet-rpc: configuration error: --log-level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        if not 1 <= self.settings.mongodb_pool_size <= 200:
            _stop("worknet-rpc: configuration error: --pool-size must be between 1 and 200")
        if self["log-format"] not in ("text", "json"):
            _stop("worknet-rpc: configuration error: --log-format must be text or json")
        try:
            self["log-rotate-bytes"] = _option_int("--log-rotate-bytes", self["log-rotate-bytes"])
            self["log-keep"] = _option_int("--log-keep", self["log-keep"])
        except ValueError as e:
            _stop(f"worknet-rpc: configuration error: {e}")
        if self["log-rotate-bytes"] < 1000 or not 1 <= self["log-keep"] <= 1000:
            _stop("worknet-rpc: configuration error: --log-rotate-bytes must be at least 1000, "
                  "--log-keep between 1 and 1000")
        if self.settings.rpc_workers > 1:
            from worknet.workers import listen_address

            try:
                listen_address(self.settings.listen)
            except ValueError as e:
                _stop(f"worknet-rpc: configuration error: {e}")
        from worknet.startup import check_data_dir, check_listen, check_metrics_dir

        problem = check_listen(self.settings) or check_metrics_dir(self.settings)
        if self.settings.embedded_database:
            from worknet.store.embedded import MISSING_EXTRA, find_secantusd

            if find_secantusd() is None:
                problem = problem or MISSING_EXTRA
            problem = problem or check_data_dir(self.settings.data_dir)
        if problem:
            _stop(f"worknet-rpc: configuration error: {problem}")
        if self["check-config"]:
            check_config(self.settings)


LISTEN_BACKLOG = 1024  # as the --workers parent's socket (worknet/workers.py)


def with_backlog(endpoint: str) -> str:
    """``endpoint`` with a listen backlog of ``LISTEN_BACKLOG`` unless it names one.

    Twisted listens with a backlog of 50: a burst of new connections (a
    client pool warming up, 2,000 opened one after another) fills that queue
    faster than the reactor accepts, and every further SYN is dropped until
    the client resends it a second later (2,000 idle connections took 19.6 s
    here, 1.3 s with 1024).  The kernel caps it at ``net.core.somaxconn``.
    """
    kind = endpoint.partition(":")[0]
    if kind in ("tcp", "tcp6", "ssl", "unix") and "backlog=" not in endpoint:
        return f"{endpoint}:backlog={LISTEN_BACKLOG}"
    return endpoint


def _stop(line: str) -> None:
    sys.stderr.write(line + "\n")
    raise SystemExit(2)


def _option_int(option: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{option} must be a whole number, got {raw!r}") from None


def check_config(settings: Settings) -> None:
    """``--check-config``: after the startup checks (settings, listen endpoint, data directory), the database; exit.

    Runs before the reactor, so a blocking pymongo ping (and the SRV/TXT
    lookup of a ``+srv`` URI) is fine here.  It waits ``serverSelectionTimeoutMS``
    when the URI gives it, else ``DB_TIMEOUT_SECONDS``.  Never prints the
    database URI (it may hold a password): its hosts, the database that holds
    the data and the one the user authenticates against.
    """
    if settings.embedded_database:
        where = f"embedded database under {os.path.abspath(settings.data_dir)}; database {settings.db_name}"
    else:
        import pymongo

        from worknet.store import connect

        target = connect.parse(settings.mongodb_uri, settings.node_env)
        try:
            target = connect.resolve(target)
        except Exception as e:  # noqa: BLE001 - DNS: no such name, no answer
            _stop(f"worknet-rpc: database {target.where}: the SRV/TXT lookup failed ({type(e).__name__})")
        hosts = ",".join(f"{h}:{p}" for h, p in target.hosts)
        wait = target.server_selection_timeout
        if wait is None:
            wait = settings.db_timeout_seconds
        timeout_ms = max(1, int(wait * 1000))
        client: Any = pymongo.MongoClient(settings.mongodb_uri, serverSelectionTimeoutMS=timeout_ms,
                                          connectTimeoutMS=int((target.connect_timeout or wait) * 1000))
        try:
            client[settings.db_name].command("ping")
        except pymongo.errors.OperationFailure as e:
            _stop(f"worknet-rpc: database {hosts}: refused ({e.code}): check the credentials in MONGODB_URI")
        except pymongo.errors.PyMongoError:
            from worknet.startup import why_unreachable

            _stop(f"worknet-rpc: database {hosts}: {why_unreachable(list(target.hosts), wait)}")
        finally:
            client.close()
        auth = target.authenticates_against
        where = (f"database {hosts} answers; data in database {settings.db_name}"
                 + (f", user authenticated against {auth}" if auth else ", no user"))
    print(f"worknet-rpc {__version__}: configuration ok ({where}; listen {settings.listen})")
    raise SystemExit(0)


class _Notify(service.Service):
    """``Type=notify`` readiness: READY=1 to ``$NOTIFY_SOCKET`` once the port listens and the indexes exist.

    One non-blocking datagram (the systemd protocol; nothing to wait for);
    STOPPING=1 on stop.  Without ``NOTIFY_SOCKET`` it does nothing.
    """

    def __init__(self, store: Any, listener: Any) -> None:
        self.store = store
        self.listener = listener
        self.address = os.environ.get("NOTIFY_SOCKET", "")

    def _send(self, message: bytes) -> None:
        if not self.address or self.address[0] not in "/@":
            return
        target = "\0" + self.address[1:] if self.address[0] == "@" else self.address
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.setblocking(False)
            try:
                s.sendto(message, target)
            except OSError:
                pass  # no supervisor listening: nothing to tell

    def startService(self) -> None:
        super().startService()
        if self.address:
            from twisted.internet import defer

            # Nothing to report if it never serves (the daemon stops anyway): no unhandled-error noise.
            defer.ensureDeferred(self._when_serving()).addErrback(lambda _: None)

    async def _when_serving(self) -> None:
        from twisted.internet import defer

        waiting = getattr(self.listener, "_waitingForPort", None)  # documented ivar of StreamServerEndpointService
        if waiting is not None:
            listening: defer.Deferred[None] = defer.Deferred()

            def pass_on(port: Any) -> Any:
                listening.callback(None)
                return port

            waiting.addCallback(pass_on)
            await listening
        await self.store.wait_ready()
        self._send(b"READY=1\nSTATUS=serving")

    def stopService(self) -> None:
        super().stopService()
        self._send(b"STOPPING=1")


def _top_service(observer: Any) -> service.MultiService:
    """The service tree's root; it hands the log observer to twistd's application."""
    from twisted.logger import ILogObserver

    from worknet.app import SequentialMultiService

    class Top(SequentialMultiService):
        def setServiceParent(self, parent: Any) -> Any:
            # twistd makes the application, parents this service to it, then starts logging
            # to the application's ILogObserver when it has one: ours, filtered by LOG_LEVEL.
            if hasattr(parent, "setComponent"):
                parent.setComponent(ILogObserver, observer)
            return super().setServiceParent(parent)

    return Top()


def makeService(options: Options) -> service.MultiService:
    # Heavy imports here, so that `twistd --help` stays fast.
    from twisted.application.strports import service as endpoint_service
    from twisted.internet import reactor

    from worknet import logs
    from worknet.app import GracefulTermination, build_app, freeze_startup_objects
    from worknet.config import startup_lines, weak_secret
    from worknet.store.embedded import EmbeddedDatabase

    settings = options.settings
    parent = getattr(options, "parent", None)
    foreground = bool(parent is not None and parent.get("nodaemon"))
    observer = logs.observer(
        settings.log_level, options["log-format"], foreground=foreground, log_file=settings.log_file,
        twistd_logfile=parent.get("logfile") if parent is not None else None, reactor=reactor,
        rotate_bytes=options["log-rotate-bytes"], keep=options["log-keep"],
        syslog_prefix=parent.get("prefix", "twisted") if parent is not None and parent.get("syslog") else None,
    )
    log = logs.logger("worknet.tap")

    top = _top_service(observer)
    GracefulTermination(reactor).setServiceParent(top)
    freeze_startup_objects(reactor)
    if settings.embedded_database:
        embedded = EmbeddedDatabase(settings.data_dir, reactor=reactor, min_free_mb=settings.data_dir_min_free_mb,
                                    max_memory_mb=settings.embedded_max_memory_mb)
        embedded.setServiceParent(top)
        uri = lambda: embedded.uri  # noqa: E731 - the port is chosen when the service starts
    else:
        uri = lambda: settings.mongodb_uri  # noqa: E731
    if settings.rpc_workers > 1:  # N processes on one socket, one database for all (worknet/workers.py)
        from worknet.workers import WorkerPool

        WorkerPool(settings, uri, reactor=reactor, log=observer).setServiceParent(top)
    else:
        app = build_app(settings, uri, reactor, data_dir=settings.data_dir if settings.embedded_database else None)
        app.setServiceParent(top)
        if settings.embedded_database:
            embedded.holders.append(app.store)  # its planned restarts hold the store's commands
        listener = endpoint_service(with_backlog(settings.listen), app.site, reactor=reactor)
        listener.setName("xmlrpc")
        listener.setServiceParent(app)
        _Notify(app.store, listener).setServiceParent(app)

    mode = "development" if settings.development else settings.node_env
    log.info("WorkNet RPC starting ({mode} mode, {n} worker{s}) on {listen}, database {db} ({where})",
             mode=mode, n=settings.rpc_workers, s="" if settings.rpc_workers == 1 else "s",
             listen=settings.listen, db=settings.db_name,
             where="embedded SecantusDB" if settings.embedded_database else "MONGODB_URI")
    for line in startup_lines(settings):  # once per daemon, not per worker
        log.info("{line}", line=line)
    if settings.development and weak_secret(settings):
        log.warn("!!! DEVELOPMENT MODE with a weak JWT_SECRET: tokens are forgeable. "
                 "Never run like this in production. !!!")
    if settings.rpc_auth_token == "":
        log.info("RPC_AUTH_TOKEN is unset: callers are not authenticated (keep the port on a private network)")
    return top
