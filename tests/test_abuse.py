"""Abuse: slow and idle connections, connection floods, hostile bodies -- the daemon keeps serving others.

Memory is read from ``/proc/PID/status`` (``VmHWM``: the peak resident set),
so "peak RSS growth" is the peak after the abuse minus the peak before it.
"""

from __future__ import annotations

import http.client
import socket
import statistics
import threading
import time
import xmlrpc.client
from pathlib import Path

import pytest

from tests.conftest import wait_for


def status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def open_descriptors(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/fd").iterdir()))


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    """True when the server closes ``sock`` within ``timeout`` seconds (EOF or reset)."""
    sock.settimeout(timeout)
    try:
        while True:
            data = sock.recv(4096)
            if not data:
                return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def test_slowloris_is_cut_off_at_the_read_deadline(make_daemon):
    daemon = make_daemon(RPC_READ_TIMEOUT_SECONDS="2", RPC_IDLE_TIMEOUT_SECONDS="30")
    header = b"POST /RPC2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\nX-Padding: " + b"a" * 200
    slow = [connect(daemon.port) for _ in range(20)]
    started = time.monotonic()
    cut: set[int] = set()
    # a byte a second: the idle timeout alone (30 s) never fires, every byte resets it
    while time.monotonic() - started < 8 and len(cut) < len(slow):
        for i, sock in enumerate(slow):
            if i in cut:
                continue
            try:
                sock.sendall(header[int(time.monotonic() - started): int(time.monotonic() - started) + 1])
            except OSError:
                cut.add(i)
        time.sleep(1)
    for i, sock in enumerate(slow):
        if i not in cut and closed_by_server(sock, 2):
            cut.add(i)
        sock.close()
    assert len(cut) == len(slow), f"{len(slow) - len(cut)} slow connections still open after 8 s"
    assert daemon.proxy().ping()["status"] == "ok"


def test_idle_connections_are_closed(make_daemon):
    daemon = make_daemon(RPC_IDLE_TIMEOUT_SECONDS="1.5")
    pid = daemon.process.pid
    before = open_descriptors(pid)
    idle = [connect(daemon.port) for _ in range(50)]
    used = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)  # one that made a call, then idles
    used.request("GET", "/health")
    used.getresponse().read()
    wait_for(lambda: open_descriptors(pid) >= before + 50, 10, "the daemon to accept the connections")
    assert all(closed_by_server(sock, 5) for sock in idle)
    assert closed_by_server(used.sock, 5)
    for sock in idle:
        sock.close()
    wait_for(lambda: open_descriptors(pid) <= before + 2, 10, "the descriptors to be released")


def test_2000_connections_from_one_client_do_not_stop_another(make_daemon):
    daemon = make_daemon()
    pid = daemon.process.pid
    before = open_descriptors(pid)
    flood: list[socket.socket] = []
    try:
        for _ in range(2000):
            flood.append(connect(daemon.port))
        wait_for(lambda: open_descriptors(pid) >= before + 2000, 30, "the flood to be accepted")
        proxy = daemon.proxy()
        times = []
        for _ in range(200):
            started = time.perf_counter()
            assert proxy.paymentsService.calculate_fees(100)["success"] is True
            times.append(time.perf_counter() - started)
        p99 = statistics.quantiles(times, n=100)[98]
        print(f"\nother client during 2,000 open connections: p50 {statistics.median(times) * 1000:.1f} ms, "
              f"p99 {p99 * 1000:.1f} ms; daemon descriptors {open_descriptors(pid)}")
        assert p99 < 1.0
    finally:
        for sock in flood:
            sock.close()
    wait_for(lambda: open_descriptors(pid) <= before + 2, 30, "the descriptors to be released")


