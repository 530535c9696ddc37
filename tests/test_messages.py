"""messagesService end to end: the daemon's service tree in process, a real database, xmlrpc.client (and
Node, against a real daemon)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import pytest
from bson import ObjectId

from tests.support import MISSING, run_node, seed_user


def conversation(rpc, a: str, b: str) -> str:
    result = rpc.messagesService.start_conversation(a, b)
    assert result["success"] is True, result
    return result["conversation_id"]


def send(rpc, conv: str, sender: str, text: str = "Hello", message_id: str = "", **extra) -> dict:
    result = rpc.messagesService.create(message_id, conv, sender, {"text": text, **extra})
    assert result["success"] is True, result
    return result


@pytest.fixture
def pair(db):
    return seed_user(db, "alice"), seed_user(db, "bob")


# -- start_conversation --------------------------------------------------------

def test_start_conversation_is_idempotent_in_either_order(rpc, db, pair):
    a, b = pair
    first = rpc.messagesService.start_conversation(a, b)
    assert first["success"] is True and first["created"] is True
    again = rpc.messagesService.startConversation(b, a)
    assert again == {"success": True, "conversation_id": first["conversation_id"], "created": False}
    stored = db.conversations.find_one({"_id": ObjectId(first["conversation_id"])})
    assert stored["participants"] == sorted([ObjectId(a), ObjectId(b)], key=str)
    assert stored["pairKey"] == ":".join(sorted([a, b]))
    assert stored["lastMessageAt"] is None
    assert db.conversations.count_documents({}) == 1


def test_start_conversation_refuses_bad_pairs(rpc, db, pair):
    a, b = pair
    gone = seed_user(db, "gone", deletedAt=datetime.now(UTC))
    same = rpc.messagesService.start_conversation(a, a)
    assert same["code"] == "VALIDATION_ERROR" and same["field"] == "user_b"
    missing = rpc.messagesService.start_conversation(a, MISSING)
    assert missing["code"] == "NOT_FOUND" and missing["field"] == "user_b"
    deleted = rpc.messagesService.start_conversation(gone, b)
    assert deleted["code"] == "NOT_FOUND" and deleted["field"] == "user_a"
    for args, field in (((a, "nope"), "user_b"), (({"$ne": 1}, b), "user_a"), ((42, b), "user_a")):
        result = rpc.messagesService.start_conversation(*args)
        assert result["code"] == "VALIDATION_ERROR" and result["field"] == field, (args, result)
    assert db.conversations.count_documents({}) == 0


def test_concurrent_starts_make_one_conversation(app, db, pair):
    a, b = pair

    def start(i: int) -> dict:
        proxy = app.proxy()
        return proxy.messagesService.start_conversation(*((a, b) if i % 2 else (b, a)))

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(start, range(20)))
    assert all(r["success"] for r in results), results
    assert len({r["conversation_id"] for r in results}) == 1
    assert sum(r["created"] for r in results) == 1
    assert db.conversations.count_documents({}) == 1


# -- create --------------------------------------------------------------------

def test_create_stores_the_message_moves_last_message_at_and_notifies(rpc, db, pair):
    a, b = pair
    conv = conversation(rpc, a, b)
    result = send(rpc, conv, a, "Café Zoë 東京 🎉👩‍💻", attachments=["https://example.com/brief.pdf"])
    message = result["message"]
    assert result["created"] is True and message["id"] == result["message_id"]
    assert message["text"] == "Café Zoë 東京 🎉👩‍💻"
    assert message["attachments"] == ["https://example.com/brief.pdf"]
    assert (message["senderId"], message["recipientId"], message["conversationId"]) == (a, b, conv)
    assert message["isRead"] is False and message["readAt"] is None
    assert message["createdAt"].endswith("Z") and "requestHash" not in message
    stored = db.messages.find_one({"_id": ObjectId(result["message_id"])})
    assert stored["text"] == "Café Zoë 東京 🎉👩‍💻" and stored["recipientId"] == ObjectId(b)
    conv_doc = db.conversations.find_one({"_id": ObjectId(conv)})
    assert conv_doc["lastMessageAt"] == stored["createdAt"]
    notes = list(db.notifications.find({"userId": ObjectId(b)}))
    assert len(notes) == 1 and notes[0]["type"] == "message" and notes[0]["isRead"] is False
    assert "alice" in notes[0]["message"] and notes[0]["link"] == f"/conversations/{conv}"
    assert db.notifications.count_documents({"userId": ObjectId(a)}) == 0
    fetched = rpc.messagesService.get_conversation(conv, 1, 20)["messages"]
    assert fetched[0]["text"] == "Café Zoë 東京 🎉👩‍💻"


def test_create_with_a_client_id_replays_and_conflicts(rpc, db, pair):
    a, b = pair
    conv = conversation(rpc, a, b)
    chosen = str(ObjectId())
    first = send(rpc, conv, a, "once", message_id=chosen)
    assert first["message_id"] == chosen and first["created"] is True
    retry = send(rpc, conv, a, "once", message_id=chosen)
    assert retry["created"] is False and retry["message"] == first["message"]
    different = rpc.messagesService.create(chosen, conv, a, {"text": "something else"})
    assert different["code"] == "CONFLICT"
    assert db.messages.count_documents({}) == 1
    assert db.notifications.count_documents({}) == 1  # the retry wrote no second notification


def test_a_message_id_already_used_by_a_notification_still_notifies(rpc, db, pair):
    a, b = pair
    conv = conversation(rpc, a, b)
    chosen = str(ObjectId())
    assert rpc.notificationsService.create(chosen, a, "system", {"message": "unrelated"})["success"]
    send(rpc, conv, a, "hello", message_id=chosen)
    notes = list(db.notifications.find({"userId": ObjectId(b), "type": "message"}))
    assert len(notes) == 1 and notes[0]["_id"] != ObjectId(chosen)
    assert db.notifications.find_one({"_id": ObjectId(chosen)})["message"] == "unrelated"


def test_last_message_at_only_moves_forward(rpc, db, pair):
    a, b = pair
    conv = conversation(rpc, a, b)
    future = datetime.now(UTC) + timedelta(days=1)
    db.conversations.update_one({"_id": ObjectId(conv)}, {"$set": {"lastMessageAt": future}})
    send(rpc, conv, b, "late arrival")
    stored = db.conversations.find_one({"_id": ObjectId(conv)})["lastMessageAt"]
    assert abs(stored - future) < timedelta(milliseconds=1)


def test_only_participants_may_write(rpc, db, pair):
    a, b = pair
    carol = seed_user(db, "carol")
    conv = conversation(rpc, a, b)
    refused = rpc.messagesService.create("", conv, carol, {"text": "let me in"})
    assert refused["code"] == "FORBIDDEN" and refused["field"] == "sender_id"
    assert rpc.messagesService.create("", MISSING, a, {"text": "hi"})["code"] == "NOT_FOUND"
    db.users.update_one({"_id": ObjectId(b)}, {"$set": {"deletedAt": datetime.now(UTC)}})
    gone = rpc.messagesService.create("", conv, a, {"text": "anyone there?"})
    assert gone["code"] == "INVALID_STATE"
    from_gone = rpc.messagesService.create("", conv, b, {"text": "from beyond"})
    assert from_gone["code"] == "NOT_FOUND" and from_gone["field"] == "sender_id"
    assert db.messages.count_documents({}) == 0


def test_create_validates_its_arguments(rpc, db, pair):
    a, b = pair
    conv = conversation(rpc, a, b)
    assert send(rpc, conv, a, "x" * 5000)["message"]["text"] == "x" * 5000
    assert send(rpc, conv, a, "東" * 5000)["success"]
    only_file = rpc.messagesService.create("", conv, a, {"attachments": ["http://example.com/a.png"]})
    assert only_file["success"] is True and only_file["message"]["text"] == ""
    cases = [
        (("", conv, a, {"text": ""}), "extra.text"),
        (("", conv, a, {"text": "   "}), "extra.text"),
        (("", conv, a, {"text": "x" * 5001}), "extra.text"),
        (("", conv, a, {}), "extra.text"),
        (("", conv, a, None), "extra.text"),
        (("", conv, a, {"text": {"$gt": ""}}), "extra.text"),
        (("", conv, a, {"text": "hi", "isRead": True}), "extra.isRead"),
        (("", conv, a, {"$set": {"text": "x"}}), "extra"),
        (("", conv, a, {"text": "hi", "attachments": ["https://e.com/f"] * 11}), "extra.attachments"),
        (("", conv, a, {"text": "hi", "attachments": ["javascript:alert(1)"]}), "extra.attachments[0]"),
        (("", conv, a, {"text": "hi", "attachments": "https://e.com/f"}), "extra.attachments"),
        (("bad-id", conv, a, {"text": "hi"}), "message_id"),
        (("", "bad", a, {"text": "hi"}), "conversation_id"),
        (("", conv, "bad", {"text": "hi"}), "sender_id"),
        (("", conv, a, "text"), "extra"),
    ]
    for args, field in cases:
        result = rpc.messagesService.create(*args)
        assert result == {**result, "success": False, "code": "VALIDATION_ERROR", "field": field}, (args, result)
    assert db.messages.count_documents({}) == 3


# -- mark_as_read / get_unread_count --------------------------------------------

def test_only_the_recipient_marks_a_message_read(rpc, db, pair):
    a, b = pair
    carol = seed_user(db, "carol")
    conv = conversation(rpc, a, b)
    mid = send(rpc, conv, a, "read me")["message_id"]
    assert rpc.messagesService.mark_as_read(mid, a)["code"] == "FORBIDDEN"
    assert rpc.messagesService.mark_as_read(mid, carol)["code"] == "FORBIDDEN"
    no_reader = rpc.messagesService.mark_as_read(mid)
    assert no_reader["code"] == "VALIDATION_ERROR" and no_reader["field"] == "reader_id"
    assert rpc.messagesService.mark_as_read(mid, None)["code"] == "VALIDATION_ERROR"
    assert db.messages.find_one({"_id": ObjectId(mid)})["isRead"] is False
    assert rpc.messagesService.markAsRead(mid, b) == {"success": True, "updated": True}
    stored = db.messages.find_one({"_id": ObjectId(mid)})
    assert stored["isRead"] is True and stored["readAt"] is not None
    assert rpc.messagesService.mark_as_read(mid, b) == {"success": True, "updated": False}
    assert rpc.messagesService.mark_as_read(mid, a)["code"] == "FORBIDDEN"
    assert rpc.messagesService.mark_as_read(MISSING, b)["code"] == "NOT_FOUND"
    malformed = rpc.messagesService.mark_as_read("nope", b)
    assert malformed["code"] == "VALIDATION_ERROR" and malformed["field"] == "message_id"
    assert rpc.messagesService.mark_as_read(mid, "nope")["field"] == "reader_id"


def test_unread_count_by_conversation(rpc, db, pair):
    a, b = pair
    carol = seed_user(db, "carol")
    ab = conversation(rpc, a, b)
    cb = conversation(rpc, carol, b)
    empty = rpc.messagesService.get_unread_count(b)
    assert empty == {"success": True, "count": 0, "by_conversation": {}}
    first = send(rpc, ab, a, "1")["message_id"]
    send(rpc, ab, a, "2")
    send(rpc, cb, carol, "3")
    send(rpc, ab, b, "reply")  # sent by b: unread for a, not for b
    counts = rpc.messagesService.getUnreadCount(b)
    assert counts == {"success": True, "count": 3, "by_conversation": {ab: 2, cb: 1}}
    assert rpc.messagesService.get_unread_count(a)["count"] == 1
    rpc.messagesService.mark_as_read(first, b)
    assert rpc.messagesService.get_unread_count(b)["by_conversation"] == {ab: 1, cb: 1}
    assert rpc.messagesService.get_unread_count(MISSING)["code"] == "NOT_FOUND"
    assert rpc.messagesService.get_unread_count("x")["code"] == "VALIDATION_ERROR"


def test_fifty_concurrent_messages_then_all_read(app, db, pair):
    a, b = pair
    rpc = app.proxy()
    conv = conversation(rpc, a, b)

    def write(i: int) -> dict:
        return app.proxy().messagesService.create("", conv, a, {"text": f"message {i}"})

    with ThreadPoolExecutor(max_workers=50) as pool:
        sent = list(pool.map(write, range(50)))
    assert all(r["success"] for r in sent), sent
    counts = rpc.messagesService.get_unread_count(b)
    assert counts["count"] == 50 and counts["by_conversation"] == {conv: 50}
    newest = max(r["message"]["createdAt"] for r in sent)
    stored_last = db.conversations.find_one({"_id": ObjectId(conv)})["lastMessageAt"]
    assert stored_last.strftime("%Y-%m-%dT%H:%M:%S.%f")[:23] + "Z" == newest

    def read(result: dict) -> dict:
        return app.proxy().messagesService.mark_as_read(result["message_id"], b)

    with ThreadPoolExecutor(max_workers=50) as pool:
        marked = list(pool.map(read, sent))
    assert all(r == {"success": True, "updated": True} for r in marked), marked
    assert rpc.messagesService.get_unread_count(b) == {"success": True, "count": 0, "by_conversation": {}}
    assert db.notifications.count_documents({"userId": ObjectId(b), "type": "message"}) == 50


# -- get_conversation ------------------------------------------------------------

def test_get_conversation_pages_newest_first(rpc, db, pair):
    a, b = pair
    conv = conversation(rpc, a, b)
    base = datetime(2026, 1, 1, tzinfo=UTC)
    db.messages.insert_many([
        {"_id": ObjectId(), "conversationId": ObjectId(conv), "senderId": ObjectId(a), "recipientId": ObjectId(b),
         "text": f"m{i}", "attachments": [], "isRead": False, "readAt": None, "createdAt": base + timedelta(minutes=i)}
        for i in range(5)
    ])
    first = rpc.messagesService.get_conversation(conv, 1, 2)
    assert [m["text"] for m in first["messages"]] == ["m4", "m3"]
    assert (first["total"], first["page"], first["limit"], first["pages"]) == (5, 1, 2, 3)
    last = rpc.messagesService.getConversation(conv, 3, 2)
    assert [m["text"] for m in last["messages"]] == ["m0"]
    assert rpc.messagesService.get_conversation(conv, None, None)["limit"] == 20
    assert rpc.messagesService.get_conversation(conv)["total"] == 5
    for page, limit in ((0, 10), (1, 0), (1, 101), ("1", 10)):
        assert rpc.messagesService.get_conversation(conv, page, limit)["code"] == "VALIDATION_ERROR"
    assert rpc.messagesService.get_conversation(MISSING, 1, 20)["code"] == "NOT_FOUND"
    assert rpc.messagesService.get_conversation("zz", 1, 20)["code"] == "VALIDATION_ERROR"


def test_unread_count_uses_the_index(rpc, db, pair):
    """The unread-count query is an index scan, never a collection scan."""
    a, b = pair
    conv = conversation(rpc, a, b)
    send(rpc, conv, a, "hello")
    plan = db.command("explain", {"aggregate": "messages", "cursor": {}, "pipeline": [
        {"$match": {"recipientId": ObjectId(b), "isRead": False}},
        {"$group": {"_id": "$conversationId", "n": {"$sum": 1}}},
    ]}, verbosity="queryPlanner")
    text = json.dumps(plan, default=str)
    assert "IXSCAN" in text and "recipient_unread" in text and "COLLSCAN" not in text


# -- the Node client ---------------------------------------------------------------

def test_node_client_sends_and_counts(daemon, db, pair):
    a, b = pair
    result = run_node("messages.js", daemon.port, a, b)
    assert result["start"]["success"] is True
    sent = result["create"]
    assert sent["success"] is True and sent["message"]["text"] == "Bonjour depuis Node 東京 🎉"
    assert result["unread"] == {"success": True, "count": 1, "by_conversation": {result["start"]["conversation_id"]: 1}}
    assert result["marked"] == {"success": True, "updated": True}
    assert result["after"]["count"] == 0
    assert db.messages.count_documents({"recipientId": ObjectId(b), "isRead": True}) == 1


def test_a_replay_answers_the_first_message_before_checking_the_conversation_again(rpc, db, pair):
    a, b = pair
    conv = conversation(rpc, a, b)
    chosen = str(ObjectId())
    first = send(rpc, conv, a, "before the account went", message_id=chosen)
    # the recipient's account is deleted: a new message is refused, the retried one is still the first
    db.users.update_one({"_id": ObjectId(b)}, {"$set": {"deletedAt": datetime.now(UTC)}})
    assert rpc.messagesService.create("", conv, a, {"text": "new"})["code"] == "INVALID_STATE"
    retry = rpc.messagesService.create(chosen, conv, a, {"text": "before the account went"})
    assert retry["success"] is True and retry["created"] is False, retry
    assert retry["message"] == first["message"]
    # and the sender's too
    db.users.update_one({"_id": ObjectId(a)}, {"$set": {"deletedAt": datetime.now(UTC)}})
    retry = rpc.messagesService.create(chosen, conv, a, {"text": "before the account went"})
    assert retry["success"] is True and retry["created"] is False, retry
    assert rpc.messagesService.create(chosen, conv, a, {"text": "other"})["code"] == "CONFLICT"
    assert db.messages.count_documents({}) == 1 and db.notifications.count_documents({}) == 1


def test_a_replay_completes_a_send_a_crash_stopped_half_way(rpc, db, pair):
    a, b = pair
    conv = conversation(rpc, a, b)
    chosen = str(ObjectId())
    send(rpc, conv, a, "half done", message_id=chosen)
    # as if the daemon had died after inserting the message: no notification, lastMessageAt unset
    db.notifications.delete_many({})
    db.conversations.update_one({"_id": ObjectId(conv)}, {"$set": {"lastMessageAt": None}})
    retry = send(rpc, conv, a, "half done", message_id=chosen)
    assert retry["created"] is False
    note = db.notifications.find_one({"_id": ObjectId(chosen)})
    assert note["userId"] == ObjectId(b) and note["message"].startswith("New message from alice")
    assert db.conversations.find_one({"_id": ObjectId(conv)})["lastMessageAt"] is not None
