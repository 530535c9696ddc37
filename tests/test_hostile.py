"""Hostile input against the daemon (its service tree in process, or a real daemon where the connection or the
process matters): every answer is an interop fault or an envelope.

Each case below was an HTTP 500, a fault -32603 (with a traceback in the log),
Twisted's fault 8001, or no answer at all before the hardening (issue 10).
"""

from __future__ import annotations

import http.client
import socket
import statistics
import threading
import time
import xmlrpc.client
from datetime import UTC, datetime, timedelta

import pytest
from bson import Decimal128, Int64, ObjectId

from tests.conftest import wait_for
from tests.support import MISSING, seed_user
from tests.test_transport import fault_of, post

CALL = b"<?xml version='1.0'?><methodCall><methodName>%s</methodName><params>%s</params></methodCall>"


def call_body(method: str, *values: bytes) -> bytes:
    return CALL % (method.encode(), b"".join(b"<param><value>%s</value></param>" % v for v in values))


def answer_of(payload: bytes):
    """The response value, or the fault code (int) of a fault."""
    try:
        return xmlrpc.client.loads(payload)[0][0]
    except xmlrpc.client.Fault as fault:
        return fault.faultCode


# -- introspection -----------------------------------------------------------------------------

BAD_NAMES = [
    (123, -32602), (["a"], -32602), (None, -32602), ({"a": 1}, -32602), (1.5, -32602), (True, -32602),
    ("nosuch.x", -32601), ("usersService.nosuch", -32601), ("usersService", -32601), ("", -32601),
    ("system", -32601), ("usersService.get_by_id.x", -32601), ("usersService.__init__", -32601),
    ("usersService.GetById", -32601), ("東京.x", -32601), ("usersService.store", -32601),
]


def test_introspection_of_bad_names_is_an_interop_fault(rpc):
    for method in ("methodHelp", "methodSignature"):
        for name, code in BAD_NAMES:
            with pytest.raises(xmlrpc.client.Fault) as caught:
                getattr(rpc.system, method)(name)
            assert caught.value.faultCode == code, (method, name)
        batch = rpc.system.multicall([{"methodName": "system." + method, "params": [name]} for name, _ in BAD_NAMES])
        assert [r["faultCode"] for r in batch] == [code for _, code in BAD_NAMES]
    assert rpc.system.methodHelp("usersService.getById") == rpc.system.methodHelp("usersService.get_by_id") != ""
    assert rpc.system.methodSignature("system.methodHelp") == [["string", "string"]]
    assert "At most RPC_MAX_MULTICALL" in rpc.system.methodHelp("system.multicall")


# -- bodies the parser let through as HTTP 500 -----------------------------------------------

MEMBER_NO_VALUE = b"<struct><member><name>a</name></member></struct>"
MEMBER_NO_NAME = b"<struct><member><value>1</value></member></struct>"
TWO_NAMES = b"<struct><member><name>a</name><name>b</name><value>1</value></member></struct>"
LOOSE_VALUE = b"<struct><value>1</value></struct>"


