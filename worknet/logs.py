"""Logging: one observer for the whole process, filtered by ``LOG_LEVEL``.

:func:`observer` builds what twistd logs to (the daemon sets it as the
application's log observer, so it replaces twistd's own): every event --
WorkNet's, Twisted's, txmongo's -- goes through one level filter, then to

* the foreground: standard output, plus ``LOG_FILE`` when set;
* a daemon: twistd's ``--logfile`` (default ``twistd.log``);
* with twistd's ``--syslog``: syslog (``--prefix``).

Log files rotate at :data:`ROTATE_BYTES` (``--log-rotate-bytes``), keep
:data:`KEEP_FILES` old files (``--log-keep``),
rotate on ``SIGUSR1`` too (for logrotate), and every new file gets the mode of
the first one (twistd's daemon umask would make it 0600 otherwise).

``text`` lines are twistd's classic format with the request id after the
namespace; ``json`` is one object per line: ``time``, ``level``,
``namespace``, ``message``, and -- on a call's line -- ``request_id``,
``method``, ``duration_ms``, ``outcome``.

Request ids: the XML-RPC resource sets :data:`request_id` (a context
variable) for the duration of a call; every event a WorkNet logger emits
while it is set carries it.

The one line per call is rendered once by the dispatcher (no format string
parsed per observer) and waits for its batch: every destination is written
0.2 s after the first line of a batch, at 64 KiB, at shutdown and at exit;
any other line (startup, warnings, errors) goes out at once with the batch
before it.  A text line's timestamp is formatted once per second.  One line
per call must not cost a write system call and a ``strftime`` per call.

With ``--workers``, each worker formats its lines as this observer would
(namespace ``worknet.worker.<n>``) and writes them to the parent in batches;
the parent relays each batch as it is (:meth:`ProcessLog.relay`).
"""

from __future__ import annotations

import atexit
import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO, Any

from twisted.logger import (
    ILogObserver,
    Logger,
    LogLevel,
    LogLevelFilterPredicate,
    PredicateResult,
    formatEvent,
    formatEventAsClassicLogText,
    formatTime,
)
from twisted.python import threadable
from twisted.python.logfile import LogFile
from zope.interface import implementer

ROTATE_BYTES = 10_000_000
KEEP_FILES = 5
FORMATS = ("text", "json")
LEVELS = {
    "DEBUG": LogLevel.debug,
    "INFO": LogLevel.info,
    "WARNING": LogLevel.warn,
    "ERROR": LogLevel.error,
    "CRITICAL": LogLevel.critical,
}
# Chatty at INFO (a "Starting factory <... at 0x...>" line per pooled connection): shown with DEBUG only.
QUIET_NAMESPACES = ("txmongo",)

request_id: ContextVar[str | None] = ContextVar("worknet_request_id", default=None)
# A call's log line is written at most this long after the call (its batch's first line).
BATCH_SECONDS = 0.2
# The key of an event's message rendered by the caller (see ``info_rendered``).
RENDERED = "worknet_text"


class _RequestIds:
    """16 random hex digits (64 bits) per id: an id tells nothing about the calls made before it.

    (``<prefix>-<counter>`` told a caller how many calls others made between two of its own.)
    The random bytes come from ``os.urandom`` :data:`BATCH` ids at a time, cut into ids once:
    one system call per 4,096 requests, a ``list.pop`` per request (as cheap as the counter was).
    """

    BATCH = 4096
    DIGITS = 16

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.ready: list[str] = []

    def take(self) -> str:
        ready = self.ready
        if not ready:
            pool = os.urandom(self.BATCH * self.DIGITS // 2).hex()
            ready = self.ready = [pool[i:i + self.DIGITS] for i in range(0, len(pool), self.DIGITS)]
        return ready.pop()


_ids = _RequestIds()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ids.reset)  # a forked worker never reuses its parent's random bytes

_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def new_request_id(offered: str | None = None) -> str:
    """The caller's own ``X-Request-Id`` when it is a short plain token, else a fresh id."""
    if offered and _CALLER_ID.fullmatch(offered):
        return offered
    return _ids.take()


