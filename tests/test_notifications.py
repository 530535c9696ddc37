"""notificationsService end to end: the daemon's service tree in process, a real database, xmlrpc.client."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from bson import ObjectId

from tests.support import MISSING, seed_user, user_doc

TYPES = ("order", "message", "review", "payment", "system")


@pytest.fixture
def user(db):
    return seed_user(db, "dora")


def test_create_stores_an_unread_notification(rpc, db, user):
    result = rpc.notificationsService.create("", user, "order", {"message": "Nouvelle commande ✓ 東京", "link": "/orders/42"})
    assert result["success"] is True and result["created"] is True
    note = result["notification"]
    assert note["id"] == result["notification_id"]
    assert (note["userId"], note["type"], note["message"], note["link"]) == (user, "order", "Nouvelle commande ✓ 東京", "/orders/42")
    assert note["isRead"] is False and note["readAt"] is None and note["createdAt"].endswith("Z")
    assert "requestHash" not in note
    stored = db.notifications.find_one({"_id": ObjectId(result["notification_id"])})
    assert stored["userId"] == ObjectId(user) and stored["message"] == "Nouvelle commande ✓ 東京"
    absolute = rpc.notificationsService.create("", user, "system", {"message": "See https", "link": "https://example.com/x?y=1"})
    assert absolute["notification"]["link"] == "https://example.com/x?y=1"
    no_link = rpc.notificationsService.create("", user, "review", {"message": "x" * 500})
    assert no_link["notification"]["link"] == ""


def test_create_with_a_client_id_replays_and_conflicts(rpc, db, user):
    chosen = str(ObjectId())
    first = rpc.notificationsService.create(chosen, user, "payment", {"message": "Paid"})
    assert first["notification_id"] == chosen and first["created"] is True
    retry = rpc.notificationsService.create(chosen, user, "payment", {"message": "Paid"})
    assert retry["created"] is False and retry["notification"] == first["notification"]
    other = rpc.notificationsService.create(chosen, user, "payment", {"message": "Paid twice"})
    assert other["code"] == "CONFLICT"
    assert db.notifications.count_documents({}) == 1


def test_create_validates_its_arguments(rpc, db, user):
    gone = seed_user(db, "gone", deletedAt=datetime.now(UTC))
    cases = [
        (("", user, "spam", {"message": "hi"}), "type"),
        (("", user, {"$ne": ""}, {"message": "hi"}), "type"),
        (("", user, "order", {}), "extra.message"),
        (("", user, "order", None), "extra.message"),
        (("", user, "order", {"message": ""}), "extra.message"),
        (("", user, "order", {"message": "x" * 501}), "extra.message"),
        (("", user, "order", {"message": "hi", "link": "javascript:alert(1)"}), "extra.link"),
        (("", user, "order", {"message": "hi", "link": "//evil.example/x"}), "extra.link"),
        (("", user, "order", {"message": "hi", "link": "/a b"}), "extra.link"),
        (("", user, "order", {"message": "hi", "link": "orders/1"}), "extra.link"),
        (("", user, "order", {"message": "hi", "isRead": True}), "extra.isRead"),
        (("", user, "order", {"$set": {"message": "hi"}}), "extra"),
        (("nope", user, "order", {"message": "hi"}), "notification_id"),
        (("", "nope", "order", {"message": "hi"}), "user_id"),
    ]
    for args, field in cases:
        result = rpc.notificationsService.create(*args)
        assert result == {**result, "success": False, "code": "VALIDATION_ERROR", "field": field}, (args, result)
    assert rpc.notificationsService.create("", MISSING, "order", {"message": "hi"})["code"] == "NOT_FOUND"
    assert rpc.notificationsService.create("", gone, "order", {"message": "hi"})["code"] == "NOT_FOUND"
    assert db.notifications.count_documents({}) == 0


def test_mark_as_read_is_idempotent(rpc, db, user):
    nid = rpc.notificationsService.create("", user, "order", {"message": "hi"})["notification_id"]
    assert rpc.notificationsService.markAsRead(nid) == {"success": True, "updated": True}
    stored = db.notifications.find_one({"_id": ObjectId(nid)})
    assert stored["isRead"] is True and stored["readAt"] is not None
    assert rpc.notificationsService.mark_as_read(nid) == {"success": True, "updated": False}
    assert rpc.notificationsService.mark_as_read(MISSING)["code"] == "NOT_FOUND"
    bad = rpc.notificationsService.mark_as_read("x")
    assert bad["code"] == "VALIDATION_ERROR" and bad["field"] == "notification_id"


def test_unread_count_by_type(rpc, db, user):
    other = seed_user(db, "eve")
    zero = rpc.notificationsService.get_unread_count(user)
    assert zero == {"success": True, "count": 0, "by_type": dict.fromkeys(TYPES, 0)}
    ids = [rpc.notificationsService.create("", user, kind, {"message": kind})["notification_id"]
           for kind in ("order", "order", "review", "system")]
    rpc.notificationsService.create("", other, "payment", {"message": "not yours"})
    counts = rpc.notificationsService.getUnreadCount(user)
    assert counts["count"] == 4
    assert counts["by_type"] == {"order": 2, "message": 0, "review": 1, "payment": 0, "system": 1}
    rpc.notificationsService.mark_as_read(ids[0])
    assert rpc.notificationsService.get_unread_count(user)["by_type"]["order"] == 1
    assert rpc.notificationsService.get_unread_count(MISSING)["code"] == "NOT_FOUND"
    assert rpc.notificationsService.get_unread_count("x")["code"] == "VALIDATION_ERROR"
    plan = db.command("explain", {"aggregate": "notifications", "cursor": {}, "pipeline": [
        {"$match": {"userId": ObjectId(user), "isRead": False}},
        {"$group": {"_id": "$type", "n": {"$sum": 1}}},
    ]}, verbosity="queryPlanner")
    text = json.dumps(plan, default=str)
    assert "IXSCAN" in text and "user_unread" in text and "COLLSCAN" not in text


def test_send_bulk_to_a_thousand_users(rpc, db):
    docs = [user_doc(f"bulk{i}") for i in range(1000)]
    db.users.insert_many(docs)
    ids = [str(d["_id"]) for d in docs]
    result = rpc.notificationsService.sendBulk(ids, "system", "Maintenance tonight 🌙", "/status")
    assert result == {"success": True, "notifications_sent": 1000, "users_targeted": 1000, "invalid_ids": []}
    assert db.notifications.count_documents({"type": "system", "message": "Maintenance tonight 🌙", "link": "/status"}) == 1000
    assert len(db.notifications.distinct("userId")) == 1000
    assert rpc.notificationsService.get_unread_count(ids[999])["by_type"]["system"] == 1


def test_send_bulk_collapses_duplicates_and_reports_invalid_ids(rpc, db, user):
    other = seed_user(db, "eve")
    gone = seed_user(db, "gone", deletedAt=datetime.now(UTC))
    ids = [user, other, user, user.upper(), "not-an-id", MISSING, gone, "not-an-id", ""]
    result = rpc.notificationsService.send_bulk(ids, "order", "Hello", "")
    assert result == {"success": True, "notifications_sent": 2, "users_targeted": 2,
                      "invalid_ids": ["not-an-id", "", MISSING, gone]}
    assert db.notifications.count_documents({}) == 2
    assert db.notifications.count_documents({"userId": ObjectId(user)}) == 1
    nobody = rpc.notificationsService.send_bulk([MISSING, "zz"], "order", "Hello", "")
    assert nobody == {"success": True, "notifications_sent": 0, "users_targeted": 0, "invalid_ids": ["zz", MISSING]}
    assert db.notifications.count_documents({}) == 2


def test_send_bulk_validates_and_writes_nothing_on_refusal(rpc, db, user):
    too_many = [user] * 1001
    refused = rpc.notificationsService.send_bulk(too_many, "system", "Hello", "")
    assert refused["code"] == "VALIDATION_ERROR" and refused["field"] == "user_ids"
    cases = [
        (([], "system", "Hello", ""), "user_ids"),
        ((user, "system", "Hello", ""), "user_ids"),
        (({"$in": [user]}, "system", "Hello", ""), "user_ids"),
        (([user, 5], "system", "Hello", ""), "user_ids[1]"),
        (([user, {"$ne": 1}], "system", "Hello", ""), "user_ids[1]"),
        (([user], "spam", "Hello", ""), "type"),
        (([user], "system", "", ""), "message"),
        (([user], "system", "x" * 501, ""), "message"),
        (([user], "system", "Hello", "ftp://example.com"), "link"),
        (([user], "system", "Hello", "//example.com"), "link"),
    ]
    for args, field in cases:
        result = rpc.notificationsService.send_bulk(*args)
        assert result == {**result, "success": False, "code": "VALIDATION_ERROR", "field": field}, (args, result)
    assert db.notifications.count_documents({}) == 0
    with_link = rpc.notificationsService.send_bulk([user], "system", "Hello", "https://example.com/news")
    assert with_link["notifications_sent"] == 1
    assert db.notifications.find_one()["link"] == "https://example.com/news"


def test_messages_notify_the_recipient_through_this_service(rpc, db, user):
    other = seed_user(db, "eve")
    conv = rpc.messagesService.start_conversation(user, other)["conversation_id"]
    rpc.messagesService.create("", conv, other, {"text": "ping"})
    counts = rpc.notificationsService.get_unread_count(user)
    assert counts["count"] == 1 and counts["by_type"]["message"] == 1
