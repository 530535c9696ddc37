"""``make demo`` against a real daemon: it loads every part of the marketplace, and a second run changes nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys

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


def test_demo_loads_a_marketplace_and_is_idempotent(make_daemon, mongo):
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
