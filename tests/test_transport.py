"""The XML-RPC plumbing as callers see it: names, introspection, faults, limits, HTTP.

Most tests call the daemon's site in process (``app``, ``rpc``); those about the process or its sockets
(keep-alive on one TCP connection, the resident memory after an entity bomb, /health and /metrics over one
connection, caller authentication) start a daemon."""

from __future__ import annotations

import base64
import http.client
import json
import xmlrpc.client

import pytest

from tests.conftest import wait_for
from worknet.services import SERVICES


def post(server, body: bytes, path: str = "/RPC2", headers: dict | None = None, timeout: float = 10):
    """POST ``body`` to a daemon, or to an in-process app (tests/inprocess.py): the status and the body."""
    if hasattr(server, "connection"):
        conn = server.connection(timeout=timeout)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    conn.request("POST", path, body=body, headers={"Content-Type": "text/xml", **(headers or {})})
    response = conn.getresponse()
    payload = response.read()
    conn.close()
    return response.status, payload


def fault_of(payload: bytes) -> int:
    with pytest.raises(xmlrpc.client.Fault) as caught:
        xmlrpc.client.loads(payload)
    return caught.value.faultCode


def test_ping(rpc):
    result = rpc.ping()
    assert result["status"] == "ok" and result["message"] == "RPC Server is running"
    assert result["mongodb"] == "connected"
    assert isinstance(result["version"], str) and isinstance(result["uptime_seconds"], int)


@pytest.mark.parametrize("path", ["/RPC2", "/", "/RPC2/"])
def test_every_rpc_path_answers(app, path):
    status, payload = post(app, xmlrpc.client.dumps((), "ping").encode(), path=path)
    assert status == 200
    assert xmlrpc.client.loads(payload)[0][0]["status"] == "ok"


def test_introspection_lists_every_method_with_both_names(rpc):
    names = set(rpc.system.listMethods())
    assert {"ping", "system.listMethods", "system.methodHelp", "system.methodSignature", "system.multicall"} <= names
    assert len(SERVICES) >= 1
    for service in SERVICES:
        assert any(n.startswith(service + ".") for n in names), service
    assert {"categoriesService.get_by_slug", "categoriesService.getBySlug",
            "categoriesService.get_stats", "categoriesService.getStats"} <= names
    # every snake_case method has its camelCase alias and both answer help and signature
    for name in names:
        if name.startswith("system.") or name == "ping":
            continue
        assert rpc.system.methodHelp(name), name
        signature = rpc.system.methodSignature(name)
        assert isinstance(signature, list) and signature and signature[0][0] == "struct", name


def test_aliases_reach_the_same_method(rpc):
    created = rpc.categoriesService.create("Video", "video", "")
    assert rpc.categoriesService.getById(created["category_id"]) == rpc.categoriesService.get_by_id(created["category_id"])


def test_multicall_mixes_results_and_faults(rpc):
    calls = [
        {"methodName": "ping", "params": []},
        {"methodName": "no.such.method", "params": []},
        {"methodName": "categoriesService.get_by_id", "params": ["bad"]},
        {"methodName": "categoriesService.get_by_id", "params": []},
    ]
    results = rpc.system.multicall(calls)
    assert results[0][0]["status"] == "ok"
    assert results[1]["faultCode"] == -32601
    assert results[2][0]["code"] == "VALIDATION_ERROR"
    assert results[3]["faultCode"] == -32602
    multi = xmlrpc.client.MultiCall(rpc)
    multi.ping()
    multi.categoriesService.getAll(1, 5)
    first, second = multi()
    assert first["status"] == "ok" and second["success"] is True


def test_protocol_faults(app):
    assert fault_of(post(app, b"<methodCall><methodName>ping</methodName>")[1]) == -32700
    assert fault_of(post(app, b"\xff\xfe not xml")[1]) == -32700
    assert fault_of(post(app, b"<?xml version='1.0'?><hello/>")[1]) == -32600
    unknown = xmlrpc.client.dumps((), "categoriesService.nope").encode()
    assert fault_of(post(app, unknown)[1]) == -32601
    arity = xmlrpc.client.dumps((1, 2, 3, 4, 5), "categoriesService.get_by_id").encode()
    assert fault_of(post(app, arity)[1]) == -32602


