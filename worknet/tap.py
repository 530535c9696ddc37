"""``twistd worknet-rpc``: command-line options and the service tree (no logic here)."""

from __future__ import annotations

import sys
from typing import Any

from twisted.application import service
from twisted.python import usage

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
        ["db-name", None, None, "database name (default $DB_NAME or worknet)"],
        ["env-file", None, None, "read settings from this file instead of ./.env"],
        ["log-level", None, None, "DEBUG, INFO, WARNING, ERROR or CRITICAL (default $LOG_LEVEL or INFO)"],
        ["data-dir", None, None, "data directory of the embedded database (default $DATA_DIR or ./var/db)"],
        ["pool-size", None, None, "database connections in the pool (default $MONGODB_POOL_SIZE or 10)"],
    ]

    settings: Settings

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
            self.settings = load_settings(env_file=self["env-file"], overrides=overrides)
        except ValueError as e:  # ConfigError included: one line naming the setting, no usage text
            _stop(f"worknet-rpc: configuration error: {e}")
        if self.settings.log_level not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            _stop("worknet-rpc: configuration error: --log-level must be DEBUG, INFO, WARNING, ERROR or CRITICAL")
        if not 1 <= self.settings.mongodb_pool_size <= 200:
            _stop("worknet-rpc: configuration error: --pool-size must be between 1 and 200")
        from worknet.startup import check_data_dir, check_listen

        problem = check_listen(self.settings)
        if self.settings.embedded_database:
            from worknet.store.embedded import find_secantusd

            if find_secantusd() is None:
                problem = problem or "MONGODB_URI is unset and secantusd-py (the embedded database) is not installed"
            problem = problem or check_data_dir(self.settings.data_dir)
        if problem:
            _stop(f"worknet-rpc: configuration error: {problem}")


def _stop(line: str) -> None:
    sys.stderr.write(line + "\n")
    raise SystemExit(2)


def _option_int(option: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{option} must be a whole number, got {raw!r}") from None


def makeService(options: Options) -> service.MultiService:
    # Heavy imports here, so that `twistd --help` stays fast.
    from twisted.application.strports import service as endpoint_service
    from twisted.internet import reactor

    from worknet import logs
    from worknet.app import DrainService, GracefulTermination, SequentialMultiService, build_site
    from worknet.config import weak_secret
    from worknet.store import MongoStore
    from worknet.store.embedded import EmbeddedDatabase

    settings = options.settings
    parent = getattr(options, "parent", None)
    foreground = bool(parent is not None and parent.get("nodaemon"))
    logs.configure(settings.log_level, settings.log_file, foreground)
    log = logs.logger("worknet.tap")

    top = SequentialMultiService()
    GracefulTermination(reactor).setServiceParent(top)
    if settings.embedded_database:
        embedded = EmbeddedDatabase(settings.data_dir, reactor=reactor)
        embedded.setServiceParent(top)
        uri = lambda: embedded.uri  # noqa: E731 - the port is chosen when the service starts
    else:
        uri = lambda: settings.mongodb_uri  # noqa: E731
    store = MongoStore(settings, uri, reactor=reactor)
    store.setServiceParent(top)
    site = build_site(store, settings, reactor=reactor)
    DrainService(site, settings.db_timeout_seconds * 2, reactor).setServiceParent(top)
    listener = endpoint_service(settings.listen, site, reactor=reactor)
    listener.setName("xmlrpc")
    listener.setServiceParent(top)

    mode = "development" if settings.development else settings.node_env
    log.info("WorkNet RPC starting ({mode} mode) on {listen}, database {db} ({where})",
             mode=mode, listen=settings.listen, db=settings.db_name,
             where="embedded SecantusDB" if settings.embedded_database else "MONGODB_URI")
    if settings.development and weak_secret(settings):
        log.warn("!!! DEVELOPMENT MODE with a weak JWT_SECRET: tokens are forgeable. "
                 "Never run like this in production. !!!")
    if settings.rpc_auth_token == "":
        log.info("RPC_AUTH_TOKEN is unset: callers are not authenticated (keep the port on a private network)")
    return top