HOSTILE_BODIES = [
    (call_body("ping", MEMBER_NO_VALUE), -32600),
    (call_body("ping", MEMBER_NO_NAME), -32600),
    (call_body("ping", TWO_NAMES), -32600),
    (call_body("ping", LOOSE_VALUE), -32600),
    (call_body("categoriesService.get_all", b"<struct><member><value>1</value></member>"
                                             b"<member><name>x</name></member></struct>"), -32600),
    (call_body("paymentsService.calculate_fees", b"<bigdecimal>12.5</bigdecimal>"), -32600),
    (call_body("paymentsService.calculate_fees", b"<bigdecimal>abc</bigdecimal>"), -32600),
    (call_body("paymentsService.calculate_fees", b"<biginteger>1</biginteger>"), -32600),
    (call_body("ping", b"<ex:bigdecimal xmlns:ex='http://ws.apache.org/xmlrpc/namespaces/extensions'>1"
                       b"</ex:bigdecimal>"), -32600),
    (b"<methodCall><methodName>ping</methodName><fault><value><struct><member><name>faultCode</name>"
     b"<value><int>1</int></value></member><member><name>faultString</name><value>x</value></member>"
     b"</struct></value></fault></methodCall>", -32600),
    (b"<methodResponse><params><param><value>1</value></param></params></methodResponse>", -32600),
    (call_body("ping", b"<unknown>1</unknown>"), -32600),
    (call_body("ping", b"<boolean>2</boolean>"), -32600),
    (call_body("gigsService.update_rating", b"<string>" + b"a" * 24 + b"</string>", b"<int>" + b"9" * 400 + b"</int>"),
     -32602),
    (call_body("gigsService.search", b"<string>x</string>",
               b"<struct><member><name>min_rating</name><value><int>" + b"4" * 400 + b"</int></value></member></struct>"),
     -32602),
    (call_body("gigsService.search", b"<string>x</string>",
               b"<struct><member><name>min_rating</name><value><i8>-" + b"4" * 20 + b"</i8></value></member></struct>"),
     -32602),
    (call_body("paymentsService.calculate_fees", b"<double>nan</double>"), -32602),
    (call_body("paymentsService.calculate_fees", b"<double>-inf</double>"), -32602),
    (call_body("paymentsService.calculate_fees", b"<double>1e999</double>"), -32602),
]


def test_bodies_that_escaped_the_parser_are_faults(app):
    for body, code in HOSTILE_BODIES:
        status, payload = post(app, body)
        assert status == 200, (body, payload[:200])
        assert fault_of(payload) == code, body
        assert b"Traceback" not in payload


# Numbers Python's int() / float() read but XML-RPC does not allow (issue 18): before, each was taken as 100 or 10.
NON_SPEC_NUMBERS = [b"<int>\xd9\xa1\xd9\xa0\xd9\xa0</int>", b"<int>1_000</int>", b"<i4>\xef\xbc\x91\xef\xbc\x90</i4>",
                    b"<i8>1_0</i8>", b"<double>1_0</double>", b"<double>\xd9\xa1\xd9\xa0</double>",
                    b"<int>\xc2\xa0100</int>", b"<double>10\xe2\x80\x83</double>"]


def test_numbers_outside_the_spec_are_invalid_params(app):
    answers = [answer_of(post(app, call_body("paymentsService.calculate_fees", number))[1])
               for number in NON_SPEC_NUMBERS]
    print(f"\nnumbers outside the spec: {answers}")
    assert answers == [-32602] * len(NON_SPEC_NUMBERS)
    # as the spec writes them, and as Python's client writes doubles, they are numbers
    for number, fee in ((b"<int>+100</int>", 20.0), (b"<i8>100</i8>", 20.0), (b"<double>1e2</double>", 20.0),
                        (b"<double>-1.5E+3</double>", None), (b"<double> 12.5 </double>", 2.5)):
        result = answer_of(post(app, call_body("paymentsService.calculate_fees", number))[1])
        assert result["success"] is (fee is not None) and result.get("platform_fee", None) == fee, (number, result)


def test_namespaced_extensions_within_the_spec_still_parse(app):
    body = call_body("paymentsService.calculate_fees",
                     b"<ex:i8 xmlns:ex='http://ws.apache.org/xmlrpc/namespaces/extensions'>100</ex:i8>")
    result = answer_of(post(app, body)[1])
    assert result["success"] is True and result["platform_fee"] == 20.0
    assert answer_of(post(app, call_body("gigsService.update_rating", b"<string>x</string>",
                                            b"<i8>9223372036854775807</i8>"))[1])["code"] == "VALIDATION_ERROR"


# -- values --------------------------------------------------------------------------------------

BAD_AMOUNTS = [
    "111111111111111111111111111.001", "1" * 40, "0." + "0" * 40 + "1", "1e2", "1E2", "1_000", "+5", "-5",
    "１２", "١٢", "१२", "12,5", "0x10", "Infinity", "NaN", "5 5", "1.2.3", ".", "",
]
BAD_MOMENTS = [
    "0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+23:59",
    "10000-01-01", "2026-13-01", "2026-02-30", "not a date", "",
]


