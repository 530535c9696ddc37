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
    for bad in ("", "123", "z" * 24, str(oid) + "0", 12, None, {"$ne": None}, [str(oid)], str(oid) + "\n",
                "\n" + str(oid), str(oid) + "\r", str(oid)[:23] + "\n"):
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
                 b"<methodCall><methodName>x</methodName><params><param><value><boolean>2</boolean></value></param></params></methodCall>"):
        with pytest.raises(NotAnXmlRpcCall):
            parse_call(body)


def test_patterns_match_whole_strings():
    """``$`` also matches before a final newline: every pattern is applied with fullmatch (issue 18)."""
    import re

    lower = re.compile(r"^[a-z]+$")  # written the old way on purpose: text() must not depend on the anchors
    assert v.text("abc", "f", pattern=lower) == "abc"
    for bad in ("abc\n", "abc\nabc"):
        with pytest.raises(ValidationError):
            v.text(bad, "f", pattern=lower, strip=False)
    with pytest.raises(ValidationError):
        v.email("someone@example.com\nx")
    with pytest.raises(ValidationError):
        v.slug("web\nx")


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


@pytest.mark.parametrize("raw", [
    "111111111111111111111111111.001", "1" * 40, "1e2", "1E-2", "1_000", "+5", "-5", "１２", "١٢", "१२", "12,5",
    "0x10", "5 5", "1.2.3", ".", " ", "\u00a0", "12\u00a0", "٫5",
])
def test_money_strings_are_ascii_digits_and_one_dot(raw):
    with pytest.raises(ValidationError) as caught:
        v.money(raw, "amount")
    assert caught.value.field == "amount"


def test_money_strings_that_are_fine():
    assert v.money("5.", "a") == Decimal("5.00") and v.money(".5", "a") == Decimal("0.50")
    assert v.money("000012.10", "a") == Decimal("12.10") and v.money("999999.990000000", "a") == Decimal("999999.99")
    with pytest.raises(ValidationError):
        v.money(10**400, "a")
    with pytest.raises(ValidationError):
        v.money(1e300, "a")


def test_dates_outside_the_calendar_and_inclusive_to():
    for bad in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:00:00-05:00", "0001-01-01T00:00:00+23:59"):
        for field in ("from", "to"):
            with pytest.raises(ValidationError) as caught:
                v.iso_datetime(bad, field)
            assert caught.value.field == field
    assert v.iso_datetime("0001-01-01T05:00:00+05:00", "from") == datetime(1, 1, 1, tzinfo=UTC)
    last = datetime(2026, 1, 31, 23, 59, 59, 999000, UTC)
    assert v.iso_datetime("2026-01-31", "to") == last and v.iso_datetime("20260131", "to") == last
    assert v.iso_datetime("2026-01-31", "from") == datetime(2026, 1, 31, tzinfo=UTC)
    assert v.iso_datetime("2026-01-31T00:00:00Z", "to") == datetime(2026, 1, 31, tzinfo=UTC)  # a moment stays
    assert v.iso_datetime("9999-12-31", "to") == datetime(9999, 12, 31, 23, 59, 59, 999000, UTC)


def test_wire_converts_foreign_values_and_refuses_what_it_cannot_carry():
    from bson import Binary, Decimal128, Int64, Regex

    from worknet.rpc.wire import Unmarshallable, encode_response

    converted = to_wire({"n": Int64(3), "big": Int64(2**40), "s": "a\x00b\x1f\ud800\uffff", "b": Binary(b"\x00\x01")})
    assert converted["n"] == 3 and type(converted["n"]) is int and converted["big"] == float(2**40)
    assert converted["b"].data == b"\x00\x01"
    back = xmlrpc.client.loads(encode_response(converted))[0][0]  # a document any client can read
    assert back["s"] == "a\ufffdb\ufffd\ufffd\ufffd" and back["n"] == 3
    assert xmlrpc.client.loads(encode_response({"s": "Café Zoë 東京\n\t"}))[0][0]["s"] == "Café Zoë 東京\n\t"
    for bad in (Decimal128("NaN"), Decimal128("Infinity"), Decimal128("1E+6000"), float("nan"), float("-inf"),
                Regex("a"), object()):
        with pytest.raises(Unmarshallable):
            to_wire({"x": [bad]})


def test_parser_holds_calls_to_the_spec():
    from worknet.rpc.parsing import BadValue

    def one(value: bytes) -> bytes:
        return b"<methodCall><methodName>m</methodName><params><param>" + value + b"</param></params></methodCall>"

    for value in (b"<value><struct><member><name>a</name></member></struct></value>",
                  b"<value><struct><member><value>1</value></member></struct></value>",
                  b"<value><struct><member><name>a</name><name>b</name><value>1</value></member></struct></value>",
                  b"<value><struct><value>1</value></struct></value>", b"<value><bigdecimal>1</bigdecimal></value>",
                  b"<value><biginteger>1</biginteger></value>", b"<value><float>1</float></value>",
                  b"<value><i2>1</i2></value>", b"<value><name>x</name></value>", b"<value><x:fault/></value>"):
        with pytest.raises(NotAnXmlRpcCall):
            parse_call(one(value))
    with pytest.raises(NotAnXmlRpcCall):
        parse_call(b"<methodCall><methodName>m</methodName><fault><value><struct></struct></value></fault></methodCall>")
    for value in (b"<value><int>9223372036854775808</int></value>", b"<value><i8>-9223372036854775809</i8></value>",
                  b"<value><i4>" + b"9" * 400 + b"</i4></value>", b"<value><double>nan</double></value>",
                  b"<value><double>inf</double></value>", b"<value><double>1e400</double></value>"):
        with pytest.raises(BadValue):
            parse_call(one(value))
    assert parse_call(one(b"<value><i8>9223372036854775807</i8></value>"))[1] == (2**63 - 1,)
    assert parse_call(one(b"<value><struct><member><name>a</name><value><ex:nil xmlns:ex='e'/></value></member>"
                          b"</struct></value>"))[1] == ({"a": None},)


