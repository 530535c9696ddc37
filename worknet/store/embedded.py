"""The embedded database: SecantusDB run as a child process.

Used when ``MONGODB_URI`` is unset (a laptop, ``make run``).  SecantusDB is
GPL-2.0, so it is only ever run as a separate program, never imported.  The
service picks a free loopback port, spawns ``secantusd-py`` through
``worknet.store.lifeline`` (the database dies with the daemon, runs in a
session of its own so that Ctrl-C reaches the daemon only, and a data
directory another daemon holds is refused with that daemon's PID), and on
stop sends SIGTERM and waits for the process to exit (it must release its data
directory before anything may open it again).

If the database exits on its own, it is started again in place (same port,
so the pool reconnects by itself) after a growing pause -- calls answer
UNAVAILABLE meanwhile -- and each restart is logged.  After
``MAX_RESTARTS`` failures in a row (a run of ``STABLE_SECONDS`` resets the
count), or when another process holds the data directory, the daemon stops
with a message saying why: it cannot serve without its database.

A full disk is waited out instead (``worknet.store.space``): WiredTiger
panics when a write finds no space ("WT_PANIC ... the process must exit and
restart") and then fails every command.  Seen in the database's output, the
panic is logged once; as soon as the data directory has room again (at least
``DATA_DIR_MIN_FREE_MB``, and 16 MB) the database is restarted, and its
recovery replays the journal (``--sync-on-commit``: every acknowledged write
is in it).  A database that exits while the directory is that low on space
is not counted as a failed restart: it is started again once there is room.

Its memory is bounded: SecantusDB's resident size grows with every
transaction it has run (about 6-10 KB each, whatever its cache size: Python
objects it never frees).  Past ``EMBEDDED_MAX_MEMORY_MB`` (read every
``MEMORY_CHECK_SECONDS``) it is restarted on purpose: the serving store holds
new commands and lets those already sent be answered
(``MongoStore.hold``), the database stops cleanly (a checkpoint: nothing
acknowledged is lost) and starts again on the same port, and the held
commands go on -- callers see a pause of a second or two, not an error.
With ``--workers`` the stores live in other processes: a command in flight
at that moment may answer UNAVAILABLE.

The child gets only the environment it needs (``CHILD_ENVIRONMENT``): never
the daemon's secrets.

:class:`Secantusd` starts the same command line from plain blocking code, for
whatever runs without a reactor: ``python -m worknet.catalogue rebuild`` on the
embedded database's directory (and the tests' and the bench's databases).
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

from twisted.application import service
from twisted.internet import defer, error, protocol, task, threads

from worknet.logs import logger
from worknet.store import lifeline
from worknet.store.lifeline import HELD
from worknet.store.space import DiskSpace

log = logger(__name__)

STOP_GRACE_SECONDS = 30.0
BOUNCE_GRACE_SECONDS = 5.0  # a panicked database restarted: SIGTERM, then SIGKILL after this
PANIC_MARKS = ("WT_PANIC", "No space left on device")  # in the database's output: it must be restarted
MAX_RESTARTS = 5
RESTART_DELAYS = (0.5, 1.0, 2.0, 4.0, 8.0)
STABLE_SECONDS = 60.0
MEMORY_CHECK_SECONDS = 5.0
# Stopping SecantusDB (docs/DECISIONS.md, "Stopping the embedded database").  Its SIGTERM handler closes the
# listening socket, then waits up to 2 s for its accept thread, which the close does not wake (a thread
# blocked in accept() on Linux): one connection does, so the port is knocked at KNOCK_SECONDS until it
# refuses.  And the handler may never run: a signal the kernel hands to another thread than the main one,
# which waits on an Event for ever, is seen only when the main thread wakes.  A port that still accepts
# RESIGNAL_SECONDS after SIGTERM means the handler has not run: SIGTERM again.
KNOCK_SECONDS = 0.05
RESIGNAL_SECONDS = 0.5
CHILD_ENVIRONMENT = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR")

# The startup line when MONGODB_URI is unset and the [embedded] extra is not installed: the command that
# installs it into this very environment from a checkout (the project is not on a package index).
MISSING_EXTRA = (
    "MONGODB_URI is unset and the embedded database is not installed: set MONGODB_URI to your MongoDB, "
    f"or install the embedded one from a checkout of worknet-rpc with {sys.executable} -m pip install "
    "--require-hashes -r requirements/embedded.txt (make run does; the Docker image: --build-arg EMBEDDED=1)"
)


def find_secantusd() -> str | None:
    """The ``secantusd-py`` launcher: beside this interpreter first, then on PATH."""
    beside = Path(sys.executable).with_name("secantusd-py")
    if beside.exists():
        return str(beside)
    return shutil.which("secantusd-py")


def child_environment() -> dict[str, str]:
    """The few variables the database process needs; the daemon's secrets stay with the daemon."""
    return {name: os.environ[name] for name in CHILD_ENVIRONMENT if name in os.environ}


