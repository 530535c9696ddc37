"""The Node backend's client against a real daemon: npm ``xmlrpc`` directly, and the ``worknet-rpc-client`` package.

``test_node_client_package_suite`` runs ``node --test clients/node/test/`` against a daemon that requires a
token.  Set ``WORKNET_GENERATE_NODE_TYPES=1`` to rewrite ``clients/node/index.d.ts`` and ``methods.json``
from that daemon first (what ``npm run generate`` does against a running one).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess

import pytest

from tests.conftest import ROOT
from tests.support import run_node

CLIENT_DIR = ROOT / "clients" / "node"


def test_node_client_pings_and_manages_categories(daemon, db):
    out = run_node("categories.js", daemon.port)
    assert out["ping"]["status"] == "ok" and out["ping"]["mongodb"] == "connected"
    assert out["created"]["success"] is True
    assert out["fetched"]["category"]["id"] == out["created"]["category_id"]
    assert out["fetched"]["category"]["name"] == "Café Zoë 東京"
    assert out["missing"]["code"] == "VALIDATION_ERROR"
    assert db.categories.find_one({"slug": "node-cafe"})["name"] == "Café Zoë 東京"


def test_node_client_package_suite(make_daemon):
    node = shutil.which("node")
    if node is None or not (CLIENT_DIR / "node_modules" / "xmlrpc").is_dir():
        pytest.fail("node and clients/node's packages are required: run `make node-client` (make test does)")
    token = secrets.token_urlsafe(32)
    daemon = make_daemon(RPC_AUTH_TOKEN=token, BCRYPT_ROUNDS="4")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "RPC_SERVER_URL": daemon.url,
        "RPC_AUTH_TOKEN": token,
    }
    if os.environ.get("WORKNET_GENERATE_NODE_TYPES") == "1":
        subprocess.run([node, "scripts/generate.js"], cwd=CLIENT_DIR, env=env, check=True, timeout=60)
    done = subprocess.run([node, "--test", "test/"], cwd=CLIENT_DIR, env=env, capture_output=True, text=True,
                          timeout=150)
    summary = "\n".join(line for line in done.stdout.splitlines() if line.startswith("# "))
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "# fail 0" in summary and "# pass " in summary, summary


def test_npm_run_generate_works_in_a_fresh_clone(make_daemon, tmp_path):
    """The README's `cd clients/node && npm run generate` in a checkout without node_modules: it installs the
    package's locked dependencies first (npm ci, from npm's cache when it has them), then writes the same
    declarations as the committed ones (the daemon is this checkout's)."""
    npm = shutil.which("npm")
    if npm is None:
        pytest.fail("npm is required (make test's Node client tests need it)")
    fresh = tmp_path / "node"
    shutil.copytree(CLIENT_DIR, fresh, ignore=shutil.ignore_patterns("node_modules"))
    daemon = make_daemon()
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/tmp"),
           "RPC_SERVER_URL": daemon.url, "npm_config_prefer_offline": "true"}
    done = subprocess.run([npm, "run", "generate"], cwd=fresh, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"wrote methods.json from {daemon.url}" in done.stdout and f"wrote index.d.ts from {daemon.url}" in done.stdout
    for name in ("methods.json", "index.d.ts"):
        assert (fresh / name).read_text() == (CLIENT_DIR / name).read_text(), name
