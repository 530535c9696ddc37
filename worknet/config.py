"""Settings: environment variables plus an optional ``.env`` file.

Every daemon setting (``ENV_VARIABLES``) is read here, once, at startup,
converted to its type and checked.  A bad value stops the daemon with one line
naming the variable (``ConfigError``); nothing downstream reads a setting from
``os.environ``.  The few other variables are read where they are used:
``NOTIFY_SOCKET`` (systemd's readiness socket, worknet/tap.py),
``PROMETHEUS_MULTIPROC_DIR`` (set by the ``--workers`` parent for its workers,
worknet/rpc/metrics.py) and ``WORKNET_TEST_CLOCK_FILE`` (a movable clock, under
``NODE_ENV=test`` only, worknet/security.py); the environment is passed on,
filtered, to the workers (every setting left out: theirs come over stdin,
worknet/workers.py) and to the embedded database (``CHILD_ENVIRONMENT`` only,
worknet/store/embedded.py).  The command-line tools read their own:
``python -m worknet.catalogue`` (``MONGODB_URI``, ``DB_NAME``, ``DATA_DIR``,
``NODE_ENV``, from the environment or ``.env``) and ``python -m worknet.demo``
(``RPC_AUTH_TOKEN``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING

from dotenv import dotenv_values

from worknet.errors import ConfigError

if TYPE_CHECKING:
    from worknet.store.connect import Target

DEFAULT_DB_NAME = "worknet"
DEFAULT_DB_TIMEOUT_SECONDS = 5.0
DB_TIMEOUT_RANGE = (0.1, 120.0)
DEFAULT_JWT_SECRET = "your-secret-key-change-in-production"  # noqa: S105 - the seed's placeholder, refused outside development
MIN_JWT_SECRET_BYTES = 32
# RPC_MAX_VALUES at least: room for the largest single call (gigsService.create with every list full: 51 values).
MIN_MAX_VALUES = 100
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
ENVIRONMENTS = ("development", "test", "production", "staging")


__all__ = ["ConfigError", "Settings", "database_names", "load_settings", "startup_lines"]


@dataclass(frozen=True)
class Settings:
    rpc_host: str = "127.0.0.1"
    rpc_port: int = 8000
    rpc_listen: str = ""
    rpc_auth_token: str = field(default="", repr=False)
    rpc_max_body: int = 1024 * 1024
    rpc_max_multicall: int = 1000
    rpc_max_values: int = 10_000
    rpc_max_answer: int = 8 * 1024 * 1024
    rpc_idle_timeout_seconds: float = 120.0
    rpc_read_timeout_seconds: float = 10.0
    rpc_max_connections: int = 0  # 0: as many as the open-files limit leaves room for
    mongodb_uri: str = field(default="", repr=False)
    db_name: str = DEFAULT_DB_NAME  # DB_NAME, else the URI's path, else worknet (resolved by load_settings)
    mongodb_pool_size: int = 10  # MONGODB_POOL_SIZE, else the URI's maxPoolSize/minPoolSize, else 10
    db_timeout_seconds: float = DEFAULT_DB_TIMEOUT_SECONDS  # DB_TIMEOUT_SECONDS, else timeoutMS/socketTimeoutMS
    data_dir: str = "var/db"
    data_dir_min_free_mb: int = 256  # below this, /health warns (embedded database); 0: no warning
    embedded_max_memory_mb: int = 256  # past this resident size the embedded database is restarted; 0: never
    jwt_secret: str = field(default=DEFAULT_JWT_SECRET, repr=False)
    jwt_expires_in_days: int = 7
    jwt_refresh_expires_in_days: int = 30
    platform_fee_percent: Decimal = Decimal("20")
    node_env: str = "production"
    log_level: str = "INFO"
    log_file: str = "rpc_server.log"
    bcrypt_rounds: int = 12
    rpc_workers: int = 1

    @property
    def listen(self) -> str:
        """The Twisted endpoint string the XML-RPC server listens on."""
        if self.rpc_listen:
            return self.rpc_listen
        host = self.rpc_host.replace(":", "\\:")
        return f"tcp:{self.rpc_port}:interface={host}"

    @property
    def development(self) -> bool:
        return self.node_env == "development"

    @property
    def embedded_database(self) -> bool:
        """True when the daemon runs its own SecantusDB child process."""
        return not self.mongodb_uri


def _memory_cap(name: str, raw: str) -> int:
    """0 (never), or a resident size in MB above what the embedded database needs to start (32 MB)."""
    value = _int(name, raw, 0, 100_000_000)
    if 0 < value < 32:
        raise ConfigError(f"{name} must be 0 (no limit) or at least 32 (MB), not {raw!r}")
    return value


def _int(name: str, raw: str, low: int, high: int) -> int:
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def _float(name: str, raw: str, low: float, high: float) -> float:
    try:
        value = float(raw.strip())
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not low <= value <= high:
        raise ConfigError(f"{name} must be between {low} and {high}, got {value}")
    return value


def workers(name: str, raw: str) -> int:
    """``auto`` (the CPU count) or a whole number of reactor processes, 1-64."""
    if raw.strip().lower() == "auto":
        return max(1, min(64, os.cpu_count() or 1))
    return _int(name, raw, 1, 64)


def _choice(name: str, raw: str, choices: tuple[str, ...], *, upper: bool = False) -> str:
    value = raw.strip().upper() if upper else raw.strip().lower()
    if value not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
    return value


def _percent(name: str, raw: str) -> Decimal:
    try:
        value = Decimal(raw.strip())
    except InvalidOperation:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value.is_finite() or not Decimal(0) <= value <= Decimal(100):
        raise ConfigError(f"{name} must be between 0 and 100, got {raw!r}")
    return value


_PARSERS = {
    "RPC_HOST": ("rpc_host", lambda n, v: v.strip()),
    "RPC_PORT": ("rpc_port", lambda n, v: _int(n, v, 0, 65535)),
    "RPC_LISTEN": ("rpc_listen", lambda n, v: v.strip()),
    "RPC_AUTH_TOKEN": ("rpc_auth_token", lambda n, v: v.strip()),
    "RPC_MAX_BODY": ("rpc_max_body", lambda n, v: _int(n, v, 1024, 64 * 1024 * 1024)),
    "RPC_MAX_MULTICALL": ("rpc_max_multicall", lambda n, v: _int(n, v, 1, 100_000)),
    "RPC_MAX_VALUES": ("rpc_max_values", lambda n, v: _int(n, v, MIN_MAX_VALUES, 10_000_000)),
    "RPC_MAX_ANSWER": ("rpc_max_answer", lambda n, v: _int(n, v, 64 * 1024, 1024 * 1024 * 1024)),
    "RPC_IDLE_TIMEOUT_SECONDS": ("rpc_idle_timeout_seconds", lambda n, v: _float(n, v, 0.5, 86400)),
    "RPC_READ_TIMEOUT_SECONDS": ("rpc_read_timeout_seconds", lambda n, v: _float(n, v, 0.5, 3600)),
    "RPC_MAX_CONNECTIONS": ("rpc_max_connections", lambda n, v: _int(n, v, 0, 10_000_000)),
    "MONGODB_URI": ("mongodb_uri", lambda n, v: v.strip()),
    "DB_NAME": ("db_name", lambda n, v: v.strip()),
    "MONGODB_POOL_SIZE": ("mongodb_pool_size", lambda n, v: _int(n, v, 1, 200)),
    "DB_TIMEOUT_SECONDS": ("db_timeout_seconds", lambda n, v: _float(n, v, *DB_TIMEOUT_RANGE)),
    "DATA_DIR": ("data_dir", lambda n, v: v.strip()),
    "DATA_DIR_MIN_FREE_MB": ("data_dir_min_free_mb", lambda n, v: _int(n, v, 0, 100_000_000)),
    "EMBEDDED_MAX_MEMORY_MB": ("embedded_max_memory_mb", _memory_cap),
    "JWT_SECRET": ("jwt_secret", lambda n, v: v),
    "JWT_EXPIRES_IN_DAYS": ("jwt_expires_in_days", lambda n, v: _int(n, v, 1, 365)),
    "JWT_REFRESH_EXPIRES_IN_DAYS": ("jwt_refresh_expires_in_days", lambda n, v: _int(n, v, 1, 3650)),
    "PLATFORM_FEE_PERCENT": ("platform_fee_percent", _percent),
    "NODE_ENV": ("node_env", lambda n, v: _choice(n, v, ENVIRONMENTS)),
    "LOG_LEVEL": ("log_level", lambda n, v: _choice(n, v, LOG_LEVELS, upper=True)),
    "LOG_FILE": ("log_file", lambda n, v: v.strip()),
    "BCRYPT_ROUNDS": ("bcrypt_rounds", lambda n, v: _int(n, v, 4, 16)),
    "RPC_WORKERS": ("rpc_workers", workers),
}

ENV_VARIABLES = tuple(_PARSERS)
# Variables whose empty value is a choice, not "unset": LOG_FILE= turns the foreground log file off
# (systemd and Docker leave the log to the journal / the container runtime).
EMPTY_MEANS_NONE = ("LOG_FILE",)


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: str | None = None,
    overrides: Mapping[str, object] | None = None,
) -> Settings:
    """Build the settings from ``.env`` (if any), then the environment, then overrides.

    The environment wins over the file, as with every twelve-factor tool;
    ``overrides`` are the daemon's command-line options and win over both.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, str] = {}
    path = Path(env_file) if env_file else Path(".env")
    if env_file and not path.is_file():
        raise ConfigError(f"--env-file {env_file}: no such file")
    if path.is_file():
        values.update({k: v for k, v in dotenv_values(path).items() if v is not None})
    values.update({k: v for k, v in environ.items() if k in _PARSERS})

    kwargs: dict[str, object] = {}
    for name, raw in values.items():
        if name in _PARSERS and (raw != "" or name in EMPTY_MEANS_NONE):
            attr, parse = _PARSERS[name]
            kwargs[attr] = parse(name, raw)
    known = {f.name for f in fields(Settings)}
    for attr, value in (overrides or {}).items():
        if attr not in known:
            raise ConfigError(f"unknown setting {attr}")
        if value is not None:
            kwargs[attr] = value
    settings = Settings(**kwargs)  # type: ignore[arg-type]
    settings = _from_uri(settings, explicit=set(kwargs))
    check(settings)
    return settings


