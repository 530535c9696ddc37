"""``make demo`` against a real daemon: it loads every part of the marketplace, and a second run changes nothing."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from worknet.demo import DEMO_PASSWORD, EMAIL_DOMAIN


def run_demo(url: str) -> str:
    done = subprocess.run([sys.executable, "-m", "worknet.demo", "--url", url], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "100%" in done.stderr  # the progress bar reached its end
    return done.stdout


def counts(db) -> dict[str, int]:
    # the catalogue index's own collections (markers, chunks) change as it compacts: not demo data
    return {name: db[name].count_documents({}) for name in sorted(db.list_collection_names())
            if not name.startswith("catalogue")}


def readme_snippets(language: str) -> list[tuple[str, str]]:
    """Each ``language`` block of the README with the ``text`` block that follows it (its output; "" if none)."""
    readme = (ROOT / "README.md").read_text()
    found = []
    for block in re.finditer(rf"```{language}\n(.*?)```\n", readme, re.DOTALL):
        after = re.match(r"\n(?:(?!```).){0,300}?```text\n(.*?)\n```", readme[block.end():], re.DOTALL)
        found.append((block.group(1), after.group(1) if after else ""))
    return found


def run_js_snippets(daemon, tmp_path: Path) -> None:
    """Every JavaScript block of the README, pasted into a file of a project that installed the client."""
    node, client = shutil.which("node"), ROOT / "clients" / "node"
    if node is None or not (client / "node_modules" / "xmlrpc").is_dir():
        pytest.fail("node and clients/node's packages are required: run `make node-client` (make test does)")
    project = tmp_path / "node-backend"
    (project / "node_modules").mkdir(parents=True)
    (project / "node_modules" / "worknet-rpc-client").symlink_to(client, target_is_directory=True)
    snippets = readme_snippets("js")
    assert snippets, "the README has JavaScript snippets"
    for n, (code, expected) in enumerate(snippets):
        script = project / f"snippet{n}.js"
        script.write_text(code)
        done = subprocess.run([node, str(script)], cwd=project, capture_output=True, text=True, timeout=60,
                              env={"PATH": os.environ["PATH"], "RPC_SERVER_URL": daemon.url})
        assert done.returncode == 0, (code, done.stdout, done.stderr)
        assert done.stdout.strip() == expected.strip(), (code, done.stdout, done.stderr)


def test_demo_loads_a_marketplace_and_is_idempotent(make_daemon, mongo, tmp_path):
    daemon = make_daemon(BCRYPT_ROUNDS="4")
    db = mongo[daemon.db_name]
    first_output = run_demo(daemon.url)
    first = counts(db)
    for collection in ("categories", "users", "gigs", "orders", "payments", "reviews", "conversations",
                       "messages", "notifications"):
        assert first.get(collection, 0) > 0, (collection, first)
    assert {o["status"] for o in db.orders.find()} == {"pending", "in_progress", "completed", "disputed", "cancelled"}
    assert {"completed", "failed", "partially_refunded", "refunded"} <= {p["status"] for p in db.payments.find()}
    assert db.messages.count_documents({"readAt": None}) < db.messages.count_documents({})
    assert {g.get("title") for g in db.gigs.find()} >= {"Python で業務自動化スクリプトを作成します",
                                                        "Erklärvideo mit Motion Graphics (60 Sekunden)"}

    second_output = run_demo(daemon.url)
    assert counts(db) == first, "a second run must add nothing"
    assert second_output == first_output
    documents = {name: sorted(map(str, db[name].find({}, {"_id": 1, "status": 1}))) for name in ("orders", "payments")}

    rpc = daemon.proxy()
    login = rpc.usersService.login(f"amelie.dubois@{EMAIL_DOMAIN}", DEMO_PASSWORD)
    assert login["success"] and login["user"]["role"] == "freelancer"
    assert rpc.gigsService.search("logo", {}, 1, 5)["total"] >= 1
    assert {name: sorted(map(str, db[name].find({}, {"_id": 1, "status": 1}))) for name in ("orders", "payments")} \
        == documents

    # The README's first page: each pasted call prints exactly what it shows.
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Try it with demo data"):readme.index("## Calling it")]
    pairs = re.findall(r"```sh\n(python3 -c .*?)\n```\n\n```text\n(.*?)\n```", section, re.DOTALL)
    assert len(pairs) == 3, pairs
    for command, expected in pairs:
        command = command.replace("127.0.0.1:8000", f"127.0.0.1:{daemon.port}")
        done = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=60,
                              env={"PATH": os.environ["PATH"]})
        assert done.returncode == 0 and done.stdout.strip() == expected.strip(), (command, done.stdout, done.stderr)

    # "Calling it" (Python) and "Calling from Node", run after the demo as the README orders them.
    calling = [(code, out) for code, out in readme_snippets("python") if code.startswith("import xmlrpc.client")]
    assert len(calling) == 1 and calling[0][1], calling
    code, expected = calling[0]
    done = subprocess.run([sys.executable, "-c", code.replace("127.0.0.1:8000", f"127.0.0.1:{daemon.port}")],
                          capture_output=True, text=True, timeout=60, env={"PATH": os.environ["PATH"]})
    assert done.returncode == 0 and done.stdout.strip() == expected.strip(), (code, done.stdout, done.stderr)
    run_js_snippets(daemon, tmp_path)


def test_demo_against_a_daemon_that_requires_a_token_says_the_token_is_missing_or_wrong(make_daemon):
    token = secrets.token_urlsafe(32)
    daemon = make_daemon(RPC_AUTH_TOKEN=token)
    for given, says in (("", "the token is missing"), ("not-" + token, "the token is wrong")):
        done = subprocess.run([sys.executable, "-m", "worknet.demo", "--url", daemon.url, "--quiet"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60,
                              env={"PATH": os.environ["PATH"], "RPC_AUTH_TOKEN": given})
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1, (done.returncode, lines)
        assert says in lines[0] and "RPC_AUTH_TOKEN" in lines[0] and "start it with make run" not in lines[0], lines
        assert token not in lines[0]
