"""``--workers N``: N reactor processes serving one listening socket.

The parent (``twistd worknet-rpc --workers N``) opens the TCP listening socket
itself, starts the embedded database when there is one (one for all
workers), and spawns N workers (``python -m worknet.workers``) with
``reactor.spawnProcess``.  Each worker inherits the socket as file
descriptor 3 and adopts it with ``reactor.adoptStreamPort`` (Twisted's
standard way to share a listening socket between processes): the kernel
hands each new connection to one of them.  A worker reads its settings as
one JSON line on its stdin -- secrets never travel through a child's
environment or command line -- and stops when that pipe closes, so workers
never outlive their parent.

- SIGTERM to the parent: it stops listening in no process of its own (it
  never accepts), sends SIGTERM to every worker, each worker stops accepting,
  drains its in-flight calls and exits 0; then the parent stops the embedded
  database and exits 0.
- A worker that dies is restarted (after 1 s, or 5 s when it lived under
  10 s, so a worker that cannot start does not spin).
- Logs: each worker writes its log events as text lines to its stdout, in
  batches; the parent writes them to its own log prefixed ``worker N``.
- ``/metrics``: aggregated over all workers with prometheus_client's
  multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, a private directory the
  parent creates in the temporary directory, or in ``DATA_DIR`` when no
  temporary directory is writable -- a read-only root): whichever worker answers a scrape reports the sum of every
  worker's counters and histograms; gauges are summed over live workers
  (``worknet_db_connected`` is the minimum: 1 only when every worker's pool
  answered).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, fields
from decimal import Decimal
from typing import Any

from twisted.application import service
from twisted.internet import defer, error, protocol, tcp
from twisted.logger import LogLevel

from worknet import logs
from worknet.config import Settings
from worknet.logs import logger
from worknet.startup import metrics_parent

log = logger("worknet.workers")

LISTEN_FD = 3
STOP_GRACE_SECONDS = 30.0
RESTART_DELAY = 1.0
CRASH_LOOP_DELAY = 5.0
SHORT_LIFE = 10.0


def listen_address(endpoint: str) -> tuple[socket.AddressFamily, str, int, int]:
    """(family, host, port, backlog) of a ``tcp:`` / ``tcp6:`` endpoint string; ValueError for any other."""
    kind, _, rest = endpoint.partition(":")
    if kind not in ("tcp", "tcp6"):
        raise ValueError(f"--workers above 1 needs a tcp: or tcp6: --listen endpoint, not {endpoint!r} "
                         "(terminate TLS in front of the workers, or run one worker)")
    parts = [p for p in rest.replace("\\:", "\0").split(":")]
    options: dict[str, str] = {}
    port_text = ""
    for part in parts:
        part = part.replace("\0", ":")
        if "=" in part:
            key, _, value = part.partition("=")
            options[key] = value
        elif not port_text:
            port_text = part
        else:
            raise ValueError(f"cannot read the endpoint {endpoint!r}")
    try:
        port = int(options.pop("port", port_text))
        backlog = int(options.pop("backlog", "50"))
    except ValueError:
        raise ValueError(f"cannot read the port of the endpoint {endpoint!r}") from None
    host = options.pop("interface", "::" if kind == "tcp6" else "0.0.0.0")  # noqa: S104 - as twisted's default
    if options:
        raise ValueError(f"--workers does not support the endpoint options {', '.join(options)}")
    family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
    return family, host, port, backlog


def open_listening_socket(endpoint: str) -> socket.socket:
    family, host, port, backlog = listen_address(endpoint)
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(max(backlog, 1024))
    sock.setblocking(False)
    return sock


def encode_settings(settings: Settings, uri: str, log_format: str = "text", syslog_prefix: str | None = None) -> bytes:
    """One JSON line for a worker: the parent's settings, pointed at the shared database, one worker,
    and how the parent logs (the worker formats its lines the same way, or logs to syslog itself)."""
    values: dict[str, Any] = asdict(settings)
    values.update(mongodb_uri=uri, rpc_workers=1, log_file="")
    values["platform_fee_percent"] = str(settings.platform_fee_percent)
    values["logging"] = {"format": log_format, "syslog_prefix": syslog_prefix}
    values["embedded_data_dir"] = settings.data_dir if settings.embedded_database else None  # its free space is watched
    return json.dumps(values).encode() + b"\n"


def settings_of(values: dict[str, Any]) -> Settings:
    known = {f.name for f in fields(Settings)}
    values = {k: v for k, v in values.items() if k in known}
    values["platform_fee_percent"] = Decimal(values["platform_fee_percent"])
    return Settings(**values)


def worker_environment(metrics_dir: str) -> dict[str, str]:
    """A worker's environment: the parent's minus every daemon setting (those come over stdin)."""
    from worknet.config import ENV_VARIABLES

    env = {k: v for k, v in os.environ.items() if k not in ENV_VARIABLES and not k.startswith("PROMETHEUS_")}
    env["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    return env


class _Worker(protocol.ProcessProtocol):
    def __init__(self, pool: WorkerPool, number: int, started: float) -> None:
        self.pool = pool
        self.number = number
        self.started = started
        self.pid: int | None = None
        self.ended: defer.Deferred[None] = defer.Deferred()
        self._partial = b""
        self.log = logger(f"worknet.worker.{number}")

    def connectionMade(self) -> None:
        self.pid = self.transport.pid  # type: ignore[union-attr]
        self.transport.write(self.pool.settings_line())  # type: ignore[union-attr]

    def outReceived(self, data: bytes) -> None:
        """Log lines, filtered and formatted by the worker as this process would: relayed as they are
        (one write per batch, the worker's request ids and fields kept)."""
        complete, _, self._partial = (self._partial + data).rpartition(b"\n")
        if not complete:
            return
        text = complete.decode("utf-8", "replace") + "\n"
        sink = self.pool.log
        if sink is not None and sink.can_relay:
            sink.relay(text)
        else:
            for line in text.splitlines():
                self.log.rendered(LogLevel.info, line)

    def errReceived(self, data: bytes) -> None:
        """Whatever else the worker prints (a traceback as it dies): one warning per line."""
        for line in data.decode("utf-8", "replace").splitlines():
            if line.strip():
                self.log.rendered(LogLevel.warn, line)

    def processEnded(self, reason: Any) -> None:
        self.pool._ended(self, reason)
        self.ended.callback(None)


class WorkerPool(service.Service):
    """Owns the listening socket and N worker processes (restarting any that dies)."""

    name = "workers"

    def __init__(self, settings: Settings, uri: Callable[[], str], reactor: Any = None,
                 executable: str | None = None, log: logs.ProcessLog | None = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.settings = settings
        self.uri = uri
        self.reactor = reactor
        self.executable = executable or sys.executable
        self.log = log  # where the workers' log lines go (None: logged line by line here)
        self.workers: dict[int, _Worker] = {}
        self.socket: socket.socket | None = None
        self.metrics_dir = ""
        self.restarts = 0
        self._stopping = False

    def settings_line(self) -> bytes:
        log = self.log
        return encode_settings(self.settings, self.uri(), log.log_format if log else "text",
                               log.syslog_prefix if log else None)

    def startService(self) -> None:
        super().startService()
        self.socket = open_listening_socket(self.settings.listen)
        # the temporary directory, or DATA_DIR on a read-only root (checked at startup: check_metrics_dir)
        self.metrics_dir = tempfile.mkdtemp(prefix="worknet-metrics-", dir=metrics_parent(self.settings.data_dir))
        for number in range(1, self.settings.rpc_workers + 1):
            self._spawn(number)

    def _spawn(self, number: int) -> None:
        if self._stopping or self.socket is None:
            return
        worker = _Worker(self, number, self.reactor.seconds())
        self.reactor.spawnProcess(
            worker, self.executable, [self.executable, "-m", "worknet.workers", str(number)],
            env=worker_environment(self.metrics_dir),
            childFDs={0: "w", 1: "r", 2: "r", LISTEN_FD: self.socket.fileno()},
        )
        self.workers[number] = worker
        log.info("worker {n} started (pid {pid})", n=number, pid=worker.pid)

    def _ended(self, worker: _Worker, reason: Any) -> None:
        if self.workers.get(worker.number) is worker:
            del self.workers[worker.number]
        if worker.pid is not None and self.metrics_dir:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(worker.pid, self.metrics_dir)
        if self._stopping:
            return
        code = getattr(reason.value, "exitCode", None)
        signal_number = getattr(reason.value, "signal", None)
        lived = self.reactor.seconds() - worker.started
        delay = CRASH_LOOP_DELAY if lived < SHORT_LIFE else RESTART_DELAY
        self.restarts += 1
        log.error("worker {n} (pid {pid}) died (exit code {code}, signal {sig}); restarting it in {d:.0f} s",
                  n=worker.number, pid=worker.pid, code=code, sig=signal_number, d=delay)
        self.reactor.callLater(delay, self._spawn, worker.number)

    async def stopService(self) -> None:
        super().stopService()
        self._stopping = True
        running = list(self.workers.values())
        for worker in running:
            try:
                worker.transport.signalProcess("TERM")  # type: ignore[union-attr]
            except error.ProcessExitedAlready:
                pass
        kill = self.reactor.callLater(STOP_GRACE_SECONDS, self._kill, running)
        await defer.DeferredList([w.ended for w in running])
        if kill.active():
            kill.cancel()
        if self.socket is not None:
            self.socket.close()
            self.socket = None
        shutil.rmtree(self.metrics_dir, ignore_errors=True)
        log.info("all workers stopped")

    def _kill(self, workers: list[_Worker]) -> None:
        for worker in workers:
            if not worker.ended.called:
                log.warn("worker {n} did not stop within {s:.0f} s; killing it", n=worker.number, s=STOP_GRACE_SECONDS)
                try:
                    worker.transport.signalProcess("KILL")  # type: ignore[union-attr]
                except error.ProcessExitedAlready:
                    pass


# -- the worker process ------------------------------------------------------


class FairPort(tcp.Port):
    """A listening port that accepts one connection per reactor turn.

    Twisted's Port accepts up to ~100 connections per wake-up; with several
    processes on one socket the first to wake would take a whole burst. One
    accept per turn lets an idle worker take the next connection.
    """

    @property
    def numberAccepts(self) -> int:
        return 1

    @numberAccepts.setter
    def numberAccepts(self, value: int) -> None:
        pass


class AdoptedListener(service.Service):
    """Serves ``factory`` on the inherited listening socket (fd 3)."""

    name = "xmlrpc"

    def __init__(self, factory: Any, reactor: Any, fd: int = LISTEN_FD) -> None:
        self.factory = factory
        self.reactor = reactor
        self.fd = fd
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        sock = socket.socket(fileno=self.fd)
        family = sock.family
        sock.detach()
        self.port = FairPort._fromListeningDescriptor(self.reactor, self.fd, family, self.factory)
        self.port.startListening()

    def stopService(self) -> Any:
        super().stopService()
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def worker_formatter(number: int, log_format: str) -> Callable[[dict], str | None]:
    """The parent's line format, every event under the namespace ``worknet.worker.<number>``
    (which worker wrote a line; its request id and fields are kept)."""
    line = logs.formatter(log_format)
    namespace = f"worknet.worker.{number}"

    def format_line(event: dict) -> str | None:
        return line({**event, "log_namespace": namespace})

    return format_line


class _ParentWatch(protocol.Protocol):
    """Stdin of a worker: when the parent's end closes, the worker stops."""

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor

    def connectionLost(self, reason: Any = None) -> None:
        if self.reactor.running:
            self.reactor.stop()


def worker_main(number: int) -> None:
    values = json.loads(sys.stdin.buffer.readline())
    settings = settings_of(values)
    logging = values.get("logging") or {}
    reactor: Any

    from twisted.internet import reactor as default_reactor
    from twisted.internet import stdio
    from twisted.logger import globalLogBeginner

    from worknet.app import build_app, freeze_startup_objects

    reactor = default_reactor
    # Lines formatted as the parent formats them, one write to the parent per batch (the parent
    # relays them as they are); with --syslog, straight to syslog.
    if logging.get("syslog_prefix") is not None:
        sink = logs.observer(settings.log_level, "text", foreground=False, log_file="", twistd_logfile=None,
                             syslog_prefix=logging["syslog_prefix"])
    else:
        sink = logs.ProcessLog(settings.log_level, worker_formatter(number, logging.get("format", "text")),
                               [sys.stdout], reactor=reactor)
    globalLogBeginner.beginLoggingTo([sink], redirectStandardIO=False)

    top = build_app(settings, lambda: settings.mongodb_uri, reactor, data_dir=values.get("embedded_data_dir"),
                    worker=True)
    AdoptedListener(top.site, reactor).setServiceParent(top)

    def terminate(signum: int, frame: Any) -> None:
        reactor.callFromThread(reactor.stop)

    reactor.callWhenRunning(signal.signal, signal.SIGTERM, terminate)
    reactor.callWhenRunning(signal.signal, signal.SIGINT, signal.SIG_IGN)  # the terminal's ^C goes to the parent
    reactor.addSystemEventTrigger("before", "shutdown", lambda: defer.ensureDeferred(top.stopService()))
    stdio.StandardIO(_ParentWatch(reactor), stdin=0, stdout=os.open(os.devnull, os.O_WRONLY))  # type: ignore[call-arg]
    reactor.callWhenRunning(top.startService)
    freeze_startup_objects(reactor)
    reactor.run()
    sink.drain()


if __name__ == "__main__":
    worker_main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
