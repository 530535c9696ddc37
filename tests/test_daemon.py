"""The daemon's life: configuration errors, database outages, shutdown, daemonising, the embedded database."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import xmlrpc.client
from pathlib import Path

import pymongo
import pytest

from tests.conftest import BIN, Database, free_port, wait_for
from tests.support import http_get


def processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(int(entry.name))
    return found


def http_status(port: int, path: str) -> int:
    return http_get(port, path)[0]


@pytest.mark.parametrize("variable, value, mentions", [
    ("RPC_PORT", "abc", "RPC_PORT"),
    ("MONGODB_POOL_SIZE", "0", "MONGODB_POOL_SIZE"),
    ("PLATFORM_FEE_PERCENT", "120", "PLATFORM_FEE_PERCENT"),
    ("LOG_LEVEL", "LOUD", "LOG_LEVEL"),
])
def test_bad_settings_stop_the_daemon_with_one_line(tmp_path, variable, value, mentions):
    env = {"PATH": os.environ["PATH"], "NODE_ENV": "development", variable: value}
    done = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "worknet-rpc"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1 and mentions in lines[0], lines


def test_production_refuses_a_weak_jwt_secret(tmp_path):
    for secret in ("", "short-secret"):
        env = {"PATH": os.environ["PATH"], "NODE_ENV": "production", "JWT_SECRET": secret}
        done = subprocess.run([str(BIN / "twistd"), "-n", "--pidfile=", "worknet-rpc"], cwd=tmp_path, env=env,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "JWT_SECRET" in done.stderr
        assert secret == "" or secret not in done.stderr


def test_database_outage_is_reported_and_survived(tmp_path, make_daemon):
    server = Database(tmp_path / "outage-db")
    server.start()
    try:
        daemon = make_daemon(mongodb_uri=server.uri)
        rpc = daemon.proxy()
        assert rpc.categoriesService.create("Before", "before", "")["success"]
        server.stop()

        assert wait_for(lambda: rpc.ping()["mongodb"] == "disconnected", 15, "ping to report disconnected")
        assert http_status(daemon.port, "/health") == 503
        started = time.monotonic()
        down = rpc.categoriesService.get_by_slug("before")
        assert time.monotonic() - started < 5
        assert down["success"] is False and down["code"] == "UNAVAILABLE"
        assert "mongo" not in down["error"].lower() or "database" in down["error"].lower()

        server.start()  # same port, same data
        assert wait_for(lambda: rpc.categoriesService.get_by_slug("before").get("success"), 30,
                        "calls to succeed again")
        # ping's probe may land on a pool connection still reconnecting (back-off up to 2 s)
        assert wait_for(lambda: rpc.ping()["mongodb"] == "connected", 5, "ping to report connected")
        assert http_status(daemon.port, "/health") == 200
    finally:
        server.stop()


def test_calls_wait_for_the_indexes_when_the_database_comes_up_late(tmp_path, make_daemon):
    server = Database(tmp_path / "late-db")
    daemon = make_daemon(mongodb_uri=server.uri, start=False)
    daemon.start(wait=False)
    try:
        rpc = daemon.proxy()

        def answers_ping() -> bool:
            try:
                return rpc.ping()["mongodb"] == "disconnected"
            except OSError:  # not listening yet
                return False

        wait_for(answers_ping, 30, "the daemon to answer ping")
        assert http_status(daemon.port, "/health") == 503
        started = time.monotonic()
        early = rpc.categoriesService.create("Too early", "too-early", "")
        assert time.monotonic() - started < 5
        assert early["success"] is False and early["code"] == "UNAVAILABLE", early

        server.start()
        # the call that gave up must not have spoiled the wait for the others
        wait_for(lambda: http_status(daemon.port, "/health") == 200, 30, "the indexes to be created")
        created = rpc.categoriesService.create("In time", "in-time", "")
        assert created["success"] is True, created
        with pymongo.MongoClient(server.uri, directConnection=True) as client:
            assert "email_unique" in client[daemon.db_name].users.index_information()
    finally:
        daemon.stop()
        server.stop()


def test_sigterm_finishes_calls_and_stops_the_embedded_database(tmp_path, make_daemon):
    data_dir = tmp_path / "embedded-data"
    daemon = make_daemon(mongodb_uri="", DATA_DIR=str(data_dir))
    assert processes_mentioning(str(data_dir)), "the embedded database should be running"
    results: list = []
    barrier = threading.Barrier(21)

    def create(i: int) -> None:
        proxy = daemon.proxy()
        barrier.wait()
        try:
            results.append(("ok", proxy.categoriesService.create(f"Category {i}", f"category-{i}", "")))
        except (ConnectionError, OSError) as e:  # arrived after the listener closed
            results.append(("refused", repr(e)))

    threads = [threading.Thread(target=create, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    barrier.wait()
    time.sleep(0.02)
    assert daemon.stop(signal.SIGTERM) == 0
    for t in threads:
        t.join(10)
    assert len(results) == 20
    answered = [r for kind, r in results if kind == "ok"]
    assert answered, "calls in flight at SIGTERM should have been answered"
    assert all(r["success"] for r in answered), answered
    wait_for(lambda: not processes_mentioning(str(data_dir)), 30, "the embedded database to exit")

    # Everything acknowledged before the stop is in the database after a restart.
    again = make_daemon(db_name=daemon.db_name, mongodb_uri="", DATA_DIR=str(data_dir))
    stored = {c["slug"] for c in again.proxy().categoriesService.get_all(1, 100)["categories"]}
    assert {r["category"]["slug"] for r in answered} <= stored


def test_embedded_database_failure_stops_the_daemon(tmp_path, make_daemon):
    data_dir = tmp_path / "shared-data"
    first = make_daemon(mongodb_uri="", DATA_DIR=str(data_dir))
    second = make_daemon(mongodb_uri="", start=False, DATA_DIR=str(data_dir))
    second.expected_errors = True
    second.start(wait=False)
    assert second.process is not None
    code = second.process.wait(timeout=60)
    assert code != 0
    assert "cannot run without the database" in second.log()
    holder = [pid for pid in processes_mentioning(str(data_dir)) if "secantusd" in
              Path(f"/proc/{pid}/cmdline").read_text(errors="replace")]
    assert first.process is not None  # the daemon is named, and its database process
    assert (f"is in use by process {first.process.pid} (a worknet-rpc daemon; its database is process {holder[0]})"
            in second.log()), second.log()[-2000:]
    assert first.proxy().ping()["mongodb"] == "connected"


def test_twistd_daemonises_with_pidfile_and_logfile(tmp_path, database):
    port = free_port()
    pidfile, logfile = tmp_path / "worknet.pid", tmp_path / "worknet.log"
    env = {"PATH": os.environ["PATH"], "NODE_ENV": "development", "HOME": str(tmp_path)}
    subprocess.run(
        [str(BIN / "twistd"), f"--pidfile={pidfile}", f"--logfile={logfile}", "worknet-rpc",
         "--listen", f"tcp:{port}:interface=127.0.0.1", "--mongodb-uri", database, "--db-name", f"daemonised_{port}"],
        cwd=tmp_path, env=env, check=True, timeout=60, stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    wait_for(pidfile.exists, 30, "the pidfile")
    pid = int(pidfile.read_text())
    proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2")

    def up() -> bool:
        try:
            return proxy.ping()["mongodb"] == "connected"
        except OSError:
            return False

    try:
        wait_for(up, 30, "the daemonised server")
        proxy.categoriesService.create("Logged call", "logged-call", "argument-never-logged-7f3a")
        wait_for(lambda: "categoriesService.create" in logfile.read_text(), 10, "the call's log line")
        assert "argument-never-logged-7f3a" not in logfile.read_text()
    finally:
        os.kill(pid, signal.SIGTERM)
    wait_for(lambda: not pidfile.exists(), 30, "the pidfile to be removed")
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), 30, "the daemon process to exit")


def test_tls_endpoint_string(make_daemon, tmp_path):
    import ssl

    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    daemon = make_daemon(start=False)
    daemon.listen = f"ssl:{daemon.port}:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    daemon.start(wait=False)
    context = ssl.create_default_context(cafile=str(cert))
    proxy = xmlrpc.client.ServerProxy(f"https://127.0.0.1:{daemon.port}/RPC2", context=context)

    def up() -> bool:
        try:
            return proxy.ping()["mongodb"] == "connected"
        except OSError:
            return False

    wait_for(up, 30, "the TLS listener")
    assert proxy.categoriesService.get_by_slug("none-here")["code"] == "NOT_FOUND"
    plain = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{daemon.port}/RPC2")
    with pytest.raises((OSError, xmlrpc.client.ProtocolError)):
        plain.ping()


def test_foreground_logs_one_line_per_call_to_rpc_server_log(daemon, tmp_path):
    daemon.proxy().categoriesService.create("Logged", "logged", "secret-looking-argument-91")
    log_file = tmp_path / "rpc_server.log"
    wait_for(lambda: log_file.exists() and "categoriesService.create" in log_file.read_text(), 10, "rpc_server.log")
    lines = [line for line in log_file.read_text().splitlines() if "categoriesService.create" in line]
    assert len(lines) == 1 and " ms ok" in lines[0]
    assert "secret-looking-argument-91" not in log_file.read_text()
    assert "categoriesService.create" in daemon.log()  # and the console


def test_ctrl_c_stops_the_daemon_and_then_its_embedded_database_in_order(make_daemon, tmp_path):
    """A terminal's Ctrl-C sends SIGINT to the whole foreground process group: only the daemon may act on it,
    stopping its database itself -- not the database dying at once, seen as a crash (restarted, compaction
    postponed with AutoReconnect)."""
    data_dir = tmp_path / "ctrl-c-data"
    daemon = make_daemon(mongodb_uri="", start=False, DATA_DIR=str(data_dir))
    argv = daemon.argv
    daemon.argv = lambda: ["setsid", *argv()]  # its own process group, as a shell gives a foreground job
    daemon.start()
    assert daemon.process is not None
    assert daemon.proxy().categoriesService.create("Before Ctrl-C", "before-ctrl-c", "")["success"]
    database = [pid for pid in processes_mentioning(str(data_dir)) if pid != daemon.process.pid]
    assert len(database) == 1
    # out of the daemon's process group (a race otherwise: whichever of the two handles the SIGINT first)
    assert os.getpgid(database[0]) != os.getpgid(daemon.process.pid)
    os.killpg(daemon.process.pid, signal.SIGINT)  # what the terminal does
    # twistd ends a SIGINT run by re-raising the signal (the shell's convention for an interrupted job)
    try:
        ended = daemon.process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"the daemon did not stop within 60 s of Ctrl-C:\n{daemon.log()[-3000:]}") from None
    assert ended in (0, -signal.SIGINT)
    log = daemon.log()
    assert "Received SIGINT, shutting down." in log and "embedded database stopped" in log, log[-3000:]
    for spurious in ("exited unexpectedly", "restarting it", "compaction postponed", "AutoReconnect"):
        assert spurious not in log, log[-3000:]
    wait_for(lambda: not processes_mentioning(str(data_dir)), 30, "the embedded database to exit")
