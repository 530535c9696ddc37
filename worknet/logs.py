"""Logging: every worknet logger goes through one level filter (``LOG_LEVEL``).

In the foreground the daemon also writes ``rpc_server.log`` (``LOG_FILE``,
rotated at 10 MB, 5 files kept); daemonised, twistd's ``--logfile`` is the log.
The file is written in batches (every 0.2 s, at 64 KiB, and at exit) and the
timestamp of each line is formatted once per second: one line per call must
not cost a write system call and a ``strftime`` per call.
"""

from __future__ import annotations

import atexit
import os
import threading
from typing import Any

from twisted.logger import (
    FileLogObserver,
    FilteringLogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    formatEventAsClassicLogText,
    formatTime,
    globalLogPublisher,
)
from twisted.python import threadable
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


class _SecondClock:
    """RFC 3339 timestamps, formatted once per second."""

    def __init__(self) -> None:
        self.second = -1
        self.text = "-"

    def __call__(self, when: float | None) -> str:
        if when is None:
            return "-"
        second = int(when)
        if second != self.second:
            self.second, self.text = second, formatTime(when)
        return self.text


class BufferedStream:
    """A file-like front for a stream: ``write`` collects, the batch goes out every
    ``interval`` seconds (a reactor timer), at ``limit`` characters, and at exit."""

    def __init__(self, stream: Any, interval: float = 0.2, limit: int = 65536) -> None:
        self.stream = stream
        self.interval = interval
        self.limit = limit
        self.pending: list[str] = []
        self.size = 0
        self.timer: Any = None
        self.lock = threading.Lock()
        atexit.register(self.flush)

    def write(self, text: str) -> None:
        with self.lock:
            self.pending.append(text)
            self.size += len(text)
            full = self.size >= self.limit
            idle = self.timer is None
            if idle and not full:
                self.timer = True  # a flush is on its way
        if full:
            self.flush()
        elif idle:
            from twisted.internet import reactor

            if threadable.isInIOThread():
                self.timer = reactor.callLater(self.interval, self.flush)
            else:
                reactor.callFromThread(reactor.callLater, self.interval, self.flush)  # type: ignore[attr-defined]

    def flush(self) -> None:
        with self.lock:
            data, self.pending, self.size = "".join(self.pending), [], 0
            timer, self.timer = self.timer, None
        if timer not in (None, True) and timer.active():
            timer.cancel()
        if data:
            try:
                self.stream.write(data)
                self.stream.flush()
            except (OSError, ValueError):  # closed at exit, disk full: logging must not take the daemon down
                pass


def buffered_text_observer(stream: Any) -> FileLogObserver:
    """Twisted's classic text lines (as ``textFileLogObserver``), timestamps cached, writes batched."""
    clock = _SecondClock()
    buffered = BufferedStream(stream)

    def format_event(event: dict) -> str | None:
        return formatEventAsClassicLogText(event, formatTime=clock)

    observer = FileLogObserver(buffered, format_event)  # type: ignore[arg-type]  # file-like
    observer.flush = buffered.flush  # type: ignore[attr-defined]
    return observer


def configure(level: str, log_file: str, foreground: bool) -> None:
    _level.setLogLevelForNamespace("", _LEVELS[level])
    if foreground and log_file:
        directory, name = os.path.split(os.path.abspath(log_file))
        os.makedirs(directory, exist_ok=True)
        stream = LogFile(name, directory, rotateLength=10_000_000, maxRotatedFiles=5)
        observer = buffered_text_observer(stream)
        globalLogPublisher.addObserver(observer)
        from twisted.internet import reactor

        reactor.addSystemEventTrigger("after", "shutdown", observer.flush)  # type: ignore[attr-defined]
