"""Validators and settings on their own (no daemon needed): the edges of every rule."""

from __future__ import annotations

import xmlrpc.client
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from bson import ObjectId

from worknet import validators as v
from worknet.config import ConfigError, load_settings
from worknet.errors import ValidationError
from worknet.rpc.parsing import NotAnXmlRpcCall, NotWellFormed, parse_call
from worknet.rpc.wire import iso, to_wire


@pytest.mark.parametrize("raw, expected", [
    (1, Decimal("1.00")), (19.99, Decimal("19.99")), (0.1, Decimal("0.10")), ("0.01", Decimal("0.01")),
    (" 12.5 ", Decimal("12.50")), (1_000_000, Decimal("1000000.00")), ("999999.99", Decimal("999999.99")),
    (0.3, Decimal("0.30")), ("1.230", Decimal("1.23")),
])
def test_money_accepts_amounts_exactly(raw, expected):
    amount = v.money(raw, "price")
    assert amount == expected and str(amount) == str(expected)


@pytest.mark.parametrize("raw", [
    0, -1, "0.00", 1_000_000.01, "1000000.01", "1.234", 0.001, float("nan"), float("inf"), "NaN", "Infinity",
    "abc", "", True, None, [1], {"$gt": 0}, "1e3.5",
])
def test_money_refuses_bad_amounts(raw):
    with pytest.raises(ValidationError) as caught:
        v.money(raw, "price")
    assert caught.value.field == "price"


def test_cents_round_half_up():
    assert v.cents(Decimal("0.125")) == Decimal("0.13")
    assert v.cents(Decimal("0.124999")) == Decimal("0.12")
    assert v.cents(Decimal("2.675")) == Decimal("2.68")  # the float 2.675 would round down


def test_object_ids():
    oid = ObjectId()
    assert v.object_id(str(oid), "id") == oid
    assert v.object_id(str(oid).upper(), "id") == oid
    for bad in ("", "123", "z" * 24, str(oid) + "0", 12, None, {"$ne": None}, [str(oid)]):
        with pytest.raises(ValidationError):
            v.object_id(bad, "id")
    assert v.client_id("", "id") is None and v.client_id(None, "id") is None
    assert v.client_id(str(oid), "id") == oid


def test_struct_whitelist():
    spec = {"name": lambda value, field: v.text(value, field, 1, 10), "isActive": v.boolean}
    assert v.struct({"name": " x "}, "updates", spec) == {"name": "x"}
    assert v.struct(None, "filters", spec) == {}
    for bad, field in (({"$set": {}}, "updates"), ({"role": "admin"}, "updates.role"), ({"a.b": 1}, "updates"),
                       ("name", "updates"), ([1], "updates"), ({"isActive": 1}, "isActive")):
        with pytest.raises(ValidationError) as caught:
            v.struct(bad, "updates", spec)
        assert caught.value.field == field, bad
    with pytest.raises(ValidationError):
        v.struct({}, "updates", spec, allow_empty=False)


def test_text_rules():
    assert v.text("  Café Zoë 東京 ", "name", 2, 20) == "Café Zoë 東京"
    for bad in ("a", "x" * 21, "bad\x00byte", "bell\x07", 5, None):
        with pytest.raises(ValidationError):
            v.text(bad, "name", 2, 20)


def test_email_slug_url_and_paging():
    assert v.email(" Someone@Example.COM ") == "someone@example.com"
    for bad in ("no-at", "a@b", "a@@b.com", "a b@c.com", "x" * 250 + "@e.com"):
        with pytest.raises(ValidationError):
            v.email(bad)
    assert v.slug("web-design-2") == "web-design-2"
    for bad in ("Web", "-web", "web-", "web--design", "web_design", ""):
        with pytest.raises(ValidationError):
            v.slug(bad)
    assert v.url("https://example.com/a.png", "image") == "https://example.com/a.png"
    for bad in ("javascript:alert(1)", "ftp://x.org/f", "https://", "not a url"):
        with pytest.raises(ValidationError):
            v.url(bad, "image")
    assert v.paging(None, None) == (1, 20)
    assert v.paging(3, 100) == (3, 100)
    for page, limit in ((0, 1), (1, 0), (1, 101), (True, 5), (1.5, 5)):
        with pytest.raises(ValidationError):
            v.paging(page, limit)


