"""usersService end to end: the daemon's service tree in process (the Node client: a real daemon), a real
database, real clients."""

from __future__ import annotations

import json
import xmlrpc.client
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from bson import Decimal128, ObjectId

from tests.support import MISSING, run_node

HIDDEN = {"passwordHash", "tokenVersion", "loginFailures", "lockedUntil", "usernameLower", "refreshJti", "_id"}


SETTINGS = {"BCRYPT_ROUNDS": "4"}  # cheap bcrypt: the cost is irrelevant here


@pytest.fixture
def app(make_app, clock_file):
    """The usual app with cheap bcrypt and a movable clock."""
    return make_app(**SETTINGS, WORKNET_TEST_CLOCK_FILE=str(clock_file))


@pytest.fixture
def daemon(make_daemon, clock_file):
    """The same as a daemon (for the Node client)."""
    return make_daemon(**SETTINGS, WORKNET_TEST_CLOCK_FILE=str(clock_file))


PASSWORD = "correct horse"  # noqa: S105 - a test account's password


def register(rpc, username="alice", email="alice@example.com", password=PASSWORD, role="client"):
    result = rpc.usersService.register(username, email, password, role)
    assert result["success"] is True, result
    return result


def assert_no_internal_fields(user):
    assert not HIDDEN & set(user), user


def throttle(db, email, address="127.0.0.1"):
    return db.loginThrottle.find_one({"_id": f"{address} {email}"})


# -- register -------------------------------------------------------------------


def test_register_stores_a_bcrypt_hash_and_returns_a_clean_user(rpc, db):
    result = register(rpc, "Alice_01", "Alice@Example.COM", "correct horse", "freelancer")
    user = result["user"]
    assert user["id"] == result["user_id"]
    assert (user["username"], user["email"], user["role"], user["isSeller"]) == (
        "Alice_01", "alice@example.com", "freelancer", True)
    assert user["createdAt"].endswith("Z") and user["totalEarnings"] == 0.0
    assert_no_internal_fields(user)
    assert result["token"].count(".") == 2 and result["refresh_token"] != result["token"]
    stored = db.users.find_one({"_id": ObjectId(result["user_id"])})
    assert stored["passwordHash"].startswith("$2b$04$") and "correct horse" not in stored["passwordHash"]
    assert stored["usernameLower"] == "alice_01" and stored["tokenVersion"] == 0
    client = register(rpc, "bob", "bob@example.com", "password!", "client")
    assert client["user"]["isSeller"] is False


def test_register_validates_every_argument(rpc, db):
    cases = [
        (("ab", "a@example.com", "password1", "client"), "username"),
        (("a" * 31, "a@example.com", "password1", "client"), "username"),
        (("bad name", "a@example.com", "password1", "client"), "username"),
        (("bad-name", "a@example.com", "password1", "client"), "username"),
        (({"$gt": ""}, "a@example.com", "password1", "client"), "username"),
        (("alice", "not-an-email", "password1", "client"), "email"),
        (("alice", ["a@example.com"], "password1", "client"), "email"),
        (("alice", "a@example.com", "short7!", "client"), "password"),
        (("alice", "a@example.com", "x" * 73, "client"), "password"),
        (("alice", "a@example.com", "é" * 37, "client"), "password"),  # 74 bytes of UTF-8
        (("alice", "a@example.com", 12345678, "client"), "password"),
        (("alice", "a@example.com", "password1", "admin"), "role"),
        (("alice", "a@example.com", "password1", "Admin"), "role"),
        (("alice", "a@example.com", "password1", ""), "role"),
    ]
    for args, field in cases:
        result = rpc.usersService.register(*args)
        assert result == {**result, "success": False, "code": "VALIDATION_ERROR", "field": field}, (args, result)
    assert db.users.count_documents({}) == 0
    # exactly 72 bytes is fine, and is the password (no truncation, no crash)
    long_password = "é" * 36
    register(rpc, password=long_password)
    assert rpc.usersService.login("alice@example.com", long_password)["success"] is True
    assert rpc.usersService.login("alice@example.com", "é" * 35 + "e")["code"] == "UNAUTHORIZED"