def test_money_strings_outside_ascii_digits_and_dates_out_of_range_are_validation_errors(rpc):
    for amount in BAD_AMOUNTS:
        result = rpc.paymentsService.calculate_fees(amount)
        assert result["success"] is False and result["code"] == "VALIDATION_ERROR", amount
        assert result["field"] == "amount"
    assert rpc.paymentsService.calculate_fees(" 12.50 ")["total_amount"] == 12.5
    for moment in BAD_MOMENTS:
        for bound in ("from", "to"):
            result = rpc.ordersService.get_all({bound: moment})
            assert result["success"] is False and result["code"] == "VALIDATION_ERROR", (bound, moment)


def test_dates_at_the_edges_of_the_calendar_are_fine(rpc):
    assert rpc.ordersService.get_all({"from": "0001-01-01T00:00:00Z", "to": "9999-12-31"})["success"] is True


def _order(db, at: datetime) -> str:
    doc = {"_id": ObjectId(), "gigId": ObjectId(), "buyerId": ObjectId(), "sellerId": ObjectId(), "quantity": 1,
           "totalPrice": Decimal128("10.00"), "status": "pending", "createdAt": at, "updatedAt": at,
           "statusHistory": []}
    db.orders.insert_one(doc)
    return str(doc["_id"])


def test_a_date_only_to_includes_that_whole_day(rpc, db):
    inside = [_order(db, datetime(2026, 1, 31, h, m, tzinfo=UTC)) for h, m in ((0, 0), (15, 30), (23, 59))]
    _order(db, datetime(2026, 2, 1, 0, 0, tzinfo=UTC))
    _order(db, datetime(2026, 1, 30, 23, 59, tzinfo=UTC))
    found = rpc.ordersService.get_all({"from": "2026-01-31", "to": "2026-01-31"})
    assert found["success"] is True
    assert sorted(o["id"] for o in found["orders"]) == sorted(inside)
    # a moment (not a date) is taken as it is
    assert rpc.ordersService.get_all({"from": "2026-01-31", "to": "2026-01-31T15:30:00Z"})["total"] == 2


# -- stored values written by someone else -------------------------------------------------------

def test_values_written_by_the_node_backend_are_converted(rpc, db):
    uid = seed_user(db, "nodeuser", reviewCount=Int64(3), rating=Int64(4), earnings=Int64(2**40),
                    bio="line\x01break\x0b", skills=["a\ufffeb"])
    result = rpc.usersService.get_by_id(uid)
    assert result["success"] is True
    user = result["user"]
    assert user["reviewCount"] == 3 and user["rating"] == 4 and user["earnings"] == float(2**40)
    assert user["bio"] == "line\ufffdbreak\ufffd" and user["skills"] == ["a\ufffdb"]


@pytest.mark.parametrize("value", [Decimal128("NaN"), Decimal128("-Infinity"), Decimal128("1E+6000"), float("inf")])
def test_a_value_the_wire_cannot_carry_is_a_fault_with_a_reference(app, db, value):
    app.expected_errors = True
    uid = seed_user(db, "badvalue", totalEarnings=value)
    started = time.monotonic()
    status, payload = post(app, xmlrpc.client.dumps((uid,), "usersService.get_by_id").encode(), timeout=10)
    assert time.monotonic() - started < 3  # an answer, not the client's timeout
    assert status == 200
    with pytest.raises(xmlrpc.client.Fault) as caught:
        xmlrpc.client.loads(payload)
    assert caught.value.faultCode == -32603
    reference = caught.value.faultString.rsplit("ref ", 1)[1].rstrip(")")
    assert len(reference) == 8 and reference in app.log()
    # the same inside a batch: the other calls still answer
    result = app.proxy().system.multicall([{"methodName": "usersService.get_by_id", "params": [uid]},
                                              {"methodName": "ping", "params": []}])
    assert result[0]["faultCode"] == -32603 and result[1][0]["status"] == "ok"


