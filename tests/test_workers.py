"""``--workers N`` / ``RPC_WORKERS``: real processes on one listening socket."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.support import http_get
from worknet.config import ConfigError, load_settings
from worknet.workers import listen_address

PING = (b"<?xml version='1.0'?><methodCall><methodName>ping</methodName><params></params></methodCall>")


def children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found.extend(int(p) for p in task.read_text().split())
    return found


def workers_of(pid: int) -> list[int]:
    pids = []
    for child in children(pid):
        try:
            cmd = Path(f"/proc/{child}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"worknet.workers" in cmd:
            pids.append(child)
    return sorted(pids)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def ping_on_new_connection(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nConnection: close\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(PING) + PING)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return data


def test_workers_setting_parses(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")

    def workers(**env: str) -> int:
        return load_settings({"NODE_ENV": "development", **env}, env_file=str(empty)).rpc_workers

    assert workers(RPC_WORKERS="3") == 3
    assert workers(RPC_WORKERS="auto") == (os.cpu_count() or 1)
    assert workers() == 1
    for bad in ("0", "many", "65"):
        with pytest.raises(ConfigError, match="RPC_WORKERS"):
            workers(RPC_WORKERS=bad)
    assert listen_address("tcp:8000:interface=127.0.0.1")[1:3] == ("127.0.0.1", 8000)
    assert listen_address("tcp6:port=8001:interface=\\:\\:1")[1:3] == ("::1", 8001)
    with pytest.raises(ValueError, match="tcp"):
        listen_address("ssl:8443:privateKey=k.pem")


def test_two_workers_share_the_port_and_metrics_add_up(make_daemon):
    daemon = make_daemon(RPC_WORKERS="2")
    assert daemon.process is not None
    wait_for(lambda: len(workers_of(daemon.process.pid)) == 2, 10, "two workers")
    results: list[bytes] = []

    def a_round_of_calls() -> None:  # 60 pings, each on a new connection, from 4 threads
        threads = [threading.Thread(target=lambda: results.extend(ping_on_new_connection(daemon.port)
                                                                  for _ in range(15))) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def served_by() -> set[str]:
        return set(re.findall(r"\[worknet\.worker\.(\d)#info\] (?:\[[\w.:-]+\] )?ping ", daemon.log()))

    def both_served() -> bool:
        a_round_of_calls()
        return served_by() == {"1", "2"}

    # each worker logs its own calls (the parent prefixes them); both take some once both listen (the
    # second may still be starting when the first answers /health: then the first takes a whole round)
    wait_for(both_served, 30, "calls logged by both workers", interval=0)
    calls = len(results)
    assert calls % 60 == 0 and all(b"RPC Server is running" in r for r in results)
    status, text = http_get(daemon.port, "/metrics")
    assert status == 200
    counted = re.search(r'^worknet_rpc_requests_total\{method="ping",outcome="ok"\} (\S+)$', text, re.M)
    assert counted is not None and float(counted.group(1)) == calls  # the sum over both workers
    assert re.search(r"^worknet_db_pool_size (\S+)$", text, re.M).group(1) == "20.0"  # 10 per worker


def test_sigterm_stops_every_worker_after_its_calls(make_daemon):
    daemon = make_daemon(RPC_WORKERS="2", BCRYPT_ROUNDS="10", DB_TIMEOUT_SECONDS="20")
    assert daemon.process is not None
    pids = wait_for(lambda: (lambda w: w if len(w) == 2 else None)(workers_of(daemon.process.pid)), 10, "workers")
    answers: list[dict] = []

    def slow_call() -> None:  # an unknown email still costs one bcrypt check (cost 10)
        answers.append(daemon.proxy().usersService.login("nobody@example.com", "a wrong password"))

    callers = [threading.Thread(target=slow_call) for _ in range(4)]
    for t in callers:
        t.start()

    def in_flight() -> float:
        text = http_get(daemon.port, "/metrics")[1]
        return float(re.search(r"^worknet_rpc_in_flight_requests (\S+)$", text, re.M).group(1))

    wait_for(lambda: in_flight() == 4, 10, "four calls in flight (summed over the workers)")
    assert daemon.stop(signal.SIGTERM) == 0
    for t in callers:
        t.join(timeout=30)
    assert [a.get("code") for a in answers] == ["UNAUTHORIZED"] * 4  # the in-flight calls were answered
    assert not any(alive(p) for p in pids)
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", daemon.port)) != 0  # nothing listens any more


def test_a_dead_worker_is_restarted(make_daemon):
    daemon = make_daemon(RPC_WORKERS="2")
    daemon.expected_errors = True  # the parent logs the death at ERROR
    assert daemon.process is not None
    first = wait_for(lambda: (lambda w: w if len(w) == 2 else None)(workers_of(daemon.process.pid)), 10, "workers")
    os.kill(first[0], signal.SIGKILL)
    for _ in range(20):  # the other worker serves meanwhile
        assert b"RPC Server is running" in ping_on_new_connection(daemon.port)
    now = wait_for(lambda: (lambda w: w if len(w) == 2 and first[0] not in w else None)(workers_of(daemon.process.pid)),
                   20, "a new worker")
    assert first[1] in now
    assert "died" in daemon.log() and "restarting it" in daemon.log()
    wait_for(lambda: "[worknet.worker.1#info] database ready" in daemon.log().split("died", 1)[1]
             or "[worknet.worker.2#info] database ready" in daemon.log().split("died", 1)[1], 20, "restart ready")
    for _ in range(20):
        assert b"RPC Server is running" in ping_on_new_connection(daemon.port)


def test_workers_share_one_embedded_database_and_die_with_the_parent(make_daemon, tmp_path):
    daemon = make_daemon(mongodb_uri="", RPC_WORKERS="2", DATA_DIR=str(tmp_path / "embedded"))
    assert daemon.process is not None
    pids = wait_for(lambda: (lambda w: w if len(w) == 2 else None)(workers_of(daemon.process.pid)), 10, "workers")
    databases = [p for p in children(daemon.process.pid) if b"secantusd" in Path(f"/proc/{p}/cmdline").read_bytes()]
    assert len(databases) == 1  # one database for both workers
    # a write through one connection is read through others (whichever worker takes them)
    created = daemon.proxy().categoriesService.create("Shared Data", "shared-data", "one database")
    assert created["success"], created
    for _ in range(10):
        assert daemon.proxy().categoriesService.get_by_slug("shared-data")["success"]
    assert daemon.stop(signal.SIGTERM) == 0
    assert not any(alive(p) for p in pids + databases)


def test_workers_exit_when_the_parent_is_killed(make_daemon):
    daemon = make_daemon(RPC_WORKERS="2")
    daemon.expected_errors = True
    assert daemon.process is not None
    pids = wait_for(lambda: (lambda w: w if len(w) == 2 else None)(workers_of(daemon.process.pid)), 10, "workers")
    daemon.stop(signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in pids), 15, "the workers to exit after their parent")


def test_workers_refuse_a_tls_endpoint(make_daemon):
    daemon = make_daemon(RPC_WORKERS="2", start=False)
    daemon.listen = "ssl:0:privateKey=key.pem"
    daemon.start(wait=False)
    assert daemon.process is not None
    assert daemon.process.wait(timeout=30) != 0
    assert "tcp: or tcp6:" in daemon.log()


READ_ONLY_TMP = ("mount --bind \"$WRITABLE\" \"$WRITABLE\" && mount --rbind /tmp /tmp && mount -o remount,bind,ro /tmp "
                 "&& mount --bind /var/tmp /var/tmp && mount -o remount,bind,ro /var/tmp && exec \"$@\"")


def read_only_tmp(writable: Path) -> list[str]:
    """A command prefix: the command runs in a mount namespace of its own where /tmp and /var/tmp are read-only
    (as on `docker run --read-only`) and only ``writable`` (under /tmp) stays writable."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare (util-linux) is not installed: no mount namespace to make /tmp read-only in")
    probe = subprocess.run([unshare, "-m", "--propagation", "private", "mount", "--bind", "/tmp", "/tmp"],
                           capture_output=True, text=True, timeout=30)
    if probe.returncode != 0:
        pytest.skip(f"unshare -m with a bind mount needs root (CAP_SYS_ADMIN): {probe.stderr.strip()}")
    return [unshare, "-m", "--propagation", "private", "env", f"WRITABLE={writable}", "sh", "-c", READ_ONLY_TMP, "sh"]