def test_connections_past_the_cap_are_closed_and_the_daemon_keeps_its_descriptors(make_daemon):
    daemon = make_daemon(RPC_MAX_CONNECTIONS="100")
    flood, dropped = [], 0
    try:
        for _ in range(150):
            try:
                flood.append(connect(daemon.port))
            except ConnectionResetError:  # closed by the daemon before the handshake was seen here
                dropped += 1
        dropped += sum(closed_by_server(sock, 0.5) for sock in flood)
        assert dropped >= 50
    finally:
        for sock in flood:
            sock.close()
    # the database pool still works: a call that needs it succeeds once the flood is gone
    proxy = daemon.proxy()
    wait_for(lambda: proxy.categoriesService.get_by_slug("none")["code"] == "NOT_FOUND", 10, "a database call")
    _, body = _metrics(daemon.port)
    assert 'worknet_http_connections_dropped{reason="over_cap"}' in body


def _metrics(port: int) -> tuple[int, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", "/metrics")
        answer = conn.getresponse()
        return answer.status, answer.read().decode()
    finally:
        conn.close()


ENTITY_BOMB = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
               + b"".join(b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i else b"&lol;") * 10)
                          for i in range(1, 10))
               + b']><methodCall><methodName>ping</methodName><params><param><value><string>&lol9;'
               + b"</string></value></param></params></methodCall>")


def _nested(depth: int) -> bytes:
    return (b"<?xml version='1.0'?><methodCall><methodName>ping</methodName><params><param>"
            + b"<value><array><data>" * depth + b"</data></array></value>" * depth + b"</param></params></methodCall>")


@pytest.mark.parametrize("rounds", [20])
def test_hostile_bodies_are_refused_with_little_memory(make_daemon, rounds):
    daemon = make_daemon()
    pid = daemon.process.pid
    proxy = daemon.proxy()
    for _ in range(50):  # warm up: first calls allocate caches that are not growth
        proxy.ping()
    peak_before, rss_before = status_kib(pid, "VmHWM"), status_kib(pid, "VmRSS")
    bodies = {
        "entity bomb": ENTITY_BOMB,
        "nesting 65 deep": _nested(65),
        "nesting 10,000 deep": _nested(10_000),
        "1 MiB + 1 of text": b"<" + b"a" * (1024 * 1024),
        "64 MiB declared": None,  # Content-Length only
    }
    statuses: dict[str, set] = {name: set() for name in bodies}

    def send(name: str, body: bytes | None) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        try:
            if body is None:
                conn.putrequest("POST", "/RPC2")
                conn.putheader("Content-Type", "text/xml")
                conn.putheader("Content-Length", str(64 * 1024 * 1024))
                conn.endheaders()
                conn.send(b"<" * 65536)
            else:
                conn.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"})
            answer = conn.getresponse()
            text = answer.read()
            fault = b"faultCode" in text
            statuses[name].add(answer.status if not fault or answer.status != 200 else "fault")
        except (ConnectionError, OSError):
            statuses[name].add("closed")
        finally:
            conn.close()

    threads = [threading.Thread(target=send, args=(name, body)) for _ in range(rounds)
               for name, body in bodies.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    growth = (status_kib(pid, "VmHWM") - peak_before) / 1024
    print(f"\npeak RSS before {peak_before / 1024:.1f} MiB (RSS {rss_before / 1024:.1f} MiB), "
          f"peak growth after {rounds} rounds of {len(bodies)} hostile bodies: {growth:.1f} MiB; {statuses}")
    assert statuses["entity bomb"] == {"fault"}
    assert statuses["nesting 65 deep"] == {"fault"}
    assert statuses["nesting 10,000 deep"] == {"fault"}
    assert statuses["1 MiB + 1 of text"] <= {413, "closed"}
    assert statuses["64 MiB declared"] <= {413, "closed"}
    assert growth < 20, f"peak RSS grew by {growth:.1f} MiB"
    assert proxy.ping()["status"] == "ok"


def test_xmlrpc_client_still_works_after_abuse(daemon):
    proxy = xmlrpc.client.ServerProxy(daemon.url)
    assert proxy.paymentsService.calculateFees("10.00")["success"] is True