# -- system.multicall limits ----------------------------------------------------------------------

def test_a_batch_over_the_cap_is_one_fault_and_nothing_runs(make_app, mongo):
    app = make_app(RPC_MAX_MULTICALL="5")
    rpc = app.proxy()
    calls = [{"methodName": "categoriesService.create", "params": [f"Cat {i}", f"cat-{i}", ""]} for i in range(6)]
    with pytest.raises(xmlrpc.client.Fault) as caught:
        rpc.system.multicall(calls)
    assert caught.value.faultCode == -32600 and "at most 5" in caught.value.faultString
    assert mongo[app.db_name].categories.count_documents({}) == 0
    assert all(r[0]["success"] for r in rpc.system.multicall(calls[:5]))
    assert mongo[app.db_name].categories.count_documents({}) == 5


def test_the_default_cap_is_1000(rpc):
    assert len(rpc.system.multicall([{"methodName": "ping", "params": []}] * 1000)) == 1000
    with pytest.raises(xmlrpc.client.Fault) as caught:
        rpc.system.multicall([{"methodName": "ping", "params": []}] * 1001)
    assert caught.value.faultCode == -32600


def test_a_batch_has_one_deadline(make_app):
    app = make_app(DB_TIMEOUT_SECONDS="3", BCRYPT_ROUNDS="11")
    calls = [{"methodName": "usersService.login", "params": [f"nobody{i}@example.com", "password123"]}
             for i in range(60)]
    started = time.monotonic()
    results = app.proxy().system.multicall(calls)
    elapsed = time.monotonic() - started
    assert elapsed < 3 + 1, elapsed  # DB_TIMEOUT_SECONDS + 1 s, not 60 bcrypt checks
    codes = [r[0]["code"] for r in results]
    assert len(codes) == 60 and set(codes) <= {"UNAUTHORIZED", "UNAVAILABLE"} and codes[-1] == "UNAVAILABLE"
    ran = app.log().count("usersService.login")  # one log line per sub-call that ran
    assert ran < 60 and codes.count("UNAUTHORIZED") <= ran
    print(f"batch of 60 logins, deadline 3 s: answered in {elapsed:.2f} s, {ran} ran, "
          f"{codes.count('UNAUTHORIZED')} UNAUTHORIZED")


def test_a_batch_stops_when_the_caller_hangs_up(make_daemon):
    daemon = make_daemon(DB_TIMEOUT_SECONDS="60", BCRYPT_ROUNDS="11")
    calls = [{"methodName": "usersService.login", "params": [f"nobody{i}@example.com", "password123"]}
             for i in range(100)]
    body = xmlrpc.client.dumps((calls,), "system.multicall").encode()
    with socket.create_connection(("127.0.0.1", daemon.port)) as s:
        s.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\nContent-Length: %d\r\n\r\n" % len(body)
                  + body)
        time.sleep(0.5)
    wait_for(lambda: "system.multicall stopped after" in daemon.log(), 30, "the batch to stop")
    done = int(daemon.log().split("system.multicall stopped after ")[1].split()[0])
    time.sleep(1.0)
    assert done < 100 and daemon.log().count("usersService.login") == done
    assert daemon.proxy().ping()["status"] == "ok"


def test_a_batch_whose_answer_passes_rpc_max_answer_is_one_fault(make_app, mongo):
    """Issue 18 (2): a batch's answer had no bound (1,000 describeMethods: 123 MB, built in one piece).
    Now each result is encoded as it comes and counted; past RPC_MAX_ANSWER the batch stops: one fault
    that says how many calls ran."""
    app = make_app(RPC_MAX_ANSWER="262144")
    rpc = app.proxy()
    one = len(xmlrpc.client.dumps((rpc.system.describeMethods(),), methodresponse=True, allow_none=True))
    assert 100_000 < one < 131_072  # two fit in 256 KiB, three do not
    describe = {"methodName": "system.describeMethods", "params": []}
    create = {"methodName": "categoriesService.create", "params": ["Late", "late", ""]}
    with pytest.raises(xmlrpc.client.Fault) as caught:
        rpc.system.multicall([describe] * 3 + [create] + [describe] * 96)
    assert caught.value.faultCode == -32600
    assert "262144 bytes: its first 3 of 100 calls ran, the others did not" in caught.value.faultString
    assert mongo[app.db_name].categories.count_documents({}) == 0  # the 4th call did not run
    small = rpc.system.multicall([describe, create])  # under the limit: answered as always
    assert small[0] == [rpc.system.describeMethods()] and small[1][0]["success"] is True
    assert "system.multicall stopped after 3 of 100 calls: its answer passed 262144 bytes" in app.log()