class _Logger(Logger):
    def emit(self, level: LogLevel, format: str | None = None, **kwargs: Any) -> None:
        rid = request_id.get()
        if rid is not None:
            kwargs.setdefault("request_id", rid)
        super().emit(level, format, **kwargs)

    def rendered(self, level: LogLevel, text: str, **fields: Any) -> None:
        """An event whose message is ``text`` as it stands (no format fields: braces are kept).

        The text observers write it as it is instead of parsing it as a format string (the
        one-line-per-call log must stay cheap); ``fields`` stay in the event for the others.
        The event has the keys ``Logger.emit`` gives it; ``level`` is one of ``LogLevel``'s
        constants (``emit`` would check that against all of them on every call)."""
        rid = request_id.get()
        if rid is not None:
            fields.setdefault("request_id", rid)
        fields.update(log_logger=self, log_level=level, log_namespace=self.namespace, log_source=self.source,
                      log_format=text.replace("{", "{{").replace("}", "}}"), log_time=time.time())
        fields[RENDERED] = text
        self.observer(fields)

    def info_rendered(self, text: str, **fields: Any) -> None:
        self.rendered(LogLevel.info, text, **fields)


def logger(namespace: str) -> _Logger:
    """A Logger whose events carry the current request id (filtered by the process observer)."""
    return _Logger(namespace=namespace)


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
    """A stream written in batches: ``write`` collects, :meth:`drain` writes the batch out --
    ``interval`` seconds after the first line of a batch (a reactor timer), at ``limit``
    characters, and at exit."""

    def __init__(self, stream: Any, interval: float | None = None, limit: int = 65536) -> None:
        self.stream = stream
        self.interval = BATCH_SECONDS if interval is None else interval
        self.limit = limit
        self.pending: list[str] = []
        self.size = 0
        self.timer: Any = None
        self.lock = threading.Lock()
        atexit.register(self.drain)

    def write(self, text: str) -> None:
        with self.lock:
            self.pending.append(text)
            self.size += len(text)
            full = self.size >= self.limit
            idle = self.timer is None
            if idle and not full:
                self.timer = True  # a drain is on its way
        if full:
            self.drain()
        elif idle:
            from twisted.internet import reactor

            if threadable.isInIOThread():
                self.timer = reactor.callLater(self.interval, self.drain)
            else:
                reactor.callFromThread(reactor.callLater, self.interval, self.drain)  # type: ignore[attr-defined]

    def drain(self) -> None:
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


# Events at these levels leave at once, with the batch before them (a crash right after loses nothing).
URGENT = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})


_clock = _SecondClock()


def text_line(event: dict) -> str | None:
    rendered = event.get(RENDERED)
    if rendered is not None and "log_failure" not in event:
        # formatEventAsClassicLogText's own layout, without running string.Formatter over the message
        level = event.get("log_level")
        rid = event.get("request_id")
        return (f"{_clock(event.get('log_time'))} [{event.get('log_namespace', '-')}#"
                f"{getattr(level, 'name', '-')}] {f'[{rid}] ' if rid else ''}{rendered}\n")
    text = formatEventAsClassicLogText(event, formatTime=_clock)
    rid = event.get("request_id")
    if text and rid:
        head, sep, tail = text.partition("] ")
        text = f"{head}] [{rid}] {tail}" if sep else text
    return text