def test_internal_names_are_not_callable(app):
    for name in ("categoriesService.store", "categoriesService.__init__", "render_POST", "system.multicall.x"):
        assert fault_of(post(app, xmlrpc.client.dumps((), name).encode())[1]) == -32601, name


def test_invalid_utf8_and_control_characters_are_refused(app, db):
    bad_utf8 = (b"<?xml version='1.0' encoding='utf-8'?><methodCall><methodName>categoriesService.create</methodName>"
                b"<params><param><value><string>Caf\xe9</string></value></param><param><value>x</value></param>"
                b"<param><value>d</value></param></params></methodCall>")
    assert fault_of(post(app, bad_utf8)[1]) == -32700
    control = bad_utf8.replace(b"Caf\xe9", b"Caf&#1;")
    assert fault_of(post(app, control)[1]) == -32700
    raw_control = bad_utf8.replace(b"Caf\xe9", b"Caf\x01")
    assert fault_of(post(app, raw_control)[1]) == -32700
    assert db.categories.count_documents({}) == 0


def test_billion_laughs_is_refused_quickly(daemon):
    lol = [b'<!ENTITY lol "lol">'] + [
        b'<!ENTITY lol%d "%s">' % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10)
    ]
    body = (b"<?xml version='1.0'?><!DOCTYPE lolz [" + b"".join(lol) + b"]><methodCall><methodName>ping"
            b"</methodName><params><param><value><string>&lol9;</string></value></param></params></methodCall>")
    status, payload = post(daemon, body, timeout=5)
    assert status == 200 and fault_of(payload) == -32700
    assert b"not allowed" in payload
    external = (b"<?xml version='1.0'?><!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>"
                b"<methodCall><methodName>ping</methodName><params><param><value>&e;</value></param></params></methodCall>")
    status, payload = post(daemon, external)
    assert fault_of(payload) == -32700 and b"root:" not in payload
    # the daemon still serves, and its memory did not blow up
    assert daemon.proxy().ping()["status"] == "ok"
    with open(f"/proc/{daemon.process.pid}/status") as f:
        rss_kib = int(next(line for line in f if line.startswith("VmRSS")).split()[1])
    assert rss_kib < 300 * 1024


def test_deep_nesting_is_refused(app):
    def nested(depth: int) -> bytes:
        return b"<value><array><data>" * depth + b"<value><int>1</int></value>" + b"</data></array></value>" * depth

    ok = b"<methodCall><methodName>ping</methodName><params><param>" + nested(10) + b"</param></params></methodCall>"
    assert fault_of(post(app, ok)[1]) == -32602  # parsed fine; ping takes no parameter
    deep = b"<methodCall><methodName>ping</methodName><params><param>" + nested(100) + b"</param></params></methodCall>"
    assert fault_of(post(app, deep)[1]) == -32700


def test_oversized_body_gets_413_before_parsing(app):
    body = b"<methodCall><methodName>ping</methodName><params><param><value><string>" + b"x" * (2 * 1024 * 1024)
    body += b"</string></value></param></params></methodCall>"
    status, payload = post(app, body)
    assert status == 413
    assert app.proxy().ping()["status"] == "ok"


def test_keep_alive_serves_several_calls_on_one_connection(daemon):
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    sockets = set()
    for _ in range(3):
        conn.request("POST", "/RPC2", body=xmlrpc.client.dumps((), "ping").encode(), headers={"Content-Type": "text/xml"})
        response = conn.getresponse()
        assert response.status == 200 and response.getheader("Content-Type").startswith("text/xml")
        assert xmlrpc.client.loads(response.read())[0][0]["status"] == "ok"
        sockets.add(id(conn.sock))
    conn.close()
    assert len(sockets) == 1


