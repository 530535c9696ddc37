"""A burst of new connections is accepted without the kernel dropping SYNs (a listen backlog of 1024, not 50)."""

from __future__ import annotations

import socket
import time

BURST = 400
RESENT = 0.9  # a connect that took this long had its SYN dropped and resent (the kernel waits 1 s)


def test_a_burst_of_idle_connections_is_accepted_without_resent_syns(daemon):
    opened, slow = [], []
    began = time.perf_counter()
    try:
        for _ in range(BURST):
            started = time.perf_counter()
            opened.append(socket.create_connection(("127.0.0.1", daemon.port), timeout=10))
            if time.perf_counter() - started >= RESENT:
                slow.append(round(time.perf_counter() - started, 2))
        took = time.perf_counter() - began
    finally:
        for s in opened:
            s.close()
    print(f"\n{BURST} connections opened one after another in {took:.2f} s; {len(slow)} waited >= {RESENT} s")
    assert not slow, f"{len(slow)} of {BURST} connections waited for a resent SYN: {slow[:5]}"
