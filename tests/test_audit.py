"""Audit: trigger every error path we can, then grep every answer and the daemon's log.

No answer may carry a traceback, a Python type name, a database error text, a
file path, a password, a password hash, the JWT secret or the caller token;
tokens appear only where they are the answer (``token``, ``refresh_token`` of
a successful login, registration or refresh).  The log may carry none of the
secrets either, and no traceback (no internal error is triggered here; the
-32603 path is audited on its own, where the log has the reference id).
"""

from __future__ import annotations

import base64
import http.client
import re
import socket
import time
import xmlrpc.client

import jwt
import pytest
from bson import Decimal128

from tests.fuzz.oracle import LEAKS
from tests.fuzz.strategies import ARITY, KNOWN
from tests.support import MISSING, seed_user
from tests.test_hostile import BAD_AMOUNTS, BAD_MOMENTS, BAD_NAMES, HOSTILE_BODIES, start_without_database

TOKEN = "audit-caller-token-" + "k" * 24
PASSWORD = "Sup3r-secret-passw0rd"
OTHER_PASSWORD = "An0ther-secret-passw0rd"
HASH = re.compile(r"\$2[abxy]\$\d\d\$")
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}")
TOKEN_FIELDS = ("token", "refresh_token")


class Auditor:
    def __init__(self, daemon) -> None:
        self.daemon = daemon
        self.answers: list[tuple[str, bytes]] = []
        self.outcomes: dict[str, int] = {}
        self.conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)

    def raw(self, body: bytes, what: str, headers: dict | None = None, path: str = "/RPC2") -> tuple[int, bytes]:
        headers = {"Content-Type": "text/xml", "Authorization": f"Bearer {TOKEN}", **(headers or {})}
        try:
            self.conn.request("POST", path, body=body, headers=headers)
            response = self.conn.getresponse()
        except (OSError, http.client.HTTPException):
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=30)
            self.conn.request("POST", path, body=body, headers=headers)
            response = self.conn.getresponse()
        payload = response.read()
        if response.will_close:
            self.conn.close()
            self.conn = http.client.HTTPConnection("127.0.0.1", self.daemon.port, timeout=30)
        assert response.status < 500, (what, response.status, payload[:300])
        self.answers.append((what, payload))
        outcome = str(response.status)
        if response.status == 200:
            try:
                value = xmlrpc.client.loads(payload)[0][0]
                outcome = str(value.get("code", "ok")) if isinstance(value, dict) else "ok"
            except xmlrpc.client.Fault as fault:
                outcome = str(fault.faultCode)
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1
        return response.status, payload

    def call(self, method: str, *args):
        _, payload = self.raw(xmlrpc.client.dumps(args, method, allow_none=True).encode(), method)
        try:
            return xmlrpc.client.loads(payload)[0][0]
        except xmlrpc.client.Fault as fault:
            assert fault.faultCode != -32603, (method, args, fault.faultString)
            return fault.faultCode

    def get(self, path: str, headers: dict | None = None) -> None:
        self.conn.request("GET", path, headers=headers or {})
        response = self.conn.getresponse()
        payload = response.read()
        assert response.status < 500 or (path == "/health" and response.status == 503)
        self.answers.append((f"GET {path}", payload))


def _strip_issued_tokens(what: str, payload: bytes) -> str:
    """The answer's text without the tokens it is meant to carry."""
    text = payload.decode("utf-8", "replace")
    try:
        value = xmlrpc.client.loads(payload)[0][0]
    except Exception:
        return text
    if isinstance(value, dict) and value.get("success") is True:
        for field in TOKEN_FIELDS:
            if isinstance(value.get(field), str):
                text = text.replace(value[field], "<issued>")
    return text