def test_a_large_batch_answer_is_written_whole(app):
    """An answer of several MB is written in 64 KiB pieces (a describeMethods result is ~120 KB: sliced)."""
    rpc = app.proxy()
    expected = rpc.system.describeMethods()
    calls = [{"methodName": "system.describeMethods", "params": []}] * 30
    calls.insert(7, {"methodName": "nosuch.method", "params": []})
    results = rpc.system.multicall(calls)
    assert len(results) == 31 and results[7]["faultCode"] == -32601
    assert all(r == [expected] for i, r in enumerate(results) if i != 7)


def test_an_answer_encoded_member_by_member_is_the_one_encoded_at_once():
    from worknet.rpc.wire import EncodedArray, encode_response, encode_value

    members = [[{"a": 1, "b": "x\x01y\ud800", "c": [1.5, None, True, "é東"]}],
               {"faultCode": -32600, "faultString": "no <&>"}, [[]], [{}]]
    answer = EncodedArray()
    for member in members:
        answer.append(encode_value(member))
    document = b"".join(answer.pieces())
    assert document == encode_response(members) and answer.size == len(document) and len(answer) == 4
    assert b"".join(EncodedArray().pieces()) == encode_response([])


def _ping_stalls(daemon, batches: int, size: int) -> list[float]:
    """Latencies (s) of pings sent one after the other while ``batches`` multicalls of ``size``
    database-free calls run (each sub-call's Deferred has fired by the time it is awaited)."""
    sub = {"methodName": "paymentsService.calculate_fees", "params": ["100"]}
    body = xmlrpc.client.dumps(([sub] * size,), "system.multicall").encode()
    running = threading.Event()
    stop = threading.Event()
    latencies: list[float] = []

    def pinger() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        ping = xmlrpc.client.dumps((), "ping").encode()
        while not stop.is_set():
            started = time.perf_counter()
            conn.request("POST", "/RPC2", body=ping, headers={"Content-Type": "text/xml"})
            conn.getresponse().read()
            if running.is_set():
                latencies.append(time.perf_counter() - started)
        conn.close()

    def batch() -> None:
        post(daemon, body, timeout=60)

    thread = threading.Thread(target=pinger)
    thread.start()
    time.sleep(0.2)
    running.set()
    workers = [threading.Thread(target=batch) for _ in range(batches)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    stop.set()
    thread.join()
    return latencies


def test_a_batch_does_not_stall_a_concurrent_ping(daemon):
    """Three batches of 1,000 calls at once: before the batch yielded to the reactor, a
    concurrent ping waited for whole batches."""
    started = time.perf_counter()
    latencies = _ping_stalls(daemon, 3, 1000)
    elapsed = time.perf_counter() - started
    worst = max(latencies, default=elapsed)
    print(f"concurrent ping during 3 x 1000-call batches ({elapsed:.2f} s): n={len(latencies)} "
          f"median={statistics.median(latencies or [elapsed]) * 1000:.1f} ms max={worst * 1000:.1f} ms")
    # Before the batch yielded: n=3, max 870-1616 ms = 80-87 % of the run (the pinger waited for whole
    # batches).  Measured against the run's length, as the shared machine's load varies a lot.
    assert len(latencies) >= 10
    assert worst < 0.5 * elapsed, (worst, elapsed)


# -- HTTP ------------------------------------------------------------------------------------------

def test_a_health_probe_that_hangs_up_leaves_no_error(daemon):
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", daemon.port)) as s:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    time.sleep(1.0)
    assert daemon.proxy().ping()["status"] == "ok"
    assert "Unhandled error" not in daemon.log()
    assert "Traceback" not in daemon.log()


def test_calls_during_shutdown_answer_unavailable_not_internal_error(make_daemon):
    """Kept-alive connections keep calling while the daemon stops: every answer is a result or
    UNAVAILABLE (the pool closes before the connections do), never -32603.  The embedded
    database stops last, which leaves the connections a while to call after the pool closed."""
    daemon = make_daemon(mongodb_uri="", BCRYPT_ROUNDS="13")
    body = xmlrpc.client.dumps((), "categoriesService.get_all").encode()
    outcomes: list = []
    go = threading.Event()

    def caller() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=30)
        try:
            conn.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"})
            conn.getresponse().read()
            go.wait()
            while True:
                conn.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"})
                outcomes.append(answer_of(conn.getresponse().read()))
        except (OSError, http.client.HTTPException):
            pass

    slow = threading.Thread(target=lambda: daemon.proxy().usersService.login("nobody@example.com", "password123"))
    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    slow.start()  # keeps the drain waiting a little
    time.sleep(0.1)
    go.set()
    time.sleep(0.05)
    daemon.stop()
    for t in threads + [slow]:
        t.join(timeout=30)
    faults = [o for o in outcomes if isinstance(o, int)]
    codes = {o.get("code", "ok") if isinstance(o, dict) and not o.get("success") else "ok" for o in outcomes
             if not isinstance(o, int)}
    print(f"calls during shutdown: {len(outcomes)}, faults {faults[:5]}, outcomes {codes}")
    assert not faults
    assert codes <= {"ok", "UNAVAILABLE"}


