"""The embedded database's memory is bounded: past ``EMBEDDED_MAX_MEMORY_MB`` it is restarted on purpose.

SecantusDB's resident size grows with every transaction it has run (issue 17 §1: 97 → 288 MiB in a
10-minute soak), roughly with the size of the documents the transaction wrote.  The daemon restarts it when it passes the cap, holding the commands meanwhile: callers
running keyed order flows (transactions) and messages see no error, every acknowledged write is kept,
and the database's memory starts again from the bottom.
"""

from __future__ import annotations

import threading
import uuid
import xmlrpc.client

import pymongo
from bson import Decimal128, ObjectId

from tests.harness import rss_mib, wait_for
from tests.money_support import seed_gig
from tests.support import seed_user

CAP_MB = 72  # a fresh database is at ~55 MiB; a few hundred flows of large documents pass this
CALLERS = 8
# Documents as large as the API lets them be, so that each flow's transactions (the order placed rewrites
# its gig and both users, the cancellation rewrites the order) pass the cap after fewer calls
URL = "https://example.com/" + "i" * 2028  # a URL's limit: 2,048 characters
BIG_GIG = {"description": "d" * 5000, "features": ["f" * 200] * 20, "tags": ["t" * 50] * 10, "images": [URL] * 10}
BIG_USER = {"bio": "b" * 2000, "skills": ["s" * 50] * 30, "profilePicture": URL}
REASON = "r" * 500  # a cancellation reason's limit
NOTE = {"message": "m" * 500, "link": URL}  # a notification message's limit, a link's


def big_market(db) -> tuple[str, str, str]:
    """A seller with a gig and a buyer, each as large as the API allows: (seller_id, gig_id, buyer_id)."""
    def user(**fields: object) -> str:
        return seed_user(db, "u" + uuid.uuid4().hex[:10], totalEarnings=Decimal128("0.00"), **BIG_USER, **fields)

    seller = user(role="freelancer", isSeller=True)
    buyer = user(role="client")
    return seller, seed_gig(db, seller, **BIG_GIG), buyer


def test_a_database_past_its_memory_cap_is_restarted_without_an_error_for_any_caller(tmp_path, make_daemon):
    data_dir = tmp_path / "embedded"
    daemon = make_daemon(mongodb_uri="", DATA_DIR=str(data_dir), EMBEDDED_MAX_MEMORY_MB=str(CAP_MB),
                         DB_TIMEOUT_SECONDS="5", BCRYPT_ROUNDS="4")
    found = daemon.embedded_database()
    assert found is not None
    first_pid, port = found
    mongo = pymongo.MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true", tz_aware=True)
    db = mongo[daemon.db_name]
    flows = [big_market(db) for _ in range(CALLERS)]  # (seller, gig, buyer) per caller
    mongo.close()

    stop = threading.Event()
    lock = threading.Lock()
    failures: list[str] = []
    orders: list[str] = []
    notifications: list[str] = []

    def caller(n: int) -> None:
        proxy = xmlrpc.client.ServerProxy(daemon.url, allow_none=True)
        _seller, gig, buyer = flows[n]
        while not stop.is_set():
            key = uuid.uuid4().hex
            try:
                answer = proxy.ordersService.create(gig, buyer, 1, "25.00", {"idempotency_key": key})
                if answer.get("success") is True:  # one pending order per buyer and gig: end it
                    ended = proxy.ordersService.cancel(answer["order_id"], REASON)
                    if ended.get("success") is not True:
                        with lock:
                            failures.append(f"cancel: {ended.get('code')} {ended.get('error')}")
                note = str(ObjectId())
                noted = proxy.notificationsService.create(note, buyer, "system", NOTE)
            except (OSError, xmlrpc.client.Error) as e:
                with lock:
                    failures.append(f"{type(e).__name__}: {e}")
                continue
            with lock:
                for what, got, kept in (("order", answer, orders), ("notification", noted, notifications)):
                    if got.get("success") is True:
                        kept.append(got["order_id"] if what == "order" else got["notification_id"])
                    else:
                        failures.append(f"{what}: {got.get('code')} {got.get('error')}")

    threads = [threading.Thread(target=caller, args=(n,), daemon=True) for n in range(CALLERS)]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: daemon.log().count("the embedded database was restarted in") >= 2, 240,
                 "two restarts of the embedded database for its memory")
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)

    log = daemon.log()
    assert f"(EMBEDDED_MAX_MEMORY_MB={CAP_MB}): restarting it" in log, log[-3000:]
    for spurious in ("exited unexpectedly", "restarting it in", "was killed by"):
        assert spurious not in log, log[-3000:]
    assert not failures, f"{len(failures)} calls failed during the restarts: {failures[:5]}"
    found = daemon.embedded_database()
    assert found is not None and found[0] != first_pid, "the database process is a new one"
    fresh = rss_mib(found[0])
    assert fresh < CAP_MB + 8, "the new database starts from the bottom"
    mongo = pymongo.MongoClient(f"mongodb://127.0.0.1:{found[1]}/?directConnection=true")
    db = mongo[daemon.db_name]
    kept_orders = {str(o["_id"]) for o in db.orders.find({}, {"_id": 1})}
    kept_notes = {str(o["_id"]) for o in db.notifications.find({"type": "system"}, {"_id": 1})}
    mongo.close()
    restarts = [line.split("] ", 1)[-1] for line in log.splitlines() if "the embedded database was restarted" in line]
    print(f"\n{len(orders)} orders and {len(notifications)} notifications acknowledged across the restarts: {restarts}; "
          f"the new database uses {fresh:.0f} MiB")
    assert orders and set(orders) <= kept_orders, "acknowledged orders lost"
    assert notifications and set(notifications) <= kept_notes, "acknowledged notifications lost"
