"""Logging: every worknet logger goes through one level filter (``LOG_LEVEL``).

In the foreground the daemon also writes ``rpc_server.log`` (``LOG_FILE``,
rotated at 10 MB, 5 files kept); daemonised, twistd's ``--logfile`` is the log.
"""

from __future__ import annotations

import os

from twisted.logger import (
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    globalLogPublisher,
    textFileLogObserver,
)
from twisted.python.logfile import LogFile

_level = LogLevelFilterPredicate(defaultLogLevel=LogLevel.info)
_filtered = FilteringLogObserver(globalLogPublisher, [_level])

_LEVELS = {
    "DEBUG": LogLevel.debug,
    "INFO": LogLevel.info,
    "WARNING": LogLevel.warn,
    "ERROR": LogLevel.error,
    "CRITICAL": LogLevel.critical,
}


def logger(namespace: str) -> Logger:
    """A Logger whose events below ``LOG_LEVEL`` are dropped."""
    return Logger(namespace=namespace, observer=_filtered)


def configure(level: str, log_file: str, foreground: bool) -> None:
    _level.setLogLevelForNamespace("", _LEVELS[level])
    if foreground and log_file:
        directory, name = os.path.split(os.path.abspath(log_file))
        os.makedirs(directory, exist_ok=True)
        stream = LogFile(name, directory, rotateLength=10_000_000, maxRotatedFiles=5)
        globalLogPublisher.addObserver(textFileLogObserver(stream))  # type: ignore[arg-type]  # LogFile is file-like