def test_register_refuses_duplicates_case_insensitively(rpc):
    register(rpc, "Alice", "alice@example.com")
    same_email = rpc.usersService.register("other", "ALICE@example.com", "password1", "client")
    assert same_email["code"] == "CONFLICT" and same_email["field"] == "email"
    same_name = rpc.usersService.register("aLiCe", "other@example.com", "password1", "client")
    assert same_name["code"] == "CONFLICT" and same_name["field"] == "username"


def test_twenty_concurrent_registrations_through_two_daemons_give_one_account(app, make_app, db):
    other = make_app(db_name=app.db_name, **SETTINGS)

    def attempt(i):
        proxy = (app if i % 2 else other).proxy()
        return proxy.usersService.register(f"racer{i}", "race@example.com", "password1", "client")

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(attempt, range(20)))
    assert sum(r["success"] for r in results) == 1, results
    assert sorted(r.get("code") for r in results if not r["success"]) == ["CONFLICT"] * 19
    assert db.users.count_documents({"email": "race@example.com"}) == 1

    def same_name(i):
        proxy = (app if i % 2 else other).proxy()
        return proxy.usersService.register("SameName" if i % 3 else "samename", f"u{i}@example.com", "password1", "client")

    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(same_name, range(20)))
    assert sum(r["success"] for r in results) == 1, results
    assert all(r["field"] == "username" for r in results if not r["success"])


# -- login and lockout ------------------------------------------------------------


def test_login_succeeds_and_errors_do_not_tell_unknown_from_wrong(rpc):
    created = register(rpc)
    result = rpc.usersService.login("ALICE@example.com", "correct horse")
    assert result["success"] is True and result["user"]["id"] == created["user_id"]
    assert_no_internal_fields(result["user"])
    assert rpc.usersService.verify_token(result["token"])["user_id"] == created["user_id"]
    wrong = rpc.usersService.login("alice@example.com", "wrong horse")
    unknown = rpc.usersService.login("nobody@example.com", "wrong horse")
    assert wrong == unknown == {"success": False, "error": wrong["error"], "code": "UNAUTHORIZED"}
    assert rpc.usersService.login("alice@example.com", "x" * 73)["code"] == "VALIDATION_ERROR"
    assert rpc.usersService.login("alice@example.com", "")["code"] == "VALIDATION_ERROR"
    assert rpc.usersService.login({"$ne": ""}, "correct horse")["code"] == "VALIDATION_ERROR"


def test_five_failures_lock_the_account_for_fifteen_minutes_on_every_daemon(app, make_app, rpc, db, clock_file):
    other = make_app(db_name=app.db_name, **SETTINGS, WORKNET_TEST_CLOCK_FILE=str(clock_file))
    register(rpc)
    for i in range(5):  # failures spread over two daemons
        proxy = rpc if i % 2 else other.proxy()
        assert proxy.usersService.login("alice@example.com", f"wrong {i}")["code"] == "UNAUTHORIZED"
    for proxy in (rpc, other.proxy()):
        locked = proxy.usersService.login("alice@example.com", "correct horse")
        assert locked["code"] == "RATE_LIMITED", locked
    stored = throttle(db, "alice@example.com")
    assert stored["lockedUntil"] is not None and stored["attempts"] == [] and stored["expiresAt"] is not None
    clock_file.write_text(str(14 * 60))
    assert rpc.usersService.login("alice@example.com", "correct horse")["code"] == "RATE_LIMITED"
    clock_file.write_text(str(15 * 60 + 5))
    assert rpc.usersService.login("alice@example.com", "correct horse")["success"] is True
    assert throttle(db, "alice@example.com") is None  # a success clears the failures
    assert "loginFailures" not in db.users.find_one({"email": "alice@example.com"})


