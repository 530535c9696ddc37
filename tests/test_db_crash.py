"""The database crashed or frozen under load: the short mode of ``bench/db_crash.py``.

Callers run keyed order flows, payments, messages and reads through a real
daemon (``DB_TIMEOUT_SECONDS`` = ``TIMEOUT``) while the database is killed
with SIGKILL and started again on the same data directory (an external
SecantusDB), killed under the daemon that runs it (the embedded one), or
frozen with SIGSTOP for longer than the deadline.  Each prints its timeline
(calls started, ok, UNAVAILABLE and the slowest call, per second) and checks
what a caller must see: no call answered later than the deadline + 1 s, calls
succeed again within a few seconds of the database's return, and no second
collapse afterwards.  ``python -m bench.db_crash`` is the long version (64
callers, 45 s after the restart).
"""

from __future__ import annotations

import signal

import pytest

from bench.db_crash import run

TIMEOUT = 2.0
CALLERS = 16
RECOVERY = 3  # seconds after the database answers again by which calls succeed again
BEFORE = 3.0  # seconds of load before the kill: two whole seconds give the rate a second wave is measured by
# seconds of load after the database is back: the recovery (RECOVERY at most), then more than one beat of
# every periodic task that could bring a second collapse (the driver's 5 s heartbeat, the 2 s session beat) when
# the recovery is on time (the frozen test had 8 s already)
AFTER = 8.0


def check(result: dict) -> None:
    assert result["past_deadline"] == 0, (
        f"{result['past_deadline']} calls answered later than the deadline + 1 s: {result['past_deadline_calls']}")
    assert result["recovered_at"] is not None, "calls never succeeded again"
    assert result["recovered_at"] <= result["database_back_at"] + RECOVERY, result
    assert not result["wave_seconds"], f"calls collapsed again after the recovery at {result['wave_seconds']} s"
    assert result["unavailable_after_recovery"] <= 2, result


@pytest.mark.parametrize("mode", ["external", "embedded"])
def test_the_database_killed_with_9_under_load(tmp_path, mode):
    check(run(mode, signal.SIGKILL, CALLERS, before=BEFORE, after=AFTER, timeout=TIMEOUT, workdir=tmp_path))


def test_a_frozen_database_holds_no_call_past_its_deadline(tmp_path):
    # SIGSTOP: connections stay open and nothing answers (a database stalled in its recovery or on its disk)
    # for two whole deadlines and more
    check(run("external", signal.SIGSTOP, CALLERS, before=BEFORE, after=AFTER, timeout=TIMEOUT, workdir=tmp_path,
              stall=2 * TIMEOUT + 2))