def sweep(a: Auditor, ids: dict[str, str]) -> None:
    """Every method with every kind of wrong argument, then flows that reach each error code."""
    wrong = ["bad", {"$gt": ""}, MISSING, None, 10**9, -1, 1.5, ["x"], "", "x" * 6000, {"a.b": 1}, True]
    for name in KNOWN:
        arity = ARITY[name]
        for w in wrong:
            a.call(name, *([w] * arity))
        a.call(name, *([MISSING] * (arity + 1)))
        a.call(name)
    for name, _ in BAD_NAMES:
        a.call("system.methodHelp", name)
        a.call("system.methodSignature", name)
    a.call("no.such.method")
    for body, _ in HOSTILE_BODIES:
        a.raw(body, "hostile body")
    for body in (b"", b"<", b"\xff\xfe", b"<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><methodCall>"
                 b"<methodName>&e;</methodName></methodCall>", b"<methodResponse/>"):
        a.raw(body, "protocol")
    for amount in BAD_AMOUNTS:
        a.call("paymentsService.calculate_fees", amount)
    for moment in BAD_MOMENTS:
        a.call("ordersService.get_all", {"from": moment})
    a.call("system.multicall", [{"methodName": "ping", "params": []}] * 1001)
    a.call("system.multicall", [{"methodName": "system.multicall", "params": [[]]}, "junk", {"methodName": 5}])

    # users: CONFLICT, UNAUTHORIZED, RATE_LIMITED, tokens of every wrong kind
    a.call("usersService.register", "audit_user", "audit@example.com", PASSWORD, "freelancer")
    a.call("usersService.register", "audit_user", "audit@example.com", PASSWORD, "freelancer")
    a.call("usersService.register", "Audit_User", "other@example.com", PASSWORD, "client")
    a.call("usersService.register", "audit_two", "AUDIT@example.com", PASSWORD, "admin")
    a.call("usersService.register", "audit_three", "audit3@example.com", "short", "client")
    for _ in range(7):
        a.call("usersService.login", "audit@example.com", OTHER_PASSWORD)
        a.call("usersService.login", "nobody@example.com", OTHER_PASSWORD)
    a.call("usersService.change_password", ids["user"], OTHER_PASSWORD, PASSWORD)
    forged = jwt.encode({"sub": ids["user"], "role": "admin", "type": "access", "iat": 0, "exp": 2**31},
                        "not-the-secret-" + "x" * 32, algorithm="HS256")
    for token in ("garbage", forged, "eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.", ""):
        a.call("usersService.verify_token", token)
        a.call("usersService.refresh_token", token)
    issued = a.call("usersService.register", "audit_four", "audit4@example.com", PASSWORD, "client")
    if isinstance(issued, dict) and issued.get("success"):
        a.call("usersService.refresh_token", issued["token"])  # an access token where a refresh one is needed
        a.call("usersService.verify_token", issued["refresh_token"])
    a.call("usersService.update_profile", ids["user"], {"password": PASSWORD, "role": "admin"})
    a.call("usersService.update_profile", ids["user"], {"email": "audit4@example.com"})  # CONFLICT
    a.call("usersService.get_all", 1, 10, {"search": "(a+)+$"})

    # categories, gigs, orders, payments, reviews, messages, notifications: conflicts and states
    a.call("categoriesService.create", "Audit", "audit", "")
    a.call("categoriesService.create", "Audit", "audit", "")
    a.call("categoriesService.create", "Audit 2", "Not A Slug", "")
    a.call("gigsService.create", ids["client"], {"title": "Audit gig", "description": "d" * 30, "category": "audit",
                                                 "price": 10, "deliveryTime": 3})
    gig = a.call("gigsService.create", ids["seller"], {"title": "Audit gig", "description": "d" * 30,
                                                       "category": "audit", "price": 10, "deliveryTime": 3})
    gig_id = gig["gig_id"] if isinstance(gig, dict) and gig.get("success") else MISSING
    a.call("categoriesService.delete", a.call("categoriesService.get_by_slug", "audit").get("category", {}).get("id", MISSING))
    a.call("ordersService.create", gig_id, ids["seller"], 1, 10)  # own gig
    order = a.call("ordersService.create", gig_id, ids["client"], 1, 10)
    a.call("ordersService.create", gig_id, ids["client"], 1, 10)  # a second pending order: CONFLICT
    a.call("ordersService.create", gig_id, ids["client"], 1, "9.99")  # wrong total
    order_id = order["order_id"] if isinstance(order, dict) and order.get("success") else MISSING
    a.call("ordersService.update_status", order_id, "completed")  # illegal transition
    a.call("paymentsService.create", "", order_id, "11.00", "stripe")
    payment = a.call("paymentsService.create", "", order_id, "10.00", "stripe")
    payment_id = payment.get("payment_id", MISSING) if isinstance(payment, dict) else MISSING
    a.call("paymentsService.create", "", order_id, "10.00", "stripe")  # a second live payment
    a.call("paymentsService.refund", payment_id, "5")  # not completed yet
    a.call("paymentsService.process", payment_id, "completed")
    a.call("paymentsService.refund", payment_id, "50")  # more than paid
    a.call("reviewsService.create", "", gig_id, 9)
    a.call("reviewsService.create", "", gig_id, 5, {"user_id": ids["client"], "order_id": order_id})
    a.call("messagesService.create", "", MISSING, ids["client"], {"text": "hi"})
    conv = a.call("messagesService.start_conversation", ids["client"], ids["seller"])
    conv_id = conv.get("conversation_id", MISSING) if isinstance(conv, dict) else MISSING
    a.call("messagesService.create", "", conv_id, ids["other"], {"text": "not a participant"})
    a.call("notificationsService.send_bulk", ["bad", MISSING] * 600, "system", "m", None)
    a.call("usersService.delete_user", ids["client"])  # pending order: INVALID_STATE

    # HTTP: no token, wrong token, 413, 404, GET pages, a probe that hangs up
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer wrong"},
                    {"Authorization": "Basic " + base64.b64encode(b"x:wrong").decode()}):
        a.raw(xmlrpc.client.dumps((), "ping").encode(), "401", headers=headers)
    a.raw(b"<methodCall>" + b"x" * (2 * 1024 * 1024), "413")
    a.raw(xmlrpc.client.dumps((), "ping").encode(), "404", path="/nothing")
    for path in ("/health", "/metrics", "/RPC2", "/nothing"):
        a.get(path)
        a.get(path, {"Authorization": f"Bearer {TOKEN}"})
    with socket.create_connection(("127.0.0.1", a.daemon.port)) as s:
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")


