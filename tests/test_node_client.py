"""The Node backend's client (npm ``xmlrpc``) against a real daemon."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

NODE_DIR = Path(__file__).parent / "node"


def run_node(script: str, *args: object) -> dict:
    """Run ``tests/node/<script>`` with node and return the JSON it printed."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "xmlrpc").is_dir():
        pytest.fail("node and the npm xmlrpc package are required: run `make node-deps` (make test does)")
    done = subprocess.run([node, str(NODE_DIR / script), *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=NODE_DIR)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_node_client_pings_and_manages_categories(daemon, db):
    out = run_node("categories.js", daemon.port)
    assert out["ping"]["status"] == "ok" and out["ping"]["mongodb"] == "connected"
    assert out["created"]["success"] is True
    assert out["fetched"]["category"]["id"] == out["created"]["category_id"]
    assert out["fetched"]["category"]["name"] == "Café Zoë 東京"
    assert out["missing"]["code"] == "VALIDATION_ERROR"
    assert db.categories.find_one({"slug": "node-cafe"})["name"] == "Café Zoë 東京"
