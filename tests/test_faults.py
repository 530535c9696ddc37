"""Faults under load: the database restarted, the embedded database killed, the daemon killed.

Each test drives real mixed load (threads with their own keep-alive XML-RPC
connections) while it breaks something, then checks what callers saw and
what the database kept: every write a caller was told succeeded is stored.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path

import pymongo

from tests.conftest import BIN, Database, free_port, wait_for
from tests.test_daemon import processes_mentioning

DB_TIMEOUT = 2.0


@dataclass
class Load:
    """Mixed calls from ``clients`` threads until stopped; what each call took and answered."""

    url: str
    clients: int
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    calls: list[tuple[float, float, str]] = field(default_factory=list)  # (started, seconds, outcome)
    acknowledged: list[str] = field(default_factory=list)  # slugs of the categories created
    threads: list[threading.Thread] = field(default_factory=list)

    def _client(self, n: int) -> None:
        proxy = xmlrpc.client.ServerProxy(self.url, allow_none=True)
        i = 0
        while not self.stop.is_set():
            i += 1
            kind = i % 4
            started = time.monotonic()
            slug = f"c-{n}-{i}"
            try:
                if kind == 0:
                    answer = proxy.categoriesService.create(f"Category {n} {i}", slug, "")
                elif kind == 1:
                    answer = proxy.categoriesService.get_by_slug(f"c-{n}-{i - 1}")
                elif kind == 2:
                    answer = proxy.paymentsService.calculate_fees(100)
                else:
                    answer = proxy.ping()
                if kind == 3:
                    outcome = "ok" if answer.get("mongodb") == "connected" else "ping-disconnected"
                elif answer.get("success") is True:
                    outcome = "ok"
                else:
                    outcome = str(answer.get("code"))
                if kind == 0 and outcome == "ok":
                    with self.lock:
                        self.acknowledged.append(slug)
            except xmlrpc.client.Fault as fault:
                outcome = f"fault {fault.faultCode}"
            except (OSError, xmlrpc.client.ProtocolError) as e:
                outcome = f"connection {type(e).__name__}"
                proxy = xmlrpc.client.ServerProxy(self.url, allow_none=True)
                time.sleep(0.05)
            with self.lock:
                self.calls.append((started, time.monotonic() - started, outcome))

    def start(self) -> Load:
        self.threads = [threading.Thread(target=self._client, args=(n,), daemon=True) for n in range(self.clients)]
        for t in self.threads:
            t.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(30)

    def wait(self, outcome: str, count: int, since: float = 0.0, what: str = "") -> None:
        """Until ``count`` calls started after ``since`` answered ``outcome`` (any outcome: ``outcome`` "*")."""
        def enough() -> bool:
            counts = self.outcomes(since)
            return (sum(counts.values()) if outcome == "*" else counts.get(outcome, 0)) >= count

        wait_for(enough, 60, what or f"{count} calls answered {outcome}")

    def outcomes(self, since: float = 0.0, until: float = float("inf")) -> dict[str, int]:
        counts: dict[str, int] = {}
        for started, _, outcome in self.calls:
            if since <= started < until:
                counts[outcome] = counts.get(outcome, 0) + 1
        return counts


def test_database_restarted_under_64_connections(tmp_path, make_daemon):
    server = Database(tmp_path / "restarted")
    server.start()
    daemon = make_daemon(mongodb_uri=server.uri, DB_TIMEOUT_SECONDS=str(DB_TIMEOUT))
    daemon.expected_errors = True  # the outage itself is logged
    load = Load(daemon.url, 64).start()
    try:
        load.wait("ok", 64, what="the load to run")
        down_at = time.monotonic()
        server.stop()
        time.sleep(DB_TIMEOUT + 1)  # down longer than a call's deadline: calls begun meanwhile wait it out
        server.start()
        back_at = time.monotonic()
        load.wait("*", 64, back_at + 5, "calls begun 5 s after the database's return")
    finally:
        load.finish()
    try:
        assert load.calls, "no call was made"
        slowest = max(seconds for _, seconds, _ in load.calls)
        assert slowest <= DB_TIMEOUT + 1, f"a call waited {slowest:.2f} s"
        during = load.outcomes(down_at + 0.5, back_at)
        allowed = {"ok", "UNAVAILABLE", "ping-disconnected", "NOT_FOUND"}
        assert set(during) <= allowed, during
        assert during.get("UNAVAILABLE", 0) > 0, during
        # within 5 s of the database's return every call succeeds again
        late = load.outcomes(back_at + 5)
        assert late and set(late) <= {"ok", "NOT_FOUND"}, late
        with pymongo.MongoClient(server.uri, directConnection=True) as client:
            stored = {d["slug"] for d in client[daemon.db_name].categories.find({}, {"slug": 1})}
        missing = set(load.acknowledged) - stored
        assert not missing, f"{len(missing)} acknowledged writes are missing"
        print(f"\ncalls {len(load.calls)}, acknowledged writes {len(load.acknowledged)}, "
              f"during the outage {during}, slowest {slowest:.2f} s")
    finally:
        daemon.stop()
        server.stop()


def secantusd_pids(data_dir: Path) -> list[int]:
    return [pid for pid in processes_mentioning(str(data_dir)) if "lifeline" not in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


def test_the_embedded_database_killed_under_load_is_restarted_in_place(tmp_path, make_daemon):
    data_dir = tmp_path / "embedded"
    daemon = make_daemon(mongodb_uri="", DATA_DIR=str(data_dir), DB_TIMEOUT_SECONDS=str(DB_TIMEOUT))
    daemon.expected_errors = True
    load = Load(daemon.url, 16).start()
    try:
        load.wait("ok", 16, what="the load to run")
        (pid,) = secantusd_pids(data_dir)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        wait_for(lambda: "restarting it in" in daemon.log(), 10, "the restart log line")
        wait_for(lambda: secantusd_pids(data_dir) and secantusd_pids(data_dir) != [pid], 30, "a new database")
        proxy = daemon.proxy()
        wait_for(lambda: proxy.ping()["mongodb"] == "connected", 30, "the database to answer again")
        back_at = time.monotonic()
        load.wait("*", 16, back_at + 1, "calls begun 1 s after the database's return")
    finally:
        load.finish()
    assert daemon.process is not None and daemon.process.poll() is None, "the daemon must keep running"
    during = load.outcomes(killed_at + 0.2, back_at)
    assert set(during) <= {"ok", "UNAVAILABLE", "ping-disconnected", "NOT_FOUND"}, during
    late = load.outcomes(back_at + 1)
    assert late and set(late) <= {"ok", "NOT_FOUND"}, late
    slugs = {c["slug"] for page in (1, 2, 3, 4, 5)
             for c in daemon.proxy().categoriesService.get_all(page, 100)["categories"]}
    # get_all lists by name, at most 500 here: check the acknowledged ones by slug instead
    missing = [s for s in load.acknowledged if s not in slugs
               and daemon.proxy().categoriesService.get_by_slug(s)["success"] is not True]
    assert not missing, f"{len(missing)} acknowledged writes are missing"
    line = next(line for line in daemon.log().splitlines() if "restarting it in" in line)
    assert "restart 1 of" in line
    assert "the embedded database was killed by SIGKILL (signal 9); restarting it in" in line, line


def test_kill_9_of_the_daemon_leaves_no_database_behind_and_a_restart_serves_the_data(tmp_path, make_daemon):
    data_dir = tmp_path / "embedded"
    first = make_daemon(mongodb_uri="", DATA_DIR=str(data_dir))
    assert first.proxy().categoriesService.create("Kept", "kept", "")["success"] is True
    (pid,) = secantusd_pids(data_dir)
    first.stop(signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the embedded database to die with its daemon")
    again = make_daemon(db_name=first.db_name, mongodb_uri="", DATA_DIR=str(data_dir))
    assert again.proxy().categoriesService.get_by_slug("kept")["success"] is True


def test_a_daemonised_daemon_killed_with_9_starts_again_with_the_same_pidfile(tmp_path):
    port = free_port()
    pidfile, logfile, data_dir = tmp_path / "worknet.pid", tmp_path / "worknet.log", tmp_path / "data"
    env = {"PATH": os.environ["PATH"], "NODE_ENV": "development", "HOME": str(tmp_path), "DATA_DIR": str(data_dir)}
    argv = [str(BIN / "twistd"), f"--pidfile={pidfile}", f"--logfile={logfile}", "worknet-rpc",
            "--listen", f"tcp:{port}:interface=127.0.0.1"]
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2")

    def up() -> bool:
        try:
            return proxy.ping()["mongodb"] == "connected"
        except OSError:
            return False

    def start() -> int:
        subprocess.run(argv, cwd=tmp_path, env=env, check=True, timeout=60, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_for(pidfile.exists, 30, "the pidfile")
        wait_for(up, 60, "the daemonised server")
        return int(pidfile.read_text())

    pid = start()
    try:
        assert proxy.categoriesService.create("Before", "before", "")["success"] is True
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not secantusd_pids(data_dir), 30, "the embedded database to die with its daemon")
        pid = start()
        assert proxy.categoriesService.get_by_slug("before")["success"] is True
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), 30, "the pidfile to be removed")
    wait_for(lambda: not secantusd_pids(data_dir), 30, "the embedded database to exit")


def test_the_embedded_database_gets_no_secret_from_the_daemon(tmp_path, make_daemon):
    data_dir = tmp_path / "embedded"
    token = "t" * 40
    daemon = make_daemon(mongodb_uri="", DATA_DIR=str(data_dir), RPC_AUTH_TOKEN=token)
    (pid,) = secantusd_pids(data_dir)
    environment = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    names = {entry.split(b"=", 1)[0].decode() for entry in environment if entry}
    assert "JWT_SECRET" not in names and "RPC_AUTH_TOKEN" not in names, names
    assert daemon.env["JWT_SECRET"].encode() not in b"\0".join(environment)