def test_unknown_emails_are_counted_and_locked_like_accounts(rpc, db, clock_file):
    """Nothing tells a real e-mail from an unknown one: both lock at the fifth failure, both unlock after 15 min."""
    register(rpc)
    answers = {}
    for email in ("alice@example.com", "Nobody@Example.com"):
        answers[email] = [rpc.usersService.login(email, f"wrong {i}") for i in range(7)]
    assert answers["alice@example.com"] == answers["Nobody@Example.com"]
    codes = [a["code"] for a in answers["alice@example.com"]]
    assert codes == ["UNAUTHORIZED"] * 5 + ["RATE_LIMITED"] * 2, codes
    assert throttle(db, "nobody@example.com")["lockedUntil"] is not None  # keyed by the lower-cased e-mail
    assert rpc.usersService.login("nobody@example.com", "whatever")["code"] == "RATE_LIMITED"
    clock_file.write_text(str(15 * 60 + 5))
    assert rpc.usersService.login("nobody@example.com", "whatever")["code"] == "UNAUTHORIZED"
    assert rpc.usersService.login("alice@example.com", PASSWORD)["success"] is True


def test_a_lock_holds_for_one_client_address_only(app, rpc, db):
    """An attacker who locks the account from its address does not lock the owner out from hers."""
    register(rpc)
    attacker = app.proxy(source="127.0.0.2")
    for i in range(5):
        assert attacker.usersService.login("alice@example.com", f"guess {i}")["code"] == "UNAUTHORIZED"
    assert attacker.usersService.login("alice@example.com", PASSWORD)["code"] == "RATE_LIMITED"
    assert throttle(db, "alice@example.com", "127.0.0.2")["lockedUntil"] is not None
    assert throttle(db, "alice@example.com") is None
    assert rpc.usersService.login("alice@example.com", PASSWORD)["success"] is True  # from 127.0.0.1
    # the owner's success does not unlock the attacker, and her own count is her own
    assert attacker.usersService.login("alice@example.com", PASSWORD)["code"] == "RATE_LIMITED"
    for _ in range(4):
        assert rpc.usersService.login("alice@example.com", "typo typo")["code"] == "UNAUTHORIZED"
    assert rpc.usersService.login("alice@example.com", PASSWORD)["success"] is True
    # change_password counts against the same (e-mail, address) pair
    user_id = db.users.find_one({"email": "alice@example.com"})["_id"]
    third = app.proxy(source="127.0.0.3")
    for _ in range(5):
        answer = third.usersService.change_password(str(user_id), "not my password", "a new password")
        assert answer["code"] == "UNAUTHORIZED", answer
    assert third.usersService.login("alice@example.com", PASSWORD)["code"] == "RATE_LIMITED"
    assert rpc.usersService.login("alice@example.com", PASSWORD)["success"] is True


def test_sub_calls_of_a_multicall_count_against_the_callers_address(app, rpc, db):
    register(rpc)
    batch = xmlrpc.client.MultiCall(app.proxy(source="127.0.0.4"))
    for i in range(6):
        batch.usersService.login("alice@example.com", f"batched guess {i}")
    codes = [answer["code"] for answer in batch()]
    assert codes == ["UNAUTHORIZED"] * 5 + ["RATE_LIMITED"], codes
    assert throttle(db, "alice@example.com", "127.0.0.4")["lockedUntil"] is not None
    assert rpc.usersService.login("alice@example.com", PASSWORD)["success"] is True


def test_the_throttle_collection_expires_by_itself(rpc, db):
    """A TTL index on expiresAt: documents of forgotten failures need no clean-up job."""
    indexes = {ix["name"]: ix for ix in db.loginThrottle.list_indexes()}
    assert indexes["login_throttle_ttl"]["key"] == {"expiresAt": 1}
    assert indexes["login_throttle_ttl"]["expireAfterSeconds"] == 0


def test_failures_older_than_fifteen_minutes_do_not_count(rpc, clock_file):
    register(rpc)
    for _ in range(4):
        assert rpc.usersService.login("alice@example.com", "wrong pass")["code"] == "UNAUTHORIZED"
    clock_file.write_text(str(16 * 60))
    assert rpc.usersService.login("alice@example.com", "wrong pass")["code"] == "UNAUTHORIZED"
    assert rpc.usersService.login("alice@example.com", "correct horse")["success"] is True
    # a success clears the counter: four more failures do not lock
    for _ in range(4):
        rpc.usersService.login("alice@example.com", "wrong pass")
    assert rpc.usersService.login("alice@example.com", "correct horse")["success"] is True


# -- reads ------------------------------------------------------------------------------