# -- what needs no database does not wait for it -----------------------------------------------------

def start_without_database(make_daemon):
    """A daemon whose database never answers (nothing listens on its port)."""
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    daemon = make_daemon(mongodb_uri=f"mongodb://127.0.0.1:{port}/", start=False, DB_TIMEOUT_SECONDS="3")
    daemon.start(wait=False)
    def listening() -> bool:
        try:
            return post(daemon, xmlrpc.client.dumps((), "system.listMethods").encode(), timeout=5)[0] == 200
        except OSError:
            return False

    wait_for(listening, 30, "the daemon to listen")
    return daemon


@pytest.fixture
def daemon_without_database(make_daemon):
    return start_without_database(make_daemon)


def _timed(daemon, method: str, *args):
    started = time.monotonic()
    status, payload = post(daemon, xmlrpc.client.dumps(args, method).encode(), timeout=10)
    return time.monotonic() - started, answer_of(payload)


def test_introspection_and_ping_do_not_wait_for_the_database(daemon_without_database):
    daemon = daemon_without_database
    elapsed, names = _timed(daemon, "system.listMethods")
    assert elapsed < 0.5 and "ping" in names
    elapsed, text = _timed(daemon, "system.methodHelp", "paymentsService.calculate_fees")
    assert elapsed < 0.5 and text
    elapsed, result = _timed(daemon, "ping")
    assert elapsed < 2.5 and result["mongodb"] == "disconnected"
    elapsed, result = _timed(daemon, "categoriesService.get_all")  # this one needs the database
    assert result["code"] == "UNAVAILABLE" and 2.5 < elapsed < 4.0


def test_calculate_fees_does_not_wait_for_the_database(daemon_without_database):
    elapsed, result = _timed(daemon_without_database, "paymentsService.calculate_fees", "100")
    assert elapsed < 0.5 and result["success"] is True and result["platform_fee"] == 20.0


# -- ids with a trailing newline (issue 18, finding 1) ----------------------------------------------

NEWLINE_ID = "6b1126a21daf647fd2dad068\n"  # passed ``^[0-9a-fA-F]{24}$`` ($ matches before a final newline)