def knock(port: int) -> bool:
    """Open and close one TCP connection to ``127.0.0.1:port``; whether it was accepted (``KNOCK_SECONDS``)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def command_line(executable: str, port: int, data_dir: str, extra: Sequence[str] = (), held: bool = True) -> list[str]:
    """The database's command line: ``secantusd-py`` on ``127.0.0.1:port`` storing in ``data_dir``,
    ``--sync-on-commit`` (every acknowledged write is in the journal), WARNING logs, then ``extra``.

    ``held``: through ``worknet.store.lifeline`` (the data directory locked
    while it runs, the database dying with its parent, a session of its own).
    """
    argv = [executable, "--host", "127.0.0.1", "--port", str(port), "--storage-path", data_dir,
            "--sync-on-commit", "--log-level", "WARNING", *extra]
    if held:
        argv = [sys.executable, lifeline.__file__, data_dir, "--", *argv]  # run as a file: no package imports
    return argv


class NotStarted(Exception):
    """:meth:`Secantusd.start` failed: the process exited first (``code``; ``lifeline.HELD``: another process
    holds the data directory) or did not answer in time (``code`` None); ``said``: its last output line."""

    def __init__(self, message: str, code: int | None, said: str) -> None:
        super().__init__(message)
        self.code = code
        self.said = said


class Secantusd:
    """SecantusDB as a plain child process, started and stopped by blocking code (no reactor).

    The same command line as the daemon's :class:`EmbeddedDatabase`
    (:func:`command_line`) on a free loopback port (or ``port``), ``extra``
    flags appended (``--tls-cert-file ...``).  ``held`` (the default) runs it
    through the lifeline: a data directory a daemon holds is refused at once,
    and the database dies with the process that started it.  Its output is
    appended to ``log`` (a path), else kept in a temporary file for the
    message of a failed start.  Its environment: ``CHILD_ENVIRONMENT`` only.

        with Secantusd("var/db") as database:   # start(): returns once it answers a ping
            pymongo.MongoClient(database.uri, directConnection=True)
                                                 # stop(): SIGTERM, wait (SIGKILL after 30 s)

    ``start`` may be called again after ``stop`` or after the process died:
    same port, same directory.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *extra: str, port: int | None = None, held: bool = True,
                 log: str | os.PathLike[str] | None = None, executable: str | None = None) -> None:
        self.data_dir = os.path.abspath(data_dir)
        self.extra = extra
        self.port = port or free_port()
        self.held = held
        self.log = log
        self.executable = executable or find_secantusd()
        self.process: subprocess.Popen[bytes] | None = None
        self._output: IO[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    @property
    def probe_uri(self) -> str:
        """What :meth:`start` pings to know the server answers (a TLS server needs its CA: override)."""
        return self.uri

    def ping(self) -> bool:
        import pymongo

        client: pymongo.MongoClient = pymongo.MongoClient(self.probe_uri, serverSelectionTimeoutMS=500,
                                                          directConnection=True)
        try:
            return bool(client.admin.command("ping").get("ok"))
        except pymongo.errors.PyMongoError:
            return False
        finally:
            client.close()

    def start(self, timeout: float = 60.0) -> str:
        """Start it and wait until it answers; its URI.  :class:`NotStarted` when it exits first or stays silent."""
        if self.executable is None:
            raise NotStarted(MISSING_EXTRA, None, "")
        os.makedirs(self.data_dir, exist_ok=True)
        output: IO[bytes] = (open(self.log, "ab") if self.log is not None  # noqa: SIM115 - the child writes it
                             else tempfile.TemporaryFile())
        began = output.seek(0, os.SEEK_END)
        self._output = output
        self.process = subprocess.Popen(  # noqa: S603 - secantusd-py found beside the interpreter, our own lifeline
            command_line(self.executable, self.port, self.data_dir, self.extra, self.held),
            stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT, env=child_environment())
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                said = self._last_line(began)
                self.stop()
                raise NotStarted(f"secantusd-py exited (exit {code}): {said or 'no output'}", code, said)
            if self.ping():
                return self.uri
            time.sleep(0.1)
        said = self._last_line(began)
        self.stop()
        raise NotStarted(f"secantusd-py did not answer within {timeout:g} s", None, said)

    def _last_line(self, began: int) -> str:
        if self._output is None:
            return ""
        self._output.flush()
        self._output.seek(began)
        lines = self._output.read().decode("utf-8", "replace").strip().splitlines()
        return lines[-1].strip() if lines else ""

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM, then wait for the exit (it must release its data directory); SIGKILL after ``timeout``."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            signalled = time.monotonic()
            deadline = signalled + timeout
            while process.poll() is None and time.monotonic() < deadline:  # (KNOCK_SECONDS, RESIGNAL_SECONDS)
                if knock(self.port) and time.monotonic() - signalled >= RESIGNAL_SECONDS:
                    process.terminate()
                    signalled = time.monotonic()
                try:
                    process.wait(timeout=KNOCK_SECONDS)
                except subprocess.TimeoutExpired:
                    continue
            try:
                process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._output is not None:
            self._output.close()
            self._output = None

    def __enter__(self) -> Secantusd:
        self.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()


class _DatabaseProcess(protocol.ProcessProtocol):
    def __init__(self, owner: EmbeddedDatabase) -> None:
        self.owner = owner
        self.tail: deque[str] = deque(maxlen=20)
        self.ended: defer.Deferred[None] = defer.Deferred()

    def _lines(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                self.tail.append(line.rstrip())
                log.debug("secantusd: {line}", line=line.rstrip())
                if any(mark in line for mark in PANIC_MARKS):
                    self.owner._panicked(line.strip())

    outReceived = _lines
    errReceived = _lines

    def processEnded(self, reason: Any) -> None:
        code = getattr(reason.value, "exitCode", None)
        self.owner._ended(code, list(self.tail), getattr(reason.value, "signal", None))
        self.ended.callback(None)


def resident_mb(pid: int, field: str = "VmRSS") -> float | None:
    """A process's resident size in MB (``VmRSS``; ``VmHWM``: its peak so far), None once it is gone (a read of
    /proc: call it in a thread)."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def how_it_ended(code: int | None, signum: int | None) -> str:
    """``exited unexpectedly (exit code 3)``, ``was killed by SIGKILL (signal 9)``: a process's end, for a log line."""
    if signum is not None:
        try:
            name = signal.Signals(signum).name
        except ValueError:
            return f"was killed by signal {signum}"
        return f"was killed by {name} (signal {signum})"
    return f"exited unexpectedly (exit code {code})"


class EmbeddedDatabase(service.Service):
    """Runs ``secantusd-py --sync-on-commit`` on a free loopback port."""

    name = "embedded-database"

    def __init__(self, data_dir: str, reactor: Any = None, executable: str | None = None,
                 min_free_mb: int = 256, max_memory_mb: int = 0) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor = reactor
        self.data_dir = os.path.abspath(data_dir)
        self.executable = executable or find_secantusd()
        self.port = 0
        self._process: _DatabaseProcess | None = None
        self._transport: Any = None
        self._stopping = False
        self._failures = 0  # unexpected exits in a row
        self._started_at = 0.0
        self._restart: Any = None
        self.space = DiskSpace(self.data_dir, min_free_mb, reactor)
        self.wedged: str | None = None  # why the database must be restarted once there is room (a panic)
        self._bouncing = False  # stopping a panicked database to start it again at once
        self.max_memory_mb = max_memory_mb  # 0: never restarted for its memory
        self.holders: list[Any] = []  # stores held during a planned restart (async ``checkpoint()``, ``hold()``, ``release()``)
        self.recycles = 0  # planned restarts for memory so far
        self._recycling = False
        self._memory: task.LoopingCall | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/"

    def startService(self) -> None:
        super().startService()
        if self.executable is None:
            self._fail(MISSING_EXTRA)
            return
        try:
            os.makedirs(self.data_dir, exist_ok=True)
        except OSError as e:
            self._fail(f"cannot create the data directory {self.data_dir}: {e.strerror}")
            return
        self.port = free_port()
        self.space.on_reading.append(self._space_read)
        self.space.start()
        self._spawn()
        if self.max_memory_mb:
            self._memory = task.LoopingCall(self._read_memory)
            self._memory.clock = self._reactor
            self._memory.start(MEMORY_CHECK_SECONDS, now=False).addErrback(lambda f: None)

    def _read_memory(self) -> defer.Deferred[Any] | None:
        transport = self._transport
        if transport is None or transport.pid is None or self._recycling or self._bouncing or self.wedged:
            return None
        reading = threads.deferToThread(resident_mb, transport.pid)
        reading.addCallback(self._memory_read, transport)
        reading.addErrback(lambda f: log.failure("reading the embedded database's memory", f))
        return reading

    def _memory_read(self, mb: float | None, transport: Any) -> None:
        if mb is None or mb <= self.max_memory_mb or transport is not self._transport:
            return
        if self._recycling or self._bouncing or self.wedged is not None or self._stopping:
            return
        defer.ensureDeferred(self.recycle(mb)).addErrback(lambda f: log.failure("restarting the embedded database", f))

    async def recycle(self, mb: float) -> None:
        """Restart the database on purpose (its memory passed ``max_memory_mb``), holding the stores meanwhile."""
        if self._transport is None or self._process is None:
            return
        self._recycling = True
        self.recycles += 1
        log.info("the embedded database uses {mb:.0f} MB (EMBEDDED_MAX_MEMORY_MB={cap}): restarting it "
                 "(restart {n} for memory); calls wait meanwhile", mb=mb, cap=self.max_memory_mb, n=self.recycles)
        if self.holders:  # its shutdown checkpoint then has little left to write: a shorter pause
            await defer.ensureDeferred(self.holders[0].checkpoint())
        began = drained = stopped = self._reactor.seconds()
        try:
            await defer.gatherResults([defer.ensureDeferred(holder.hold()) for holder in self.holders],
                                      consumeErrors=True)
            drained = self._reactor.seconds()
            ended = self._process.ended
            self._bouncing = True  # _ended starts it again at once, without counting a failure
            self._signal("TERM")
            kill = self._reactor.callLater(BOUNCE_GRACE_SECONDS, self._kill_bounced, self._transport)
            await ended
            stopped = self._reactor.seconds()
            if kill.active():
                kill.cancel()
        finally:
            await defer.gatherResults([defer.ensureDeferred(holder.release()) for holder in self.holders],
                                      consumeErrors=True)
            self._recycling = False
        now = self._reactor.seconds()
        log.info("the embedded database was restarted in {s:.1f} s (calls in flight answered in {a:.1f} s, "
                 "stopped in {b:.1f} s, connected again in {c:.1f} s)", s=now - began, a=drained - began,
                 b=stopped - drained, c=now - stopped)

    def _panicked(self, line: str) -> None:
        """The database's output says it cannot go on (a full disk): restart it once there is room."""
        if self.wedged is not None or self._stopping:
            return
        self.wedged = line[-300:]
        log.error("the embedded database stopped writing ({line}); {free} MB free in {path}: it is restarted as soon "
                  "as there are {floor} MB free", line=self.wedged, free=self.space.free_mb, path=self.data_dir,
                  floor=max(self.space.min_free_mb, 16))
        self._space_read()

    def _space_read(self) -> None:
        if self.wedged is None or self._stopping or not self.space.roomy_enough_to_restart:
            return
        if self._transport is not None and not self._bouncing:
            log.warn("restarting the embedded database: {free} MB free in {path} again", free=self.space.free_mb,
                     path=self.data_dir)
            self._bouncing = True
            self._signal("TERM")
            self._reactor.callLater(BOUNCE_GRACE_SECONDS, self._kill_bounced, self._transport)
        elif self._transport is None and (self._restart is None or not self._restart.active()):
            log.warn("starting the embedded database again: {free} MB free in {path}", free=self.space.free_mb,
                     path=self.data_dir)
            self.wedged = None
            self._spawn()

    def _signal(self, name: str) -> bool:
        """Send ``name`` to the database; False when it had exited already.  After SIGTERM, knock on its port
        until it ends (``_knock_until``)."""
        try:
            self._transport.signalProcess(name)
        except (error.ProcessExitedAlready, AttributeError):
            return False
        if name == "TERM" and self._process is not None:
            defer.ensureDeferred(self._knock_until(self._process.ended)).addErrback(lambda f: None)
        return True

    async def _knock_until(self, ended: defer.Deferred[Any]) -> None:
        """After SIGTERM, until the process ended: knock on its port, and signal again while the port still
        accepts (``KNOCK_SECONDS``, ``RESIGNAL_SECONDS``)."""
        from twisted.internet import endpoints

        transport = self._transport
        endpoint = endpoints.TCP4ClientEndpoint(self._reactor, "127.0.0.1", self.port, timeout=1)
        signalled = self._reactor.seconds()
        while not ended.called:
            try:
                knocked: Any = await endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
            except Exception:  # noqa: BLE001 - refused: the handler closed the socket, the accept thread is gone
                return
            knocked.transport.loseConnection()
            if self._reactor.seconds() - signalled >= RESIGNAL_SECONDS and transport is self._transport:
                signalled = self._reactor.seconds()
                with contextlib.suppress(error.ProcessExitedAlready, AttributeError):
                    transport.signalProcess("TERM")
            await task.deferLater(self._reactor, KNOCK_SECONDS, lambda: None)

    def _kill_bounced(self, transport: Any) -> None:
        if self._transport is transport and self._bouncing:
            self._signal("KILL")

    def _spawn(self) -> None:
        self._restart = None
        argv = command_line(self.executable or "secantusd-py", self.port, self.data_dir)  # found: startService checked
        self._process = _DatabaseProcess(self)
        self._started_at = self._reactor.seconds()
        self._transport = self._reactor.spawnProcess(
            self._process, sys.executable, argv, env=child_environment(),
            childFDs={0: "w", 1: "r", 2: "r"},
        )
        log.info("embedded database (SecantusDB) starting on 127.0.0.1:{port}, data in {path}",
                 port=self.port, path=self.data_dir)

    def _ended(self, code: int | None, tail: list[str], signum: int | None = None) -> None:
        self._transport = None
        if self._stopping:
            log.info("embedded database stopped")
            return
        how = how_it_ended(code, signum)
        reason = next((line for line in reversed(tail) if "Error" in line), tail[-1] if tail else "")
        said = f": {reason}" if reason else ""
        if self._bouncing:  # stopped on purpose after a panic, with room again: start it at once
            self._bouncing = False
            self.wedged = None
            self._spawn()
            return
        no_room = self.space.free is not None and not self.space.roomy_enough_to_restart
        if self.running and (no_room or any("No space left on device" in line for line in tail)):
            # out of space: wait for room, do not count it as a failed restart
            if self.wedged is None:
                self.wedged = reason or how
                log.error("the embedded database {how}{said}; {free} MB free in {path}: it is started again as "
                          "soon as there are {floor} MB free", how=how, said=said, free=self.space.free_mb,
                          path=self.data_dir, floor=max(self.space.min_free_mb, 16))
            self._space_read()
            return
        if code == HELD and self._failures == 0:
            self._fail(reason.partition(": ")[2] or reason)  # another daemon's directory: restarting cannot help
            return
        if self._reactor.seconds() - self._started_at >= STABLE_SECONDS:
            self._failures = 0
        self._failures += 1
        if self._failures > MAX_RESTARTS or not self.running:
            self._fail(f"the embedded database {how} and was restarted "
                       f"{self._failures - 1} times{said}")
            return
        delay = RESTART_DELAYS[min(self._failures, len(RESTART_DELAYS)) - 1]
        log.warn("the embedded database {how}{said}; restarting it in "
                  "{delay} s (restart {n} of {most})", how=how, said=said, delay=delay,
                  n=self._failures, most=MAX_RESTARTS)
        self._restart = self._reactor.callLater(delay, self._spawn)

    def _fail(self, message: str) -> None:
        log.critical("cannot run without the database: {message}", message=message)
        if self._reactor.running:
            # twistd would otherwise exit 0: make the failure visible to supervisors. atexit
            # runs once twistd is done, its pidfile removed (every log line is already flushed).
            atexit.register(os._exit, 1)
            self._reactor.stop()
        else:
            self._reactor.callWhenRunning(self._fail, message)

    async def stopService(self) -> None:
        super().stopService()
        self.space.stop()
        if self._memory is not None and self._memory.running:
            self._memory.stop()
        if self._restart is not None and self._restart.active():
            self._restart.cancel()
        if self._transport is None or self._process is None:
            return
        self._stopping = True
        ended = self._process.ended
        if not self._signal("TERM"):
            return
        kill = self._reactor.callLater(STOP_GRACE_SECONDS, self._kill)
        await ended
        if kill.active():
            kill.cancel()

    def _kill(self) -> None:
        if self._transport is not None:
            log.warn("embedded database did not stop within {s} s; killing it", s=STOP_GRACE_SECONDS)
            try:
                self._transport.signalProcess("KILL")
            except error.ProcessExitedAlready:
                pass