def test_get_by_id(rpc):
    created = register(rpc)
    user = rpc.usersService.getById(created["user_id"])["user"]
    assert user["username"] == "alice"
    assert_no_internal_fields(user)
    assert rpc.usersService.get_by_id(MISSING)["code"] == "NOT_FOUND"
    malformed = rpc.usersService.get_by_id("not-an-id")
    assert malformed["code"] == "VALIDATION_ERROR" and malformed["field"] == "user_id"


def test_get_all_filters_and_pages(rpc, db):
    a = register(rpc, "alice", "alice@example.com", role="freelancer")
    register(rpc, "alfred", "fred@example.com", role="client")
    register(rpc, "bob", "bob@alpha.example", role="client")
    register(rpc, "a_b", "ab@example.com", role="client")
    rpc.usersService.update_profile(a["user_id"], {"country": "FR"})
    db.users.insert_one({"username": "root", "usernameLower": "root", "email": "root@example.com",
                         "role": "admin", "isSeller": False, "createdAt": datetime.now(UTC)})

    def names(filters, page=1, limit=20):
        result = rpc.usersService.get_all(page, limit, filters)
        assert result["success"] is True, result
        for user in result["users"]:
            assert_no_internal_fields(user)
        return sorted(u["username"] for u in result["users"])

    assert names(None) == ["a_b", "alfred", "alice", "bob", "root"]
    assert names({"role": "freelancer"}) == ["alice"]
    assert names({"role": "admin"}) == ["root"]
    assert names({"is_seller": False}) == ["a_b", "alfred", "bob", "root"]
    assert names({"country": "FR"}) == ["alice"]
    assert names({"search": "AL"}) == ["alfred", "alice"]
    assert names({"search": "BOB@"}) == ["bob"]  # e-mail prefix
    assert names({"search": "alpha"}) == []  # a prefix, not a substring
    assert names({"search": "a_"}) == ["a_b"]
    assert names({"search": ".*"}) == []  # taken literally
    assert names({"search": "a", "role": "client"}) == ["a_b", "alfred"]
    first = rpc.usersService.getAll(1, 2, {})
    assert (first["total"], first["page"], first["limit"], first["pages"]) == (5, 1, 2, 3)
    assert [u["username"] for u in first["users"]] == ["root", "a_b"]  # newest first
    for bad in ({"$where": "1"}, {"role": {"$ne": "x"}}, {"role": "god"}, {"unknown": 1},
                {"is_seller": "yes"}, {"search": ""}, "role"):
        assert rpc.usersService.get_all(1, 20, bad)["code"] == "VALIDATION_ERROR", bad
    for page, limit in ((0, 10), (1, 0), (1, 101)):
        assert rpc.usersService.get_all(page, limit, None)["code"] == "VALIDATION_ERROR"


def plan_of(db, collection, pipeline):
    plan = db.command("explain", {"aggregate": collection, "cursor": {}, "pipeline": pipeline},
                      verbosity="queryPlanner")
    return json.dumps(plan, default=str)


def test_get_all_role_and_country_filters_use_an_index(rpc, db):
    register(rpc)
    for field, value, index in (("role", "client", "users_role_newest"), ("country", "FR", "users_country_newest")):
        text = plan_of(db, "users", [{"$match": {"deletedAt": None, field: value}},
                                     {"$sort": {"createdAt": -1, "_id": -1}}, {"$limit": 20}])
        assert "IXSCAN" in text and index in text and "COLLSCAN" not in text, (field, text)
        plan = db.command("explain", {"find": "users", "filter": {"deletedAt": None, field: value},
                                      "sort": {"createdAt": -1, "_id": -1}, "limit": 20}, verbosity="queryPlanner")
        text = json.dumps(plan, default=str)
        assert "IXSCAN" in text and index in text and "COLLSCAN" not in text, (field, text)


# -- update_profile -------------------------------------------------------------------