def test_dates_in_and_out():
    assert v.iso_datetime("2026-11-25T11:39:29.123Z", "from") == datetime(2026, 11, 25, 11, 39, 29, 123000, UTC)
    assert v.iso_datetime("2026-11-25", "from") == datetime(2026, 11, 25, tzinfo=UTC)
    assert v.iso_datetime(xmlrpc.client.DateTime("20261125T11:39:29"), "from") == datetime(2026, 11, 25, 11, 39, 29, tzinfo=UTC)
    for bad in ("yesterday", "2026-13-01", 5):
        with pytest.raises(ValidationError):
            v.iso_datetime(bad, "from")
    assert iso(datetime(2026, 11, 25, 11, 39, 29, 123456)) == "2026-11-25T11:39:29.123Z"


def test_wire_conversion_hides_internal_fields():
    oid = ObjectId()
    doc = {"_id": oid, "passwordHash": "x", "tokenVersion": 3, "nested": [{"_id": oid, "price": Decimal("10.5")}],
           "big": 2**40, "when": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC), "none": None}
    assert to_wire(doc) == {"id": str(oid), "nested": [{"id": str(oid), "price": 10.5}], "big": float(2**40),
                            "when": "2026-01-02T03:04:05.000Z", "none": None}


def test_parser_refuses_what_it_must():
    assert parse_call(xmlrpc.client.dumps((1, "é"), "a.b").encode()) == ("a.b", (1, "é"))
    assert parse_call(b"<methodCall><methodName>ping</methodName></methodCall>") == ("ping", ())
    for body in (b"", b"<methodCall>", b"<!DOCTYPE x><methodCall/>", b"<methodCall><methodName>x</methodName>\x00"):
        with pytest.raises(NotWellFormed):
            parse_call(body)
    for body in (b"<methodResponse><params/></methodResponse>", b"<methodCall><params/></methodCall>",
                 b"<methodCall><methodName>x</methodName><params><param><value><int>zz</int></value></param></params></methodCall>"):
        with pytest.raises(NotAnXmlRpcCall):
            parse_call(body)


def test_settings_from_env_file_environment_and_overrides(tmp_path):
    env_file = tmp_path / "settings.env"
    env_file.write_text("RPC_PORT=9001\nDB_NAME=fromfile\nNODE_ENV=development\nPLATFORM_FEE_PERCENT=12.5\n")
    settings = load_settings({"DB_NAME": "fromenv"}, env_file=str(env_file), overrides={"mongodb_pool_size": 3})
    assert settings.rpc_port == 9001 and settings.db_name == "fromenv" and settings.mongodb_pool_size == 3
    assert settings.platform_fee_percent == Decimal("12.5")
    assert settings.listen == "tcp:9001:interface=127.0.0.1"
    assert settings.embedded_database
    assert "JWT_SECRET" not in repr(settings) and "jwt_secret" not in repr(settings)
    with pytest.raises(ConfigError, match="RPC_PORT"):
        load_settings({"RPC_PORT": "99999", "NODE_ENV": "development"}, env_file=str(env_file))
    with pytest.raises(ConfigError, match="DB_NAME"):
        load_settings({"DB_NAME": "a/b", "NODE_ENV": "development"}, env_file=str(env_file))
    with pytest.raises(ConfigError, match="env-file"):
        load_settings({}, env_file=str(tmp_path / "missing.env"))
    strong = "s" * 40
    production = load_settings({"NODE_ENV": "production", "JWT_SECRET": strong}, env_file=str(env_file))
    assert production.node_env == "production" and not production.development
