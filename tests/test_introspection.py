"""Introspection a caller can build on: system.describeMethods, system.methodSignature, the GET /RPC2 page."""

from __future__ import annotations

import re
import urllib.error
import urllib.request


def test_describe_methods_covers_every_listed_name(rpc):
    described = rpc.system.describeMethods()
    listed = rpc.system.listMethods()
    assert sorted(n for m in described for n in m["names"]) == sorted(listed)
    assert [m["name"] for m in described] == sorted(m["name"] for m in described)
    by_name = {m["name"]: m for m in described}
    assert by_name["usersService.get_by_id"]["names"] == ["usersService.get_by_id", "usersService.getById"]
    assert by_name["system.describeMethods"]["names"] == ["system.describeMethods"]


def test_parameters_carry_names_optionality_and_types(rpc):
    by_name = {m["name"]: m for m in rpc.system.describeMethods()}
    create = by_name["categoriesService.create"]
    assert create["params"] == [
        {"name": "name", "type": "string", "optional": False},
        {"name": "slug", "type": "string", "optional": False},
        {"name": "description", "type": "string", "optional": True, "default": ""},
    ]
    # the standard answer is unchanged: types only
    assert rpc.system.methodSignature("categoriesService.create") == [["struct", "string", "string", "string"]]
    register = by_name["usersService.register"]
    assert [p["name"] for p in register["params"]] == ["username", "email", "password", "role"]
    assert register["returns"]["envelope"] is True
    assert {f["name"]: f["type"] for f in register["returns"]["fields"]} == {
        "user_id": "string", "user": "struct", "token": "string", "refresh_token": "string"}
    cancel = by_name["ordersService.update_status"]
    assert {"name": "refund", "type": "struct|nil", "optional": True} in cancel["returns"]["fields"]
    rating = by_name["gigsService.update_rating"]["params"][1]
    assert rating == {"name": "new_rating", "type": "double", "optional": True, "default": None}
    assert by_name["ping"]["returns"]["envelope"] is False
    assert "uptime_seconds" in {f["name"] for f in by_name["ping"]["returns"]["fields"]}


def test_every_method_declares_a_type_for_each_parameter_and_its_result_fields(rpc):
    for m in rpc.system.describeMethods():
        signature = rpc.system.methodSignature(m["name"])
        assert isinstance(signature, list) and signature, m["name"]
        assert [p["type"] for p in m["params"]] == signature[0][1:], m["name"]
        assert m["returns"]["type"] == signature[0][0], m["name"]
        if m["returns"]["envelope"]:
            assert m["returns"]["fields"], f"{m['name']}: @signature(..., returns=...) is missing"


def test_declared_result_fields_are_what_a_call_returns(rpc):
    created = rpc.categoriesService.create("Introspection", "introspection", "")
    by_name = {m["name"]: m for m in rpc.system.describeMethods()}
    fields = {f["name"] for f in by_name["categoriesService.create"]["returns"]["fields"]}
    assert set(created) == {"success"} | fields
    page = rpc.categoriesService.get_all(1, 5)
    assert set(page) == {"success"} | {f["name"] for f in by_name["categoriesService.get_all"]["returns"]["fields"]}
    fees = rpc.paymentsService.calculate_fees("100.00")
    assert set(fees) == {"success"} | {f["name"] for f in by_name["paymentsService.calculate_fees"]["returns"]["fields"]}


def test_method_page_has_contents_parameters_errors_and_authentication(app):
    status, page = app.get("/RPC2")
    assert status == 200
    for service in ("usersService", "gigsService", "ordersService", "paymentsService", "categoriesService",
                    "reviewsService", "messagesService", "notificationsService", "system"):
        assert f'href="#service-{service}"' in page and f'id="service-{service}"' in page
    assert ('categoriesService.create(name: string, slug: string, '
            '<span class="opt">[description: string]</span>)') in page
    assert "(also usersService.getById)" in page
    for code in ("VALIDATION_ERROR", "NOT_FOUND", "CONFLICT", "INVALID_STATE", "UNAUTHORIZED", "FORBIDDEN",
                 "RATE_LIMITED", "UNAVAILABLE", "-32700", "-32600", "-32601", "-32602", "-32603"):
        assert code in page, code
    assert "id='authentication'" in page and "Authorization: Bearer" in page
    assert "One category by slug" in page  # help text
    # every method has an anchor of its own
    anchors = set(re.findall(r'<dt id="([^"]+)"', page))
    described = app.proxy().system.describeMethods()
    assert anchors == {m["name"] for m in described}


def test_a_browser_can_open_the_page_when_a_token_is_set(make_app):
    token = "page-token-" + "y" * 30
    app = make_app(RPC_AUTH_TOKEN=token)
    conn = app.connection()
    conn.request("GET", "/RPC2")
    response = conn.getresponse()
    response.read()
    assert response.status == 401
    challenges = response.headers.get_all("WWW-Authenticate")
    assert any(c.startswith("Basic ") for c in challenges) and any(c.startswith("Bearer ") for c in challenges)
    # urllib's basic-auth handler answers only a Basic challenge, as a browser does: it sends
    # nothing first, gets the 401, then retries with the user name and password it was given
    passwords = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    passwords.add_password(None, app.url, "any-user", token)
    opener = app.opener(urllib.request.HTTPBasicAuthHandler(passwords))
    with opener.open(app.url, timeout=10) as answer:
        assert answer.status == 200
        assert "WorkNet RPC" in answer.read().decode()
    wrong = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    wrong.add_password(None, app.url, "any-user", token + "x")
    try:
        app.opener(urllib.request.HTTPBasicAuthHandler(wrong)).open(app.url, timeout=10)
        raise AssertionError("a wrong password opened the page")
    except urllib.error.HTTPError as e:
        assert e.code == 401