def test_update_profile_whitelists_fields(rpc, db):
    created = register(rpc, role="client")
    uid = created["user_id"]
    updated = rpc.usersService.update_profile(uid, {
        "username": "Alice_New", "email": "NEW@example.com", "phone": "+33 1 23 45 67 89", "country": "FR",
        "bio": "Café Zoë 東京", "profilePicture": "https://img.example.com/a.png",
        "skills": ["python", "twisted"], "isSeller": True,
    })
    assert updated["success"] is True, updated
    user = updated["user"]
    assert (user["username"], user["email"], user["bio"], user["isSeller"]) == (
        "Alice_New", "new@example.com", "Café Zoë 東京", True)
    assert_no_internal_fields(user)
    assert db.users.find_one({"_id": ObjectId(uid)})["usernameLower"] == "alice_new"
    assert rpc.usersService.login("new@example.com", "correct horse")["success"] is True
    refused = [
        {"password": "new password"}, {"role": "admin"}, {"rating": 5.0}, {"totalEarnings": 1000},
        {"passwordHash": "x"}, {"tokenVersion": 0}, {"$set": {"role": "admin"}}, {"bio": {"$gt": ""}},
        {"skills": ["s"] * 31}, {"skills": "python"}, {"email": "nope"}, {"username": "a b"},
        {"profilePicture": "javascript:alert(1)"}, {"isSeller": "true"}, {}, {"deletedAt": None},
    ]
    for bad in refused:
        result = rpc.usersService.update_profile(uid, bad)
        assert result["code"] == "VALIDATION_ERROR", (bad, result)
    stored = db.users.find_one({"_id": ObjectId(uid)})
    assert stored["role"] == "client" and stored["rating"] == 0.0
    assert rpc.usersService.update_profile(MISSING, {"bio": "x"})["code"] == "NOT_FOUND"


def test_update_profile_keeps_username_and_email_unique(rpc):
    first = register(rpc, "alice", "alice@example.com")
    register(rpc, "bob", "bob@example.com", role="freelancer")
    clash = rpc.usersService.update_profile(first["user_id"], {"username": "BOB"})
    assert clash["code"] == "CONFLICT" and clash["field"] == "username"
    clash = rpc.usersService.update_profile(first["user_id"], {"email": "Bob@Example.com"})
    assert clash["code"] == "CONFLICT" and clash["field"] == "email"
    # changing to one's own name in another case is fine
    assert rpc.usersService.update_profile(first["user_id"], {"username": "ALICE"})["user"]["username"] == "ALICE"


def test_a_freelancer_stays_a_seller(rpc):
    created = register(rpc, role="freelancer")
    result = rpc.usersService.update_profile(created["user_id"], {"isSeller": False})
    assert result["code"] == "VALIDATION_ERROR" and result["field"] == "isSeller"


# -- passwords and tokens ----------------------------------------------------------------


def test_change_password_revokes_old_tokens(rpc, db):
    created = register(rpc)
    uid = created["user_id"]
    old_access, old_refresh = created["token"], created["refresh_token"]
    wrong = rpc.usersService.change_password(uid, "not my password", "brand new pass")
    assert wrong["code"] == "UNAUTHORIZED"
    assert rpc.usersService.change_password(uid, "correct horse", "short")["code"] == "VALIDATION_ERROR"
    assert rpc.usersService.change_password(uid, "correct horse", "correct horse")["code"] == "VALIDATION_ERROR"
    assert rpc.usersService.change_password(MISSING, "correct horse", "brand new pass")["code"] == "NOT_FOUND"
    changed = rpc.usersService.changePassword(uid, "correct horse", "brand new pass")
    assert changed["success"] is True, changed
    assert set(changed) == {"success", "token", "refresh_token"}
    assert rpc.usersService.verify_token(old_access)["code"] == "UNAUTHORIZED"
    assert rpc.usersService.refresh_token(old_refresh)["code"] == "UNAUTHORIZED"
    assert rpc.usersService.verify_token(changed["token"])["user_id"] == uid
    assert rpc.usersService.login("alice@example.com", "correct horse")["code"] == "UNAUTHORIZED"
    assert rpc.usersService.login("alice@example.com", "brand new pass")["success"] is True
    assert db.users.find_one({"_id": ObjectId(uid)})["tokenVersion"] == 1