def check(a: Auditor, secrets: list[str]) -> None:
    problems = []
    for what, payload in a.answers:
        text = _strip_issued_tokens(what, payload)
        for secret in secrets:
            if secret in text:
                problems.append(f"{what}: answer carries a secret ({secret[:6]}...)")
        for pattern in (LEAKS, HASH, JWT):
            found = pattern.search(text)
            if found and not _own_words(what, found):
                problems.append(f"{what}: answer leaks {found.group(0)!r}: ...{text[max(0, found.start() - 80):found.end() + 80]!r}")
    log = a.daemon.log()
    for secret in secrets:
        if secret in log:
            problems.append(f"the log carries a secret ({secret[:6]}...)")
    for pattern in (HASH, JWT, re.compile(r"Traceback|Unhandled error|#critical\]|#error\]|E11000|errmsg|"
                                          r"site-packages|\.py\b|[A-Z][a-z]+(?:Error|Exception)\b")):
        for line in log.splitlines():
            if pattern.search(line):
                problems.append(f"log line: {line[:300]}")
    assert not problems, "\n".join(problems[:30])


def _own_words(what: str, found: re.Match) -> bool:
    """The operator's metrics page names the driver's pool in its help text; that is not a leak."""
    return what.startswith("GET /metrics") and found.group(0) == "txmongo"