def _target(settings: Settings) -> Target | None:
    """What ``MONGODB_URI`` says (parsed once, cached), or None for the embedded database."""
    if not settings.mongodb_uri:
        return None
    from worknet.store.connect import parse  # parsed once (cached): the store reuses the result

    return parse(settings.mongodb_uri, settings.node_env)


def _from_uri(settings: Settings, explicit: set[str]) -> Settings:
    """The database name, pool size and call deadline the URI gives, where no variable or option set them."""
    target = _target(settings)
    if target is None:
        return settings
    from worknet.store import connect

    changes: dict[str, object] = {}
    if "db_name" not in explicit:
        changes["db_name"] = target.database or DEFAULT_DB_NAME
    if "mongodb_pool_size" not in explicit:
        changes["mongodb_pool_size"] = connect.pool_size(target)[0]
    if "db_timeout_seconds" not in explicit:
        changes["db_timeout_seconds"] = connect.call_timeout(target, DEFAULT_DB_TIMEOUT_SECONDS, *DB_TIMEOUT_RANGE)[0]
    return replace(settings, **changes)  # type: ignore[arg-type]


def database_names(uri: str | None, db_name: str | None = None, environment: str = "development") -> tuple[str, str | None]:
    """``(database, auth_database)``: where the data is, and where the URI's user authenticates (None: no user).

    The database is ``db_name`` (``DB_NAME``) when given, else the URI's
    path (as Mongoose and pymongo's ``get_default_database`` read it), else
    ``worknet``.  The user authenticates against ``authSource``, else the
    URI's path, else ``admin`` (``$external`` for X.509); for a
    ``mongodb+srv://`` URI the TXT record may still name another
    ``authSource`` (read when the daemon connects).  ``environment`` only
    matters to the TLS checks the parse makes (``tlsInsecure`` & co. are
    refused outside development/test).
    """
    target = None
    if uri:
        from worknet.store.connect import parse

        target = parse(uri, environment)
    database = db_name or (target.database if target is not None else None) or DEFAULT_DB_NAME
    return database, target.authenticates_against if target is not None else None