def test_refresh_rotates_and_each_refresh_token_works_once(rpc):
    created = register(rpc)
    first = rpc.usersService.refreshToken(created["refresh_token"])
    assert first["success"] is True and set(first) == {"success", "token", "refresh_token"}
    assert rpc.usersService.refresh_token(created["refresh_token"])["code"] == "UNAUTHORIZED"  # used
    second = rpc.usersService.refresh_token(first["refresh_token"])
    assert second["success"] is True
    assert rpc.usersService.verify_token(second["token"])["user_id"] == created["user_id"]
    # an access token is no refresh token and vice versa
    assert rpc.usersService.refresh_token(second["token"])["code"] == "UNAUTHORIZED"
    assert rpc.usersService.verify_token(second["refresh_token"])["code"] == "UNAUTHORIZED"
    assert rpc.usersService.verify_token(42)["code"] == "VALIDATION_ERROR"


def test_concurrent_refreshes_with_one_token_give_one_new_pair(app):
    created = register(app.proxy())

    def attempt(_):
        return app.proxy().usersService.refresh_token(created["refresh_token"])

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(attempt, range(8)))
    assert sum(r["success"] for r in results) == 1, results
    assert {r["code"] for r in results if not r["success"]} == {"UNAUTHORIZED"}


def test_verify_token_reports_user_role_and_expiry(rpc):
    created = register(rpc, role="freelancer")
    checked = rpc.usersService.verifyToken(created["token"])
    assert checked["user_id"] == created["user_id"] and checked["role"] == "freelancer"
    expires = datetime.fromisoformat(checked["expires_at"].replace("Z", "+00:00"))
    remaining = (expires - datetime.now(UTC)).total_seconds()
    assert 7 * 86400 - 120 < remaining <= 7 * 86400


# -- delete ------------------------------------------------------------------------------


def test_delete_is_soft_refused_with_open_orders_and_hides_the_user(rpc, db):
    buyer = register(rpc, "buyer", "buyer@example.com")
    seller = register(rpc, "seller", "seller@example.com", role="freelancer")
    bid, sid = ObjectId(buyer["user_id"]), ObjectId(seller["user_id"])
    order = db.orders.insert_one({"buyerId": bid, "sellerId": sid, "status": "pending",
                                  "totalPrice": Decimal128(Decimal("10.00"))}).inserted_id
    for uid in (buyer["user_id"], seller["user_id"]):
        assert rpc.usersService.delete_user(uid)["code"] == "INVALID_STATE"
    db.orders.update_one({"_id": order}, {"$set": {"status": "in_progress"}})
    assert rpc.usersService.delete_user(seller["user_id"])["code"] == "INVALID_STATE"
    db.orders.update_one({"_id": order}, {"$set": {"status": "completed"}})
    assert rpc.usersService.deleteUser(buyer["user_id"]) == {"success": True, "deleted": True}
    stored = db.users.find_one({"_id": bid})
    assert stored["deletedAt"] is not None and stored["passwordHash"]
    assert rpc.usersService.get_by_id(buyer["user_id"])["code"] == "NOT_FOUND"
    assert rpc.usersService.delete_user(buyer["user_id"])["code"] == "NOT_FOUND"
    assert rpc.usersService.update_profile(buyer["user_id"], {"bio": "x"})["code"] == "NOT_FOUND"
    assert rpc.usersService.get_stats(buyer["user_id"])["code"] == "NOT_FOUND"
    assert rpc.usersService.login("buyer@example.com", "correct horse")["code"] == "UNAUTHORIZED"
    assert rpc.usersService.verify_token(buyer["token"])["code"] == "UNAUTHORIZED"
    assert rpc.usersService.refresh_token(buyer["refresh_token"])["code"] == "UNAUTHORIZED"
    assert [u["username"] for u in rpc.usersService.get_all(1, 20, None)["users"]] == ["seller"]
    again = rpc.usersService.register("buyer", "other@example.com", "password1", "client")
    assert again["code"] == "CONFLICT"  # the name stays reserved
    assert rpc.usersService.delete_user("xyz")["code"] == "VALIDATION_ERROR"


# -- stats ---------------------------------------------------------------------------------