def test_no_error_path_leaks_anything(make_daemon, mongo):
    daemon = make_daemon(RPC_AUTH_TOKEN=TOKEN, BCRYPT_ROUNDS="4", start=False)
    daemon.start(wait=False)
    from tests.conftest import wait_for

    wait_for(daemon.serving, 30, "the daemon")
    db = mongo[daemon.db_name]
    ids = {"user": seed_user(db, "seeded", passwordHash="$2b$04$" + "a" * 53),
           "seller": seed_user(db, "seller1", role="freelancer", isSeller=True),
           "client": seed_user(db, "client1"), "other": seed_user(db, "other1")}
    db.categories.insert_one({"name": "Seed", "nameLower": "seed", "slug": "seed", "isActive": True,
                              "description": "", "gigCount": 0})
    a = Auditor(daemon)
    started = time.monotonic()
    sweep(a, ids)
    print(f"\naudit: {len(a.answers)} answers in {time.monotonic() - started:.1f} s: {sorted(a.outcomes.items())}")
    # every error code and every interop fault was reached
    assert {"VALIDATION_ERROR", "NOT_FOUND", "CONFLICT", "INVALID_STATE", "UNAUTHORIZED", "FORBIDDEN",
            "RATE_LIMITED", "-32700", "-32600", "-32601", "-32602", "ok", "401", "413", "404"} <= set(a.outcomes), a.outcomes
    secrets = [PASSWORD, OTHER_PASSWORD, TOKEN, daemon.env["JWT_SECRET"], "a" * 53]
    check(a, secrets)


def test_an_internal_error_answers_only_a_reference(make_daemon, mongo):
    daemon = make_daemon(RPC_AUTH_TOKEN=TOKEN)
    daemon.expected_errors = True
    db = mongo[daemon.db_name]
    uid = seed_user(db, "broken", totalEarnings=Decimal128("NaN"), passwordHash="$2b$04$" + "b" * 53)
    a = Auditor(daemon)
    _, payload = a.raw(xmlrpc.client.dumps((uid,), "usersService.get_by_id").encode(), "internal error")
    with pytest.raises(xmlrpc.client.Fault) as caught:
        xmlrpc.client.loads(payload)
    assert caught.value.faultCode == -32603
    assert re.fullmatch(r"internal error \(ref [0-9a-f]{8}\)", caught.value.faultString)
    reference = caught.value.faultString[-9:-1]
    log = daemon.log()
    assert reference in log
    for secret in (TOKEN, daemon.env["JWT_SECRET"], "b" * 53):
        assert secret not in log
    assert not HASH.search(log)


def test_database_outage_answers_leak_nothing(make_daemon):
    daemon = start_without_database(make_daemon)
    a = Auditor(daemon)
    a.call("categoriesService.get_all")
    a.call("usersService.login", "audit@example.com", PASSWORD)
    a.call("ping")
    a.get("/health")
    assert a.outcomes.get("UNAVAILABLE") == 2
    check(a, [PASSWORD, daemon.env["JWT_SECRET"]])


def test_the_audit_sees_a_leak(daemon):
    """The checks themselves can fail: a fake answer with a hash, a traceback and a secret is caught."""
    a = Auditor(daemon)
    for leak in (b"$2b$12$" + b"c" * 53, b'Traceback (most recent call last):\n  File "/x/y.py"',
                 b"E11000 duplicate key error", b"KeyError", PASSWORD.encode()):
        a.answers = [("fake", b"<methodResponse><params><param><value><string>" + leak
                      + b"</string></value></param></params></methodResponse>")]
        with pytest.raises(AssertionError):
            check(a, [PASSWORD])


def test_request_ids_tell_nothing_about_other_calls(daemon):
    """Issue 18 (6): ids were ``<prefix>-<counter>``, so two calls of one client told it how many
    calls others made in between. Now 16 random hex digits, nothing shared from one to the next."""
    mine = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
    others = daemon.proxy()
    ids = []
    for n in range(60):
        mine.request("POST", "/RPC2", body=xmlrpc.client.dumps((), "ping").encode(),
                     headers={"Content-Type": "text/xml"})
        answer = mine.getresponse()
        answer.read()
        ids.append(answer.getheader("X-Request-Id"))
        for _ in range(n % 3):  # calls of someone else in between
            others.ping()
    mine.close()
    assert all(re.fullmatch(r"[0-9a-f]{16}", rid or "") for rid in ids), ids[:3]
    assert len({rid[:8] for rid in ids}) == len(ids), ids[:3]  # no common prefix, no counter
    assert len({rid[8:] for rid in ids}) == len(ids), ids[:3]
