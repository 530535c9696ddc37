"""The in-process tier's harness (tests/inprocess.py): what it promises the tests built on it."""

from __future__ import annotations

import json
import threading

from tests import inprocess


def test_two_apps_keep_their_own_log_lines(app, make_app):
    other = make_app(db_name=app.db_name)
    app.proxy().ping()
    other.proxy().usersService.get_by_id("0" * 24)
    assert "] ping " in app.log() and "] ping " not in other.log()
    assert "usersService.get_by_id" in other.log() and "get_by_id" not in app.log()
    assert "database ready" in other.wait_log("database ready")


def test_health_and_metrics_are_the_sites_own(app):
    status, body = app.get("/health")
    assert status == 200 and json.loads(body)["status"] == "ok"
    app.proxy().paymentsService.calculate_fees("10.00")
    status, text = app.get("/metrics")
    assert status == 200
    assert 'worknet_rpc_requests_total{method="paymentsService.calculate_fees",outcome="ok"} 1.0' in text


def test_a_stopped_app_leaves_no_timer_thread_or_shutdown_trigger(database, app_databases):
    from twisted.internet import reactor

    def timers():
        return inprocess.on_reactor(lambda: {c for c in reactor.getDelayedCalls() if c.active()})

    def triggers():
        return sum(len(p) for e in reactor._eventTriggers.values() for p in (e.before, e.during, e.after))

    name = app_databases.take()
    before, before_triggers = timers(), triggers()
    app = inprocess.App(database, name, BCRYPT_ROUNDS="4").start()
    try:
        assert app.proxy().usersService.register("harness", "harness@example.com", "password1", "client")["success"]
        assert any("worknet-bcrypt" in t.name for t in threading.enumerate())
    finally:
        app.stop()
        app_databases.give_back(name)
    left = timers() - before
    assert not left, [(str(c), c.getTime() - reactor.seconds()) for c in left]
    assert triggers() == before_triggers
    assert not any("worknet-bcrypt" in t.name for t in threading.enumerate())