def test_get_stats_aggregates_orders_gigs_and_reviews(rpc, db):
    me = register(rpc, "me_user", "me@example.com", role="freelancer")
    other = register(rpc, "other", "other@example.com")
    uid, oid = ObjectId(me["user_id"]), ObjectId(other["user_id"])
    empty = rpc.usersService.get_stats(me["user_id"])["stats"]
    assert empty["totalOrders"] == 0 and empty["averageRating"] == 0 and empty["totalSpent"] == 0.0

    def order(buyer, seller, status, price):
        return {"buyerId": buyer, "sellerId": seller, "status": status, "totalPrice": Decimal128(Decimal(price))}

    db.orders.insert_many([
        order(uid, oid, "completed", "10.10"),  # bought
        order(uid, oid, "completed", "0.20"),
        order(uid, oid, "pending", "99.00"),
        order(uid, oid, "cancelled", "5.00"),
        order(oid, uid, "completed", "50.00"),  # sold
        order(oid, uid, "in_progress", "20.00"),
        order(oid, uid, "disputed", "20.00"),
        order(oid, ObjectId(), "completed", "1000.00"),  # not mine
    ])
    db.gigs.insert_many([
        {"userId": uid, "isActive": True}, {"userId": uid, "isActive": False},
        {"userId": uid, "isActive": True, "deletedAt": datetime.now(UTC)}, {"userId": oid, "isActive": True},
    ])
    db.reviews.insert_many(
        [{"gigId": ObjectId(), "userId": oid, "sellerId": uid, "rating": r} for r in (5, 4, 4)]
        + [{"gigId": ObjectId(), "userId": uid, "sellerId": oid, "rating": 1}])
    db.users.update_one({"_id": uid}, {"$set": {"totalEarnings": Decimal128(Decimal("40.00"))}})
    stats = rpc.usersService.getStats(me["user_id"])["stats"]
    assert stats == {
        "totalOrders": 7, "completedOrders": 3, "activeOrders": 3,
        "asBuyer": {"totalOrders": 4, "completedOrders": 2, "activeOrders": 1},
        "asSeller": {"totalOrders": 3, "completedOrders": 1, "activeOrders": 2},
        "totalGigs": 2, "activeGigs": 1, "totalReviews": 3, "averageRating": 4.33,
        "totalEarnings": 40.0, "totalSpent": 10.3,
    }
    assert rpc.usersService.get_stats(MISSING)["code"] == "NOT_FOUND"


def test_get_stats_rounds_the_average_half_up_like_the_reviews(rpc, db):
    """8 reviews summing 33: 4.125 is 4.13 in the stats, in calculate_rating and in the seller's rating."""
    from tests.test_gigs import make_category, make_gig, seed_user

    seller = seed_user(db, "half_up_seller")
    make_category(rpc)
    gig = make_gig(rpc, seller)
    for i, stars in enumerate((5, 5, 5, 4, 4, 4, 3, 3)):
        buyer = seed_user(db, f"rounding_buyer_{i}", role="client")
        created = rpc.reviewsService.create("", gig, stars, {"user_id": buyer})
        assert created["success"], created
    assert created["gig_rating"] == 4.13
    stats = rpc.usersService.get_stats(seller)["stats"]
    assert (stats["totalReviews"], stats["averageRating"]) == (8, 4.13)
    assert rpc.reviewsService.calculate_rating(gig)["rating"] == 4.13
    assert rpc.usersService.get_by_id(seller)["user"]["rating"] == 4.13
    assert rpc.gigsService.get_by_id(gig)["gig"]["seller"]["rating"] == 4.13


# -- the Node client -----------------------------------------------------------------------


def test_node_client_registers_logs_in_and_verifies(daemon):
    result = run_node("users.js", daemon.port)
    assert result["register"]["success"] is True
    assert result["register"]["user"]["email"] == "node.user@example.com"
    assert result["login"]["success"] is True and result["login"]["user"]["username"] == "node_user"
    assert result["verify"] == {"success": True, "user_id": result["register"]["user_id"], "role": "freelancer",
                                "expires_at": result["verify"]["expires_at"]}
    assert result["wrong"] == {"success": False, "code": "UNAUTHORIZED", "error": result["wrong"]["error"]}
    assert result["duplicate"]["code"] == "CONFLICT"
    assert result["byId"]["user"]["username"] == "node_user"
    assert "passwordHash" not in result["login"]["user"]