def id_calls(bad: str) -> list[tuple[str, list, str]]:
    """A call of every method that takes an id, with ``bad`` as that id: (method, params, the id's field)."""
    return [
        ("categoriesService.get_by_id", [bad], "category_id"),
        ("categoriesService.get_stats", [bad], "category_id"),
        ("categoriesService.update", [bad, {"name": "New name"}], "category_id"),
        ("categoriesService.delete", [bad], "category_id"),
        ("usersService.get_by_id", [bad], "user_id"),
        ("usersService.get_stats", [bad], "user_id"),
        ("usersService.update_profile", [bad, {"bio": "x"}], "user_id"),
        ("usersService.change_password", [bad, "password123", "password456"], "user_id"),
        ("usersService.delete_user", [bad], "user_id"),
        ("gigsService.get_by_id", [bad], "gig_id"),
        ("gigsService.get_by_user", [bad, 1, 10], "user_id"),
        ("gigsService.update", [bad, {"title": "A new title for the gig"}], "gig_id"),
        ("gigsService.update_rating", [bad, 4], "gig_id"),
        ("gigsService.delete", [bad], "gig_id"),
        ("gigsService.create", [bad, {"title": "A gig title here", "description": "d" * 60, "category": MISSING, "price": 10, "deliveryTime": 3}], "user_id"),
        ("gigsService.search", ["x", {"seller_id": bad}], "seller_id"),
        ("messagesService.get_conversation", [bad, 1, 10], "conversation_id"),
        ("messagesService.get_unread_count", [bad], "user_id"),
        ("messagesService.mark_as_read", [bad, MISSING], "message_id"),
        ("messagesService.start_conversation", [bad, MISSING], "user_a"),
        ("notificationsService.get_unread_count", [bad], "user_id"),
        ("notificationsService.mark_as_read", [bad], "notification_id"),
        ("reviewsService.calculate_rating", [bad], "gig_id"),
        ("reviewsService.update", [bad, {"rating": 4}], "review_id"),
        ("reviewsService.delete", [bad], "review_id"),
        ("ordersService.get_by_id", [bad], "order_id"),
        ("ordersService.cancel", [bad, "changed my mind"], "order_id"),
        ("ordersService.update_status", [bad, "completed", ""], "order_id"),
        ("ordersService.get_analytics", [bad, "month"], "user_id"),
        ("ordersService.get_all", [{"buyer_id": bad}], "buyer_id"),
        ("ordersService.create", [bad, MISSING, 1, 10], "gig_id"),
        ("paymentsService.get_status", [bad], "payment_id"),
        ("paymentsService.process", [bad, "completed"], "payment_id"),
        ("paymentsService.create", [bad, MISSING, 10, "stripe"], "payment_id"),
    ]


def test_an_id_with_a_trailing_newline_is_a_validation_error_and_one_log_line(app, rpc):
    """Before: fault -32603 and a critical traceback (about 1,400 log bytes) per call, in every method taking an id."""
    calls = id_calls(NEWLINE_ID)
    batch = [{"methodName": calls[i % len(calls)][0], "params": calls[i % len(calls)][1]} for i in range(1000)]
    logged = len(app.log().encode())
    results = rpc.system.multicall(batch)
    added = app.log().encode()[logged:]
    lines = added.count(b"\n")
    print(f"\n1,000 calls with an id ending in a newline: {len(added)} log bytes, {lines} lines "
          f"= {len(added) / 1000:.0f} bytes and {lines / 1000:.2f} lines per bad call")
    for i, result in enumerate(results):
        method, _, field = calls[i % len(calls)]
        assert isinstance(result, list), (method, result)
        assert result[0]["code"] == "VALIDATION_ERROR" and result[0]["field"] == field, (method, result)
    assert lines <= 1000 + 1  # one line per sub-call, one for the batch
    assert b"Traceback" not in added and b"#critical]" not in added
    # the same id written as a character reference in the body
    status, payload = post(app, call_body("usersService.get_by_id", b"<string>6b1126a21daf647fd2dad068&#10;</string>"))
    assert answer_of(payload)["code"] == "VALIDATION_ERROR"
    assert NEWLINE_ID in rpc.notificationsService.send_bulk([MISSING, NEWLINE_ID], "system", "hello", "")["invalid_ids"]
    # the same id without the newline names nothing, it is not malformed
    for method, params, field in id_calls(NEWLINE_ID.strip()):
        result = getattr(rpc, method)(*params)
        assert result.get("code") != "VALIDATION_ERROR" or result.get("field") != field, (method, result)


