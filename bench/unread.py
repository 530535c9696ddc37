"""Unread-message counts under load: messagesService.get_unread_count vs the same query in pymongo.

    .venv/bin/python -m bench.unread [--users 10000] [--conversations 50000]
        [--messages 1000000] [--budget 480] [--duration 20] [--concurrency 32]

Starts a throw-away SecantusDB and a daemon, creates the daemon's indexes,
generates users, conversations and messages straight into the database with
pymongo ``insert_many`` (progress bars), prints the query plans of the two
unread-count queries (messages by conversation, notifications by type), then
drives ``messagesService.get_unread_count`` for random users at 32 concurrent
keep-alive clients for 20 s, next to the same work done straight against the
database by 32 pymongo threads: the aggregate alone, and the user check plus
the aggregate (what the service does per call).

Generation is bounded by ``--budget`` seconds: if the message rate measured
while generating says the full count would not fit, the message count is
scaled down and the output says so.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
from bson import ObjectId
from tqdm import tqdm

from bench.loadgen import HEADER, Workspace, call_body, create_indexes, direct_load, plan_summary, run_load

BATCH = 5000
READ_SHARE = 0.8
WORDS = "hello thanks sure deadline logo draft revision invoice delivered great 東京 café 🎉".split()


def generate(db: Any, users: int, conversations: int, messages: int, budget: float) -> tuple[list[ObjectId], int, float]:
    started = time.monotonic()
    epoch = datetime(2026, 1, 1, tzinfo=UTC)
    user_ids = [ObjectId() for _ in range(users)]
    for start in tqdm(range(0, users, BATCH), desc="users", unit="batch"):
        db.users.insert_many([
            {"_id": _id, "username": f"user{start + i}", "usernameLower": f"user{start + i}",
             "email": f"user{start + i}@example.com", "passwordHash": "x", "role": "client",
             "isSeller": False, "tokenVersion": 0, "createdAt": epoch, "updatedAt": epoch}
            for i, _id in enumerate(user_ids[start:start + BATCH])
        ], ordered=False)
    pairs: dict[str, tuple[ObjectId, ObjectId]] = {}
    while len(pairs) < conversations:
        a, b = random.sample(user_ids, 2)
        low, high = sorted((a, b), key=str)
        pairs.setdefault(f"{low}:{high}", (low, high))
    conv = [(ObjectId(), key, pair) for key, pair in pairs.items()]
    for start in tqdm(range(0, len(conv), BATCH), desc="conversations", unit="batch"):
        db.conversations.insert_many([
            {"_id": _id, "participants": list(pair), "pairKey": key, "lastMessageAt": None, "createdAt": epoch}
            for _id, key, pair in conv[start:start + BATCH]
        ], ordered=False)
    written = 0
    target = messages
    bar = tqdm(total=messages, desc="messages", unit="msg", unit_scale=True)
    msg_started = time.monotonic()
    while written < target:
        docs = []
        for _ in range(min(BATCH, target - written)):
            _id, _key, pair = random.choice(conv)
            sender, recipient = pair if random.random() < 0.5 else pair[::-1]
            read = random.random() < READ_SHARE
            at = epoch + timedelta(seconds=written)
            docs.append({"_id": ObjectId(), "conversationId": _id, "senderId": sender, "recipientId": recipient,
                         "text": " ".join(random.choices(WORDS, k=8)), "attachments": [], "isRead": read,
                         "readAt": at if read else None, "createdAt": at})
        db.messages.insert_many(docs, ordered=False)
        written += len(docs)
        bar.update(len(docs))
        elapsed = time.monotonic() - started
        if written >= 4 * BATCH and written < target:
            # re-checked after every batch: the rate drops when the machine is busy
            rate = written / (time.monotonic() - msg_started)
            projected = elapsed + (target - written) / rate
            if projected > budget * 1.02:
                new_target = max(written, int(written + (budget - elapsed) * rate) // BATCH * BATCH)
                if target == messages or new_target <= target - 5 * BATCH or new_target == written:
                    bar.write(f"scaling down: {target} messages would take about {projected:.0f} s at "
                              f"{rate:.0f}/s; generating {new_target} instead (budget {budget:.0f} s)")
                target = new_target
                bar.total = target
                bar.refresh()
    bar.close()
    return user_ids, written, time.monotonic() - started


def show_plans(db: Any, user: ObjectId) -> None:
    unread_messages = {"recipientId": user, "isRead": False}
    unread_notes = {"userId": user, "isRead": False}
    print("\nquery plans (user with the most unread messages):")
    agg = db.command("explain", {"aggregate": "messages", "cursor": {}, "pipeline": [
        {"$match": unread_messages}, {"$group": {"_id": "$conversationId", "n": {"$sum": 1}}},
    ]}, verbosity="executionStats")
    print("  messages aggregate  :", plan_summary(agg))
    print("  messages find       :", plan_summary(db.messages.find(unread_messages).explain()))
    nagg = db.command("explain", {"aggregate": "notifications", "cursor": {}, "pipeline": [
        {"$match": unread_notes}, {"$group": {"_id": "$type", "n": {"$sum": 1}}},
    ]}, verbosity="executionStats")
    print("  notifications aggr. :", plan_summary(nagg))
    print("  notifications find  :", plan_summary(db.notifications.find(unread_notes).explain()))
    for name, explained in (("messages", agg), ("notifications", nagg)):
        if "COLLSCAN" in json.dumps(explained, default=str):
            print(f"  WARNING: the {name} unread query scans the collection")


def unread_count(users: list[ObjectId], with_user_check: bool) -> Callable[[Any, random.Random], None]:
    """The service's query for a random user, as pymongo sends it (optionally with its user check first)."""

    def operation(db: Any, rng: random.Random) -> None:
        user = rng.choice(users)
        if with_user_check:
            db.users.find_one({"_id": user, "deletedAt": None}, {"_id": 1})
        groups = list(db.messages.aggregate([
            {"$match": {"recipientId": user, "isRead": False}},
            {"$group": {"_id": "$conversationId", "n": {"$sum": 1}}},
        ]))
        {str(g["_id"]): g["n"] for g in groups}  # noqa: B018 - the same shaping as the service

    return operation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--conversations", type=int, default=50_000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--budget", type=float, default=480.0, help="seconds allowed for data generation")
    parser.add_argument("--duration", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--pool-size", type=int, default=10, help="the daemon's MONGODB_POOL_SIZE")
    args = parser.parse_args()
    args.users = max(2, min(args.users, 1_000_000))
    args.conversations = min(args.conversations, args.users * (args.users - 1) // 2)
    args.duration = min(args.duration, 120.0)

    with Workspace("bench-unread") as workspace:
        uri = workspace.uri
        client: pymongo.MongoClient = pymongo.MongoClient(uri, directConnection=True)
        db_name = "bench_unread"
        db = client[db_name]
        create_indexes(db)
        users, written, took = generate(db, args.users, args.conversations, args.messages, args.budget)
        scaled = written < args.messages
        print(f"generated {len(users)} users, {args.conversations} conversations, {written} messages "
              f"in {took:.0f} s ({(len(users) + args.conversations + written) / took:.0f} documents/s)"
              + (f" -- SCALED DOWN from {args.messages} messages to fit the {args.budget:.0f} s budget" if scaled else ""))
        notes = [{"_id": ObjectId(), "userId": random.choice(users), "type": random.choice(("order", "message", "system")),
                  "message": "bench", "link": "", "isRead": random.random() < READ_SHARE, "readAt": None,
                  "createdAt": datetime.now(UTC)} for _ in range(20_000)]
        db.notifications.insert_many(notes, ordered=False)
        unread = list(db.messages.aggregate([
            {"$match": {"isRead": False}}, {"$group": {"_id": "$recipientId", "n": {"$sum": 1}}},
        ]))
        counts = [g["n"] for g in unread]
        busiest = max(unread, key=lambda g: g["n"])["_id"]
        print(f"unread messages per user: mean {statistics.mean(counts):.1f}, max {max(counts)}")
        show_plans(db, busiest)

        port = workspace.daemon(db_name, MONGODB_POOL_SIZE=str(args.pool_size))
        rng = random.Random(7)
        bodies = [call_body("messagesService.get_unread_count", str(rng.choice(users))) for _ in range(5000)]
        run_load(port, bodies, args.concurrency, 2.0)  # warm-up
        rows = [
            (f"daemon get_unread_count (pool {args.pool_size})", run_load(port, bodies, args.concurrency, args.duration)),
            ("pymongo aggregate only", direct_load(uri, db_name, args.concurrency, args.duration, unread_count(users, False))),
            ("pymongo user check + aggregate", direct_load(uri, db_name, args.concurrency, args.duration, unread_count(users, True))),
        ]
        print(f"\n{args.concurrency} concurrent clients, {args.duration:.0f} s each, "
              f"{written} messages{' (scaled down)' if scaled else ''}:")
        print(HEADER)
        for name, result in rows:
            print(result.row(name))
        service, direct = rows[0][1], rows[2][1]
        if direct.rps:
            print(f"\ndaemon / direct (same work): {service.rps / direct.rps:.2f}x requests/s")


if __name__ == "__main__":
    main()