def test_workers_on_a_read_only_tmp_keep_their_metrics_in_the_data_directory(make_daemon, tmp_path):
    """`--workers 2` where /tmp, /var/tmp and the working directory are read-only (docker run --read-only):
    with a writable DATA_DIR, --check-config says ok and the daemon serves, its metrics directory in DATA_DIR;
    without one, both stop with one line."""
    data, elsewhere = tmp_path / "data", tmp_path / "read-only-data"
    data.mkdir()
    prefix = read_only_tmp(data)

    def in_namespace(daemon):
        argv = daemon.argv
        daemon.argv = lambda: [*prefix, *argv()]
        return daemon

    def check_config(daemon) -> tuple[int, list[str]]:
        done = subprocess.run([*daemon.argv(), "--check-config"], cwd=tmp_path, env=daemon.env,
                              capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
        return done.returncode, (done.stdout + done.stderr).strip().splitlines()

    refused = in_namespace(make_daemon(start=False, RPC_WORKERS="2", LOG_FILE="", DATA_DIR=str(elsewhere)))
    code, lines = check_config(refused)
    assert code == 2 and len(lines) == 1, (code, lines[-20:])
    assert "RPC_WORKERS (--workers) 2" in lines[0] and f"DATA_DIR {elsewhere}" in lines[0], lines
    refused.start(wait=False)  # the daemon itself: the same line, no traceback
    assert refused.process is not None and refused.process.wait(timeout=60) == 2
    assert refused.log().strip().splitlines() == lines

    daemon = in_namespace(make_daemon(start=False, RPC_WORKERS="2", LOG_FILE="", DATA_DIR=str(data)))
    code, lines = check_config(daemon)
    assert code == 0 and len(lines) == 1 and "configuration ok" in lines[0], (code, lines[-20:])
    daemon.start()
    assert daemon.process is not None
    wait_for(lambda: len(workers_of(daemon.process.pid)) == 2, 20, "two workers")
    for _ in range(20):
        assert b"RPC Server is running" in ping_on_new_connection(daemon.port)
    metrics = list(data.glob("worknet-metrics-*"))
    assert len(metrics) == 1 and list(metrics[0].glob("*.db")), metrics
    # each worker publishes its gauges every second: wait for both (a loaded machine may be late)
    wait_for(lambda: (lambda t: re.search(r'^worknet_rpc_requests_total\{method="ping",outcome="ok"\} 20\.0$', t, re.M)
                      and "worknet_db_pool_size 20.0" in t)(http_get(daemon.port, "/metrics")[1]),
             20, "the 20 pings counted over both workers, and both pools")
    assert daemon.stop() == 0
    assert not list(data.glob("worknet-metrics-*"))  # removed on stop