# -- registrations of one name at once ------------------------------------------------------------

def _password_jobs_run(app) -> int:
    text = app.get("/metrics")[1]
    line = next(line for line in text.splitlines() if line.startswith('worknet_password_jobs{outcome="run"}'))
    return int(float(line.split()[-1]))


def _register_at_once(app, accounts: list[tuple[str, str]]) -> list[str]:
    codes = [""] * len(accounts)
    barrier = threading.Barrier(len(accounts))

    def one(i: int) -> None:
        proxy = app.proxy()
        barrier.wait(30)
        answer = proxy.usersService.register(accounts[i][0], accounts[i][1], "password123", "client")
        codes[i] = "success" if answer["success"] else f"{answer['code']} {answer.get('field')}"

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(accounts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return codes


def test_registrations_of_one_email_at_once_cost_one_hash_and_the_rest_are_conflict(make_app, mongo):
    """Issue 18 (8): every loser used to hash its password before the unique index refused it,
    and under load some answered UNAVAILABLE (the password pool was busy) instead of CONFLICT.
    The 20 registrations (one e-mail) now cost one bcrypt job; the 19 others are CONFLICT."""
    # cost 12 keeps the one hash running while the others arrive; the call's deadline is not what is tested
    # here (an idle-priority hash on a loaded machine once took longer than the tests' 3 s, answering UNAVAILABLE)
    app = make_app(BCRYPT_ROUNDS="12", DB_TIMEOUT_SECONDS="30")
    before = _password_jobs_run(app)
    codes = _register_at_once(app, [(f"same{i}", "same@example.com") for i in range(20)])
    ran = _password_jobs_run(app) - before
    print(f"\n20 registrations of one e-mail at once: {sorted(codes)}; bcrypt jobs run: {ran}")
    assert sorted(codes) == ["CONFLICT email"] * 19 + ["success"], codes
    assert ran == 1
    codes = _register_at_once(app, [("newname" if i % 2 else "NewName", f"n{i}@example.com") for i in range(10)])
    assert sorted(codes) == ["CONFLICT username"] * 9 + ["success"], codes
    assert _password_jobs_run(app) - before == 2
    db = mongo[app.db_name]
    assert db.users.count_documents({}) == 2 and db.registrations.count_documents({}) == 0


def test_a_registration_left_half_way_holds_its_email_only_until_it_lapses(make_app, mongo, clock_file):
    """A app that stopped between the reservation and the account leaves no account (nothing to
    log in to) and a reservation that lapses: CONFLICT until then, then the e-mail is free again."""
    app = make_app(BCRYPT_ROUNDS="4", WORKNET_TEST_CLOCK_FILE=str(clock_file))
    db = mongo[app.db_name]
    rpc = app.proxy()
    db.registrations.insert_one({"usernameLower": "halfway", "email": "halfway@example.com",
                                 "expiresAt": datetime.now(UTC) + timedelta(seconds=60)})
    assert rpc.usersService.login("halfway@example.com", "password123")["code"] == "UNAUTHORIZED"
    taken = rpc.usersService.register("other", "halfway@example.com", "password123", "client")
    assert (taken["code"], taken["field"]) == ("CONFLICT", "email")
    taken = rpc.usersService.register("HalfWay", "other@example.com", "password123", "client")
    assert (taken["code"], taken["field"]) == ("CONFLICT", "username")
    clock_file.write_text("61")  # the reservation has lapsed (the TTL monitor may not have run yet)
    assert rpc.usersService.register("halfway", "halfway@example.com", "password123", "client")["success"]
    assert rpc.usersService.login("halfway@example.com", "password123")["success"]
    assert db.registrations.count_documents({}) == 0