def startup_lines(settings: Settings) -> list[str]:
    """The lines the daemon logs once at startup about ``MONGODB_URI``: options accepted and ignored,
    values bounded or overridden, and which database holds the data and which authenticates."""
    target = _target(settings)
    if target is None:
        return []
    from worknet.store import connect

    lines = list(target.notices)
    size, note = connect.pool_size(target)
    if (target.max_pool_size is not None or target.min_pool_size is not None) and settings.mongodb_pool_size != size:
        lines.append(f"MONGODB_POOL_SIZE / --pool-size sets the pool ({settings.mongodb_pool_size} connections), "
                     "not the URI's maxPoolSize/minPoolSize")
    elif note:
        lines.append(note)
    deadline, note = connect.call_timeout(target, DEFAULT_DB_TIMEOUT_SECONDS, *DB_TIMEOUT_RANGE)
    if target.call_timeout is not None and settings.db_timeout_seconds != deadline:
        lines.append(f"DB_TIMEOUT_SECONDS sets the per-call deadline ({settings.db_timeout_seconds:g} s), "
                     f"not the URI's {target.call_timeout_option}")
    elif note:
        lines.append(note)
    auth = target.authenticates_against
    if auth is not None and target.srv and not target.auth_source:
        auth += f" unless the TXT record of {target.srv} names an authSource (Atlas's names admin)"
    if target.database and settings.db_name != target.database:
        lines.append(f"database {settings.db_name} (DB_NAME) holds the data; the URI's path {target.database} "
                     "is not used for data" + (f"; the user authenticates against {auth}" if auth else ""))
    elif target.database:
        lines.append(f"database {settings.db_name}, as the URI's path names it"
                     + (f"; the user authenticates against {auth}" if auth else ""))
    elif auth:
        lines.append(f"database {settings.db_name}; the user authenticates against {auth}")
    return lines


def check(settings: Settings) -> None:
    """Refuse settings that are unsafe outside development."""
    _target(settings)  # the URI's checks (refused options, files): parsed once, cached
    if not settings.db_name or any(c in settings.db_name for c in '/\\. "$'):
        raise ConfigError(f"DB_NAME must be a plain database name, got {settings.db_name!r}")
    if not settings.development:
        if settings.jwt_secret == DEFAULT_JWT_SECRET:
            raise ConfigError(
                "JWT_SECRET is the placeholder value; set a random secret of at least "
                f"{MIN_JWT_SECRET_BYTES} bytes (or NODE_ENV=development for local use)"
            )
        if len(settings.jwt_secret.encode("utf-8")) < MIN_JWT_SECRET_BYTES:
            raise ConfigError(
                f"JWT_SECRET is shorter than {MIN_JWT_SECRET_BYTES} bytes; "
                "set a longer random secret (or NODE_ENV=development for local use)"
            )


def weak_secret(settings: Settings) -> bool:
    """True when the JWT secret would be refused outside development."""
    return (
        settings.jwt_secret == DEFAULT_JWT_SECRET
        or len(settings.jwt_secret.encode("utf-8")) < MIN_JWT_SECRET_BYTES
    )
