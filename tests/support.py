"""Helpers shared by the test modules: seeded documents, the Node client runner."""

from __future__ import annotations

import http.client
import json
import shutil
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from bson import ObjectId

MISSING = "0" * 24  # a well-formed id that names nothing
NODE_DIR = Path(__file__).parent / "node"


def user_doc(name: str, **fields) -> dict:
    """A users document as usersService stores it (docs/DATA_MODEL.md), for seeding a database directly."""
    moment = datetime.now(UTC)
    return {
        "_id": ObjectId(),
        "username": name,
        "usernameLower": name.lower(),
        "email": f"{name.lower()}@example.com",
        "passwordHash": "x",
        "role": "client",
        "isSeller": False,
        "rating": 0.0,
        "reviewCount": 0,
        "tokenVersion": 0,
        "createdAt": moment,
        "updatedAt": moment,
        **fields,
    }


def seed_user(db, name: str, **fields) -> str:
    """Insert a user straight into the database; its id as a string."""
    doc = user_doc(name, **fields)
    db.users.insert_one(doc)
    return str(doc["_id"])


def run_node(script: str, *args: object) -> dict:
    """Run ``tests/node/<script>`` with node (the npm ``xmlrpc`` client) and return the JSON it printed."""
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "xmlrpc").is_dir():
        pytest.fail("node and the npm xmlrpc package are required: run `make node-deps` (make test does)")
    done = subprocess.run([node, str(NODE_DIR / script), *map(str, args)], capture_output=True, text=True,
                          timeout=60, cwd=NODE_DIR)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def http_get(port: int, path: str) -> tuple[int, str]:
    """``GET path`` on a daemon: the status and the body."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode("utf-8", errors="replace")
    finally:
        conn.close()
