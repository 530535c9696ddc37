"""Free space in the embedded database's directory, read on a timer.

WiredTiger cannot live through a full disk: a write that finds no space
panics the library ("the process must exit and restart"), and from then on
every command -- reads too -- fails with an internal error, also after space
comes back.  So the daemon watches the free space of ``DATA_DIR``:

* below ``DATA_DIR_MIN_FREE_MB`` it is a warning (``/health`` says so, the
  log once) before the disk is full;
* a database failure while the directory is that low on space is reported as
  what it is -- ``UNAVAILABLE`` for the calls, the cause in ``/health`` and
  one log line (``MongoStore.storage_failure``);
* the embedded database's owner restarts a panicked database once there is
  room again (``EmbeddedDatabase``).

``os.statvfs`` is one cheap system call, but a stalled file system (NFS) can
block it: it runs in a thread, every ``CHECK_SECONDS``, never per request.
"""

from __future__ import annotations

import os
from typing import Any

from twisted.internet import defer, task, threads

CHECK_SECONDS = 2.0
MB = 1024 * 1024
RESTART_FLOOR_MB = 16  # a panicked database is restarted with at least this much room (recovery writes)


def free_bytes(path: str) -> int:
    """Bytes an unprivileged process may still write under ``path`` (blocking: call it in a thread)."""
    found = os.statvfs(path)
    return found.f_bavail * found.f_frsize


class DiskSpace:
    """The free space of one directory, refreshed every ``CHECK_SECONDS`` in a thread."""

    def __init__(self, path: str, min_free_mb: int, reactor: Any) -> None:
        self.path = os.path.abspath(path)
        self.min_free_mb = min_free_mb
        self.reactor = reactor
        self.free: int | None = None  # bytes, None until the first reading (or while unreadable)
        self._loop: task.LoopingCall | None = None
        self.on_reading: list[Any] = []  # callables run after each reading

    def start(self) -> None:
        self._loop = task.LoopingCall(self._read)
        self._loop.clock = self.reactor
        self._loop.start(CHECK_SECONDS, now=True).addErrback(lambda f: None)

    def stop(self) -> None:
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def _read(self) -> defer.Deferred[Any]:
        d = threads.deferToThread(free_bytes, self.path)

        def read(free: int) -> None:
            self.free = free
            for callback in self.on_reading:
                callback()

        def unreadable(failure: Any) -> None:
            self.free = None  # not created yet, or gone: nothing to say about its space

        d.addCallbacks(read, unreadable)
        return d

    @property
    def free_mb(self) -> int | None:
        return None if self.free is None else self.free // MB

    @property
    def low(self) -> bool:
        """Below ``DATA_DIR_MIN_FREE_MB`` (never when the threshold is 0 or nothing was read yet)."""
        return self.free is not None and self.min_free_mb > 0 and self.free < self.min_free_mb * MB

    @property
    def roomy_enough_to_restart(self) -> bool:
        floor = max(self.min_free_mb, RESTART_FLOOR_MB)
        return self.free is not None and self.free >= floor * MB

    def warning(self) -> str | None:
        if not self.low:
            return None
        return (f"low free space in the embedded database's directory {self.path}: {self.free_mb} MB left "
                f"(DATA_DIR_MIN_FREE_MB={self.min_free_mb}); the database stops writing when it is full")