def test_health_metrics_and_method_page(daemon, rpc):
    rpc.ping()
    rpc.categoriesService.get_by_id("bad")
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    conn.request("GET", "/health")
    response = conn.getresponse()
    assert response.status == 200
    assert json.loads(response.read()) == {"status": "ok", "mongodb": "connected"}
    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    assert 'worknet_rpc_requests_total{method="ping",outcome="ok"}' in metrics
    assert 'worknet_rpc_requests_total{method="categoriesService.get_by_id",outcome="VALIDATION_ERROR"} 1.0' in metrics
    rpc.categoriesService.getById("bad")  # an alias counts under the method's own name
    conn.request("GET", "/metrics")
    metrics = conn.getresponse().read().decode()
    assert 'worknet_rpc_requests_total{method="categoriesService.get_by_id",outcome="VALIDATION_ERROR"} 2.0' in metrics
    assert "getById" not in metrics
    assert "worknet_rpc_request_duration_seconds_bucket" in metrics
    assert "worknet_rpc_in_flight_requests" in metrics and "worknet_db_pool_size" in metrics
    conn.request("GET", "/RPC2")
    response = conn.getresponse()
    page = response.read().decode()
    assert response.status == 200 and response.getheader("Content-Type").startswith("text/html")
    assert "categoriesService.get_by_slug" in page and "One category by slug" in page
    conn.request("GET", "/nothing-here")
    response = conn.getresponse()
    response.read()
    assert response.status == 404


def test_caller_authentication(make_daemon):
    token = "t0ken-for-tests-" + "x" * 20
    daemon = make_daemon(start=False, RPC_AUTH_TOKEN=token)
    daemon.start(wait=False)
    bearer = {"Authorization": f"Bearer {token}"}
    basic = {"Authorization": "Basic " + base64.b64encode(f"node:{token}".encode()).decode()}
    body = xmlrpc.client.dumps((), "ping").encode()
    wait_for(daemon.serving, 30, "the daemon to start")  # /health answers without the token
    assert post(daemon, body, headers=bearer)[0] == 200
    assert post(daemon, body, headers=basic)[0] == 200
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {token}x"},
                    {"Authorization": "Basic " + base64.b64encode(b"node:wrong").decode()}, {"Authorization": "Basic !!!"}):
        status, payload = post(daemon, body, headers=headers)
        assert status == 401, headers
        assert token.encode() not in payload
    create = xmlrpc.client.dumps(("Blocked", "blocked", ""), "categoriesService.create").encode()
    assert post(daemon, create)[0] == 401
    conn = http.client.HTTPConnection("127.0.0.1", daemon.port, timeout=10)
    for path, expected in (("/health", 200), ("/metrics", 401), ("/RPC2", 401)):
        conn.request("GET", path)
        response = conn.getresponse()
        response.read()
        assert response.status == expected, path
    conn.request("GET", "/metrics", headers=bearer)
    response = conn.getresponse()
    response.read()
    assert response.status == 200
    listed = post(daemon, xmlrpc.client.dumps(("blocked",), "categoriesService.get_by_slug").encode(), headers=bearer)
    assert xmlrpc.client.loads(listed[1])[0][0]["code"] == "NOT_FOUND"  # the unauthenticated create did not run


def test_bodies_up_to_the_limit_stay_in_memory():
    """Twisted spools bodies of 100 kB and more to a temporary file (disk I/O on the reactor thread)."""
    from io import BytesIO

    from twisted.web.test.requesthelper import DummyChannel

    from worknet.rpc.resource import request_factory

    request_class = request_factory(1024 * 1024)
    for length in (None, 10, 150_000, 1024 * 1024):
        request = request_class(DummyChannel())
        request.gotLength(length)
        assert isinstance(request.content, BytesIO), length
        assert not request.body_too_large
    request = request_class(DummyChannel())
    request.gotLength(1024 * 1024 + 1)
    assert request.body_too_large and isinstance(request.content, BytesIO)
    request.handleContentChunk(b"x" * 4096)
    assert request.content.getvalue() == b""


def test_a_large_body_under_the_limit_is_served(app):
    body = xmlrpc.client.dumps(("x" * 900_000,), "paymentsService.calculate_fees").encode()
    status, payload = post(app, body)
    assert status == 200 and xmlrpc.client.loads(payload)[0][0]["code"] == "VALIDATION_ERROR"
