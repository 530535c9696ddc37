"""Cost of one no-database call inside the process, in microseconds: a repeatable figure.

    .venv/bin/python -m bench.percall [--calls 20000] [--profile]

Feeds complete HTTP/1.1 keep-alive requests for
``paymentsService.calculate_fees(100.0)`` (and ``ping`` with a fresh probe
result) straight into the daemon's real ``Site`` over an in-memory transport:
HTTP parsing, the resource, the dispatcher, metrics, the log line (INFO, to
a real log file as in the foreground) and the encoded answer -- everything but
the socket.  The same loop runs against stock ``twisted.web.xmlrpc`` answering
the same call.  Reports the best of 10 rounds, in CPU microseconds per call (process
time, so other load on the machine barely moves it).
Also the Python function calls per request (cProfile's count), which load
on the machine cannot move.  ``--profile`` prints cProfile's top functions for the daemon's loop.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.testing import StringTransport

from bench.loadgen import call_body


def request_bytes(body: bytes) -> bytes:
    return (b"POST /RPC2 HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/xml\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)) + body


def daemon_site(log_dir: Path, level: str = "INFO") -> Any:
    from worknet import logs
    from worknet.app import build_site
    from worknet.config import load_settings
    from worknet.store import MongoStore

    env_file = log_dir / "empty.env"
    env_file.write_text("")
    settings = load_settings({"NODE_ENV": "development", "MONGODB_URI": "mongodb://127.0.0.1:9/"},
                             env_file=str(env_file))
    from twisted.logger import globalLogPublisher

    # the observer twistd runs in the foreground, writing to a real log file
    globalLogPublisher.addObserver(logs.observer(level, "text", foreground=True, log_file="",
                                                 twistd_logfile=str(log_dir / "rpc_server.log"), reactor=reactor))
    store = MongoStore(settings, lambda: settings.mongodb_uri, reactor=reactor)
    store.is_ready = True  # calculate_fees reads nothing; no database is contacted
    store.connected = True
    store._pool = object()  # type: ignore[assignment]  # ping: answered from the fresh probe result below
    store._probe_started = 1e18  # a fresh probe result, for ever
    return build_site(store, settings, reactor=reactor)


def stock_site() -> Any:
    from twisted.web import server, xmlrpc

    from bench.peers.stock_twisted import Payments

    class Root(xmlrpc.XMLRPC):
        def xmlrpc_ping(self) -> dict:
            return {"status": "ok", "message": "RPC Server is running", "mongodb": "connected"}

    root = Root(allowNone=True)
    root.putSubHandler("paymentsService", Payments())
    site = server.Site(root)
    site.log = lambda request: None  # type: ignore[method-assign]
    return site


def per_call_us(site: Any, body: bytes, calls: int) -> float:
    """Microseconds per call, ``calls`` requests on one keep-alive connection."""
    channel = site.buildProtocol(("127.0.0.1", 1))
    transport = StringTransport()
    channel.makeConnection(transport)
    data = request_bytes(body)
    started = time.process_time()  # CPU time of this process: steady on a busy machine
    for _ in range(calls):
        channel.dataReceived(data)
    elapsed = time.process_time() - started
    answers = transport.value().count(b"HTTP/1.1 200")
    assert answers == calls, f"{answers} answers for {calls} calls: {transport.value()[-400:]!r}"
    assert b"<fault>" not in transport.value()[-2000:]
    channel.connectionLost(None)
    return elapsed / calls * 1e6


def calls_per_request(site: Any, body: bytes, requests: int = 1000) -> float:
    """Python function calls per request (cProfile's count): a figure that load on the machine cannot move."""
    profiler = cProfile.Profile()
    profiler.enable()
    per_call_us(site, body, requests)
    profiler.disable()
    stats = pstats.Stats(profiler)
    return stats.total_calls / requests  # type: ignore[attr-defined]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=20000)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--log-level", default="INFO", help="INFO (one line per call, as deployed) or WARNING")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        ours = daemon_site(Path(tmp), args.log_level)
        theirs = stock_site()
        cases = {"calculate_fees": call_body("paymentsService.calculate_fees", 100.0), "ping": call_body("ping")}
        for name, body in cases.items():
            for label, site in (("worknet", ours), ("stock twisted.web.xmlrpc", theirs)):
                per_call_us(site, body, 500)  # warm
                rounds = [per_call_us(site, body, args.calls // 10) for _ in range(10)]
                print(f"{name:<16} {label:<26} {min(rounds):8.1f} us/call (best of 10 rounds; median "
                      f"{statistics.median(rounds):.1f}), {calls_per_request(site, body):6.0f} Python calls/request "
                      f"(rounds {', '.join(f'{r:.1f}' for r in rounds)})", flush=True)
        if args.profile:
            profiler = cProfile.Profile()
            profiler.enable()
            per_call_us(ours, cases["calculate_fees"], args.calls // 5)
            profiler.disable()
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(45)


if __name__ == "__main__":
    main()
