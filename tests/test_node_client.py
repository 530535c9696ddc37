"""The Node backend's client (npm ``xmlrpc``) against a real daemon."""

from __future__ import annotations

from tests.support import run_node


def test_node_client_pings_and_manages_categories(daemon, db):
    out = run_node("categories.js", daemon.port)
    assert out["ping"]["status"] == "ok" and out["ping"]["mongodb"] == "connected"
    assert out["created"]["success"] is True
    assert out["fetched"]["category"]["id"] == out["created"]["category_id"]
    assert out["fetched"]["category"]["name"] == "Café Zoë 東京"
    assert out["missing"]["code"] == "VALIDATION_ERROR"
    assert db.categories.find_one({"slug": "node-cafe"})["name"] == "Café Zoë 東京"
