"""``ping`` under load: one database probe at a time, and a status never older than a second."""

from __future__ import annotations

import signal
import threading
import time

import pymongo

from tests.conftest import Database, wait_for


def commands_seen(client: pymongo.MongoClient) -> int:
    """The database's own count of commands run (serverStatus counts itself too)."""
    return int(client.admin.command("serverStatus")["opcounters"]["command"])


def test_concurrent_pings_share_one_probe(tmp_path, make_daemon):
    server = Database(tmp_path / "ping-db")
    server.start()
    client: pymongo.MongoClient = pymongo.MongoClient(server.uri, directConnection=True)
    try:
        daemon = make_daemon(mongodb_uri=server.uri)
        before = commands_seen(client)
        started = time.monotonic()
        answers: list[str] = []

        def caller() -> None:
            proxy = daemon.proxy()
            for _ in range(25):
                answers.append(proxy.ping()["mongodb"])

        threads = [threading.Thread(target=caller) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        seconds = time.monotonic() - started
        ran = commands_seen(client) - before - 1
        assert answers == ["connected"] * 400
        # two probes a second at most, plus txmongo's own keep-alive pings (each of the
        # 10 pool connections every 5 s); one command per call would be 400
        bound = 2 * seconds + 2 + 10 * (seconds / 5 + 1)
        assert ran <= bound, f"{ran} database commands for 400 pings in {seconds:.1f} s"
    finally:
        client.close()
        server.stop()


def test_ping_says_disconnected_within_a_second_of_the_database_dying(tmp_path, make_daemon):
    server = Database(tmp_path / "dying-db")
    server.start()
    try:
        daemon = make_daemon(mongodb_uri=server.uri)
        proxy = daemon.proxy()
        keep_pinging = threading.Event()

        def load() -> None:  # pings keep coming, so a fresh result is always cached
            other = daemon.proxy()
            while not keep_pinging.is_set():
                other.ping()

        pinger = threading.Thread(target=load)
        pinger.start()
        try:
            assert proxy.ping()["mongodb"] == "connected"
            assert server.process is not None
            server.process.send_signal(signal.SIGKILL)
            died = time.monotonic()
            server.process.wait()
            wait_for(lambda: proxy.ping()["mongodb"] == "disconnected", 5, "ping to say disconnected")
            assert time.monotonic() - died < 1.0
        finally:
            keep_pinging.set()
            pinger.join()
    finally:
        server.stop()


def test_ping_says_disconnected_when_the_database_hangs(tmp_path, make_daemon):
    """A database that stops answering (SIGSTOP) without closing its connections: no answer within
    a second is disconnected; the report comes within the probe timeout plus one fresh period."""
    server = Database(tmp_path / "hung-db")
    server.start()
    try:
        daemon = make_daemon(mongodb_uri=server.uri)
        proxy = daemon.proxy()
        assert proxy.ping()["mongodb"] == "connected"
        assert server.process is not None
        server.process.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            wait_for(lambda: proxy.ping()["mongodb"] == "disconnected", 5, "ping to say disconnected")
            assert time.monotonic() - stopped < 1.6
        finally:
            server.process.send_signal(signal.SIGCONT)
        wait_for(lambda: proxy.ping()["mongodb"] == "connected", 20, "ping to say connected again")
    finally:
        server.stop()