def json_line(event: dict) -> str | None:
    level = event.get("log_level")
    when = datetime.fromtimestamp(event.get("log_time") or 0, tz=UTC)
    record: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "level": getattr(level, "name", "info"),
        "namespace": event.get("log_namespace", "-"),
        "message": event.get(RENDERED) or formatEvent(event),
    }
    for key in ("request_id", "method", "outcome"):
        value = event.get(key)
        if isinstance(value, str | int):
            record[key] = value
    if isinstance(event.get("ms"), float | int):
        record["duration_ms"] = round(event["ms"], 3)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            record["traceback"] = failure.getTraceback()
        except Exception:  # noqa: BLE001 - a log line must never fail
            record["traceback"] = repr(failure)
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def rotating_file(path: str, rotate_bytes: int = ROTATE_BYTES, keep: int = KEEP_FILES) -> LogFile:
    """A size-rotated log file whose later files keep the first one's mode."""
    directory, name = os.path.split(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    return LogFile(name, directory, rotateLength=rotate_bytes, maxRotatedFiles=keep, defaultMode=mode)


class _RememberingLevelPredicate(LogLevelFilterPredicate):
    """Twisted's level predicate, its verdict remembered per (level, namespace).

    Twisted's walks the dotted namespace and compares two constants on every
    event; the set of namespaces and levels is small and fixed by the code."""

    _verdicts: dict[tuple[Any, Any], Any]

    def clearLogLevels(self) -> None:
        super().clearLogLevels()
        self._verdicts = {}

    def setLogLevelForNamespace(self, namespace: str, level: Any) -> None:
        super().setLogLevelForNamespace(namespace, level)
        self._verdicts = {}

    def __call__(self, event: dict) -> Any:
        key = (event.get("log_level"), event.get("log_namespace"))
        verdict = self._verdicts.get(key)
        if verdict is None:
            if len(self._verdicts) > 4096:  # namespaces made up at run time: stay bounded
                self._verdicts = {}
            verdict = self._verdicts[key] = super().__call__(event)
        return verdict


def level_filter(level: str) -> LogLevelFilterPredicate:
    """``LOG_LEVEL`` for every namespace; the chatty ones at WARNING at least, unless DEBUG."""
    predicate = _RememberingLevelPredicate(defaultLogLevel=LEVELS[level])
    order = list(LEVELS.values())
    quiet = LEVELS[level] if level == "DEBUG" else max(LEVELS[level], LogLevel.warn, key=order.index)
    for namespace in QUIET_NAMESPACES:
        predicate.setLogLevelForNamespace(namespace, quiet)
    return predicate


@implementer(ILogObserver)
class ProcessLog:
    """The process's observer: every event through the level filter, formatted once, to each stream.

    Streams are written in batches (:class:`BufferedStream`): the one-per-call lines
    (rendered, INFO) wait for their batch; any other line drains it at once.
    :meth:`relay` writes lines already formatted -- by a ``--workers`` worker, with this
    format and its own filter -- to the same streams.  With ``events`` (syslog) every
    event goes to that observer instead, and nothing can be relayed (``can_relay``).
    """

    def __init__(self, level: str, formatter: Callable[[dict], str | None], streams: list[Any], *,
                 log_format: str = "text", reactor: Any = None, events: Any = None,
                 syslog_prefix: str | None = None) -> None:
        self._admits = level_filter(level)
        self._format = formatter
        self._buffers = [BufferedStream(stream) for stream in streams]
        self._events = events
        self.can_relay = events is None
        self.log_format = log_format
        self.syslog_prefix = syslog_prefix
        if reactor is not None:
            for buffered in self._buffers:
                reactor.addSystemEventTrigger("after", "shutdown", buffered.drain)

    def __call__(self, event: dict) -> None:
        if self._admits(event) is PredicateResult.no:
            return
        if self._events is not None:
            self._events(event)
            return
        text = self._format(event)
        if not text:
            return
        urgent = RENDERED not in event or event.get("log_level") in URGENT
        for buffered in self._buffers:
            buffered.write(text)
            if urgent:
                buffered.drain()

    def relay(self, text: str) -> None:
        for buffered in self._buffers:  # a worker's batch: written at once, as one
            buffered.write(text)
            buffered.drain()

    def drain(self) -> None:
        for buffered in self._buffers:
            buffered.drain()


def observer(level: str, log_format: str, *, foreground: bool, log_file: str, twistd_logfile: str | None,
             reactor: Any = None, rotate_bytes: int = ROTATE_BYTES, keep: int = KEEP_FILES,
             syslog_prefix: str | None = None) -> ProcessLog:
    """The process's one log observer (see the module docstring)."""

    def rotating(path: str) -> LogFile:
        return rotating_file(path, rotate_bytes, keep)

    streams: list[IO[str] | LogFile] = []
    files: list[LogFile] = []
    if syslog_prefix is not None:  # twistd --syslog: its syslog observer, behind the same level filter
        from twisted.logger import LegacyLogObserverWrapper
        from twisted.python.syslog import SyslogObserver

        legacy = SyslogObserver(syslog_prefix).emit  # a legacy (dict) observer, as the wrapper expects
        return ProcessLog(level, formatter(log_format), [], log_format=log_format, syslog_prefix=syslog_prefix,
                          events=LegacyLogObserverWrapper(legacy))  # type: ignore[arg-type]
    if foreground:
        if twistd_logfile and twistd_logfile != "-":
            files.append(rotating(twistd_logfile))
        else:
            streams.append(sys.stdout)
        if log_file:
            files.append(rotating(log_file))
    else:
        files.append(rotating(twistd_logfile or "twistd.log"))
    if files and reactor is not None:
        def rotate(signum: int, frame: Any) -> None:
            for f in files:
                reactor.callFromThread(f.rotate)

        signal.signal(signal.SIGUSR1, rotate)
    return ProcessLog(level, formatter(log_format), [*streams, *files], log_format=log_format, reactor=reactor)


def formatter(log_format: str) -> Any:
    """The line formatter of ``--log-format``."""
    return json_line if log_format == "json" else text_line