def _one(value: bytes) -> bytes:
    return b"<methodCall><methodName>m</methodName><params><param>" + value + b"</param></params></methodCall>"


@pytest.mark.parametrize("kind", ["int", "i4", "i8", "ex:i8 xmlns:ex='e'"])
@pytest.mark.parametrize("text", ["١٠٠", "1_000", "１２", "१२", "0x10", "1.0", "1e3", "+-1", "- 1", "", "zz", "1 2",
                                  "\u00a012", "12\u2003"])
def test_integers_are_ascii_digits_with_an_optional_sign(kind, text):
    """Python's int() reads all of these; XML-RPC allows none (issue 18)."""
    from worknet.rpc.parsing import BadValue

    close = kind.split()[0]
    with pytest.raises(BadValue):
        parse_call(_one(f"<value><{kind}>{text}</{close}></value>".encode()))


@pytest.mark.parametrize("text", ["1_0", "١٠", "１.５", "1,5", "0x1p3", "1.5f", "1e", "e5", ".", "", "--1", "1e1.5",
                                  "\u00a01.5", "infinity", "nan", "1d5"])
def test_doubles_are_ascii_digits_a_point_and_an_exponent(text):
    from worknet.rpc.parsing import BadValue

    with pytest.raises(BadValue):
        parse_call(_one(f"<value><double>{text}</double></value>".encode()))


def test_numbers_as_clients_write_them_still_parse():
    values = {b"<int>-12</int>": -12, b"<int>+7</int>": 7, b"<i4>007</i4>": 7, b"<int> 5\n</int>": 5,
              b"<i8>-9223372036854775808</i8>": -(2**63), b"<double>1e-05</double>": 1e-05,
              b"<double>-1.5E+3</double>": -1500.0, b"<double>.5</double>": 0.5, b"<double>5.</double>": 5.0,
              b"<double>+0.0</double>": 0.0, b"<double>19.99</double>": 19.99, b"<double>42</double>": 42.0}
    for xml, expected in values.items():
        assert parse_call(_one(b"<value>" + xml + b"</value>"))[1] == (expected,), xml
    for number in (1e-05, 1e16, -0.1, 2.5e-300, 1.7976931348623157e308, 123456789.125):
        assert parse_call(xmlrpc.client.dumps((number,), "m").encode())[1] == (number,)


def test_a_request_holds_at_most_max_values_values(tmp_path):
    from worknet.config import MIN_MAX_VALUES, Settings
    from worknet.rpc.parsing import ELEMENTS_PER_VALUE, MAX_VALUES

    assert Settings().rpc_max_values == MAX_VALUES == 10_000
    batch = [{"methodName": "ping", "params": []}] * 3333  # 1 + 3 x 3,333 = 10,000 values
    assert len(parse_call(xmlrpc.client.dumps((batch,), "system.multicall").encode())[1][0]) == 3333
    with pytest.raises(NotAnXmlRpcCall, match="at most 10000 values"):
        parse_call(xmlrpc.client.dumps((batch + batch[:1],), "system.multicall").encode())
    # the largest single call: gigsService.create with every list full
    gig = {"title": "t" * 80, "description": "d" * 200, "category": "web", "price": "1", "deliveryTime": 3,
           "revisionNumber": 1, "images": ["https://example.com/a.png"] * 10, "features": ["f"] * 20, "tags": ["t"] * 10}
    body = xmlrpc.client.dumps(("0" * 24, gig), "gigsService.create").encode()
    assert body.count(b"<value>") <= MIN_MAX_VALUES and parse_call(body, MIN_MAX_VALUES)[0] == "gigsService.create"
    # a value with the most elements a value can bring (member, name, value, array, data) is within the bound
    members = b"<member><name/><value><array><data/></array></value></member>" * 99
    assert parse_call(_one(b"<value><struct>" + members + b"</struct></value>"), 100)[1] == ({"": []},)
    # elements that are not values count too: a flood of them stops at the bound
    flood = b"<methodCall><methodName>m</methodName><params>" + b"<param/>" * (ELEMENTS_PER_VALUE * 100 + 1)
    with pytest.raises(NotAnXmlRpcCall, match="RPC_MAX_VALUES"):
        parse_call(flood + b"</params></methodCall>", 100)
    with pytest.raises(NotAnXmlRpcCall, match="at most 100 values"):
        parse_call(_one(b"<value><array><data>" + b"<value/>" * 100 + b"</data></array></value>"), 100)
    (tmp_path / "none.env").write_text("")
    with pytest.raises(ConfigError, match="RPC_MAX_VALUES"):
        load_settings({"RPC_MAX_VALUES": "99", "NODE_ENV": "development"}, env_file=str(tmp_path / "none.env"))
