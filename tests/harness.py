"""The processes the tests and the benchmarks start, and what ``/proc`` says of them.

* ``Database``: a throw-away SecantusDB server (``secantusd-py``) on a free loopback port;
* ``Daemon``: ``twistd -n worknet-rpc`` as a user starts it, on a free loopback port, its
  output in a log file; on an external server (``mongodb_uri``) or, with ``mongodb_uri=""``
  and ``DATA_DIR`` in its environment, on the embedded database it starts itself;
* ``free_port``, ``wait_for`` (a condition polled until a deadline), and ``process_tree``,
  ``command_line``, ``rss_mib``, ``cpu_seconds`` read from ``/proc`` (Linux).

Both classes' processes get SIGKILL when the thread that started them dies (``PR_SET_PDEATHSIG``),
so a killed or timed-out run leaves no database or daemon behind: start them from the main thread.
tests/conftest.py builds its fixtures on them; the benchmarks (``bench/``) import them from here.
"""

from __future__ import annotations

import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import xmlrpc.client
from pathlib import Path

from worknet.logs import BATCH_SECONDS
from worknet.store.embedded import Secantusd, resident_mb

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
PR_SET_PDEATHSIG = 1


_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child below only makes one plain call


def _die_with_the_caller() -> None:
    """In the child before exec: SIGKILL it when the thread that started it dies (Linux), so that a
    killed or timed-out test or benchmark run leaves no database or daemon behind.

    And SIGINT at its default, as for a program started from a terminal: a run started in the background
    by a non-interactive shell (``make test &``, a CI script) ignores SIGINT, every child inherits that,
    and a daemon that inherits it keeps ignoring Ctrl-C, as it should (``nohup``, ``&``)."""
    _LIBC.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(predicate, timeout: float, what: str, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stop_process(process: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30.0) -> bool:
    """``sig``, then wait for the exit; SIGKILL after ``timeout`` s. False when it had to be killed."""
    if process.poll() is not None:
        return True
    process.send_signal(sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return False
    return True


# -- /proc ---------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and its descendants (threads' children included)."""
    pids = [pid]
    for child in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            children = child.read_text().split()
        except OSError:  # a thread that ended meanwhile
            continue
        for text in children:
            pids.extend(process_tree(int(text)))
    return pids


def command_line(pid: int) -> list[str]:
    try:
        return [part.decode(errors="replace") for part in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")]
    except OSError:
        return []


def rss_mib(pid: int, field: str = "VmRSS") -> float:
    """Resident memory of one process in MiB (``VmHWM``: its peak so far), NaN when it is gone."""
    found = resident_mb(pid, field)
    return float("nan") if found is None else found


def cpu_seconds(pid: int) -> float:
    """User + system CPU so far of a process and its descendants (threads included); NaN when it is gone."""
    ticks = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            if p == pid:
                return float("nan")
            continue  # a child that ended meanwhile
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


# -- processes -----------------------------------------------------------------------


class Database(Secantusd):
    """A SecantusDB server process on a free loopback port, started by the daemon's own launcher
    (:class:`worknet.store.embedded.Secantusd`: the same command line, its data directory locked, the
    database dying with the test run); its output in ``secantusd-PORT.log`` beside ``storage``.
    ``start`` again after a ``stop`` or a ``kill`` starts it on the same port and storage."""

    def __init__(self, storage: Path, *extra: str) -> None:
        super().__init__(storage, *extra)
        self.storage = storage
        self.log = str(Path(storage).parent / f"secantusd-{self.port}.log")

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, timeout: float = START_TIMEOUT) -> str:
        return super().start(timeout)

    def kill(self, sig: int) -> None:
        """Send ``sig`` and wait for the exit (a crash: no SIGKILL after a timeout)."""
        assert self.process is not None
        self.process.send_signal(sig)
        self.process.wait(60)


def _has_credentials(uri: str) -> bool:
    return "@" in uri.split("://", 1)[-1].split("/", 1)[0]


class Daemon:
    """``twistd -n worknet-rpc`` as a subprocess, in ``workdir``, with ``args`` after its own options.

    Its environment: PATH, HOME, a fresh JWT_SECRET, NODE_ENV=test, LOG_LEVEL=INFO,
    DB_TIMEOUT_SECONDS=3, then ``env`` (a None value leaves a variable unset: the daemon's default).
    """

    def __init__(self, workdir: Path, mongodb_uri: str, db_name: str, *args: str, **env: str | None) -> None:
        self.workdir = workdir
        self.mongodb_uri = mongodb_uri
        self.db_name = db_name
        self.args = args
        self.port = free_port()
        self.listen = f"tcp:{self.port}:interface=127.0.0.1"
        settings: dict[str, str | None] = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/tmp"),
            "NODE_ENV": "test",
            "JWT_SECRET": secrets.token_urlsafe(48),
            "LOG_LEVEL": "INFO",
            "DB_TIMEOUT_SECONDS": "3",
            **env,
        }
        self.env = {name: value for name, value in settings.items() if value is not None}
        self.process: subprocess.Popen | None = None
        self.log_path = workdir / f"daemon-{self.port}.log"
        self.expected_errors = False

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/RPC2"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def argv(self) -> list[str]:
        argv = [str(BIN / "twistd"), "-n", "--pidfile=", "worknet-rpc",
                "--listen", self.listen, "--db-name", self.db_name]
        if self.mongodb_uri and not _has_credentials(self.mongodb_uri):
            argv += ["--mongodb-uri", self.mongodb_uri]
        return argv + list(self.args)

    def start(self, wait: bool = True, timeout: float = START_TIMEOUT) -> None:
        self.log_file = open(self.log_path, "ab")
        env = dict(self.env)
        if self.mongodb_uri and _has_credentials(self.mongodb_uri):
            env["MONGODB_URI"] = self.mongodb_uri  # a password never goes on a command line (ps shows it)
        self.process = subprocess.Popen(
            self.argv(), cwd=self.workdir, env=env, stdout=self.log_file,
            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, preexec_fn=_die_with_the_caller,
        )
        if wait:
            wait_for(self.serving, timeout, f"the daemon on port {self.port} (log: {self.log_path})")

    def serving(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"the daemon exited with {self.process.returncode}:\n{self.log()[-3000:]}")
        # /health is 200 once the database answers and the startup indexes exist;
        # only then may a test write to the database beside the daemon.
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=5) as answer:  # noqa: S310
                return answer.status == 200
        except OSError:  # refused, or an HTTPError (503) while starting
            return False

    def proxy(self, **kwargs) -> xmlrpc.client.ServerProxy:
        return xmlrpc.client.ServerProxy(self.url, allow_none=True, **kwargs)

    def log(self) -> str:
        """The log so far, the lines of every call answered before this one included (the daemon
        writes call lines in batches, at most ``BATCH_SECONDS`` after the call)."""
        if self.process is not None and self.process.poll() is None:
            time.sleep(BATCH_SECONDS + 0.05)
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def embedded_database(self) -> tuple[int, int] | None:
        """The PID and port of the embedded database this daemon runs (a ``secantusd-py`` descendant), if any."""
        assert self.process is not None
        for pid in process_tree(self.process.pid)[1:]:
            argv = command_line(pid)
            if (any(part.endswith("secantusd-py") for part in argv[:2]) and "--port" in argv
                    and not any("lifeline" in part for part in argv)):  # not its launcher before the exec
                return pid, int(argv[argv.index("--port") + 1])
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        if not stop_process(self.process, sig, timeout):
            raise AssertionError("the daemon did not stop within the timeout")
        code = self.process.returncode
        self.process = None
        self.log_file.close()
        return code

    def internal_errors(self) -> list[str]:
        return [line for line in self.log().splitlines() if "#critical]" in line or "#error]" in line]
