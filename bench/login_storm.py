"""Login storm: does the reactor stay responsive while bcrypt burns every core?

    .venv/bin/python -m bench.login_storm [--duration 20] [--clients 16] [--idle 5] [--rounds 12]

Starts a throw-away SecantusDB and one daemon (bcrypt cost ``--rounds``,
default 12 as in production), registers one account per client, then:

1. idle: one client calls ``ping`` back to back for ``--idle`` seconds;
2. storm: ``--clients`` keep-alive clients call ``usersService.login`` back to
   back for ``--duration`` seconds while one more client keeps calling
   ``ping``.

Prints logins/s (next to the bound: cores / time of one bcrypt check),
ping p50/p99 idle and during the storm, and the p99 ratio (target: <= 3).
Loopback only, bounded in time.
"""

from __future__ import annotations

import argparse
import os
import re
import threading
import time
import xmlrpc.client
from collections import Counter
from pathlib import Path

import bcrypt

from bench.loadgen import HEADER, Result, Workspace, call_body, run_load

PASSWORD = "storm password 1"  # noqa: S105 - a throw-away benchmark account


def bcrypt_seconds(rounds: int) -> float:
    salt = bcrypt.gensalt(rounds)
    started = time.perf_counter()
    for _ in range(3):
        bcrypt.hashpw(PASSWORD.encode(), salt)
    return (time.perf_counter() - started) / 3


def login_outcomes(log_path: Path) -> Counter[str]:
    """How the daemon answered the login calls: ``ok``, ``UNAVAILABLE`` (call timeout), ... (its INFO log)."""
    outcomes: Counter[str] = Counter()
    for line in log_path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.search(r"usersService\.login [0-9.]+ ms (\S+)", line)
        if match:
            outcomes[match.group(1)] += 1
    return outcomes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--idle", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=12)
    args = parser.parse_args()
    args.duration = min(args.duration, 120.0)
    args.idle = min(args.idle, 60.0)

    check = bcrypt_seconds(args.rounds)  # before anything else runs
    with Workspace("login-storm") as workspace:
        port = workspace.daemon("login_storm", BCRYPT_ROUNDS=str(args.rounds), LOG_LEVEL="INFO")
        log_path = workspace.log_path(port)
        proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2")
        emails = []
        for i in range(args.clients):
            result = proxy.usersService.register(f"storm{i}", f"storm{i}@example.com", PASSWORD, "client")
            assert result["success"], result
            emails.append(f"storm{i}@example.com")
        logins = [call_body("usersService.login", email, PASSWORD) for email in emails]
        ping = [call_body("ping")]
        run_load(port, ping, 1, 1.0)  # warm up

        idle = run_load(port, ping, 1, args.idle)
        storm: dict[str, Result] = {}

        def login_storm() -> None:
            storm["logins"] = run_load(port, logins, args.clients, args.duration)

        thread = threading.Thread(target=login_storm)
        thread.start()
        time.sleep(0.5)  # let the storm build up first
        during = run_load(port, ping, 1, args.duration - 1.0)
        thread.join()
        stormed = storm["logins"]

        cores = os.cpu_count() or 1
        print(f"bcrypt cost {args.rounds}: {check * 1000:.0f} ms per check here; {cores} cores "
              f"-> bound about {cores / check:.1f} logins/s")
        print(HEADER)
        print(idle.row("ping, idle (1 client)"))
        print(stormed.row(f"usersService.login ({args.clients} clients)"))
        print(during.row("ping during the login storm (1 client)"))
        ratio = during.p99_ms / idle.p99_ms if idle.p99_ms else float("nan")
        outcomes = login_outcomes(log_path)
        good = outcomes.get("ok", 0)
        print(f"logins/s: {stormed.rps:.1f} answered, {good / stormed.elapsed:.1f} successful; "
              f"outcomes from the daemon log: {dict(sorted(outcomes.items()))}; transport errors {stormed.errors}")
        print(f"ping p50 idle {idle.p50_ms:.2f} ms, during storm {during.p50_ms:.2f} ms "
              f"(x{during.p50_ms / idle.p50_ms:.1f})")
        print(f"ping p99 idle {idle.p99_ms:.2f} ms, during storm {during.p99_ms:.2f} ms "
              f"(x{ratio:.1f}; target <= 3: {'met' if ratio <= 3 else 'NOT met'})")


if __name__ == "__main__":
    main()
