"""Hypothesis strategies for hostile XML-RPC requests, generated as raw bytes.

The bytes are written by hand (not by ``xmlrpc.client.dumps``) so that they can
carry what a well-behaved client never sends: integers beyond 32 and 64 bits,
NaN and infinite doubles, invalid UTF-8, characters XML forbids, broken struct
members, elements XML-RPC does not have, nesting past the limit.
"""

from __future__ import annotations

import inspect
import random
import re
import secrets
import time
from xml.sax.saxutils import escape

import jwt
from hypothesis import strategies as st

from worknet.rpc.dispatch import camel_case
from worknet.services import SERVICES


def _known_methods() -> dict[str, int]:
    """Every service method -> its most positional parameters (plus ping and system.*)."""
    names = {"ping": 0, "system.listMethods": 0, "system.methodHelp": 1, "system.methodSignature": 1,
             "system.multicall": 1}
    for service, cls in SERVICES.items():
        for attr, function in inspect.getmembers(cls, inspect.isfunction):
            if attr.startswith("xmlrpc_"):
                names[f"{service}.{attr[len('xmlrpc_'):]}"] = len(inspect.signature(function).parameters) - 1
    return names


ARITY = _known_methods()
KNOWN = sorted(ARITY)
CAMEL = sorted({n.rsplit(".", 1)[0] + "." + camel_case(n.rsplit(".", 1)[1]) for n in KNOWN if "." in n})

method_names = st.one_of(
    st.sampled_from(KNOWN),
    st.sampled_from(KNOWN),
    st.sampled_from(CAMEL),
    st.sampled_from([n.upper() for n in KNOWN] + [n + "." for n in KNOWN] + [n + ".x" for n in KNOWN]
                    + ["usersService", "system", "", ".", "..", "usersService.", ".ping", "usersService.__init__",
                       "usersService.store", "render_POST", "system.multicall.x", "東京.カフェ", "ping\u200b"]),
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=20).map(lambda s: "usersService." + s),
)

# -- scalar values ------------------------------------------------------------------------------

HEX = "0123456789abcdef"
object_ids = st.text(alphabet=HEX, min_size=24, max_size=24)

# The fuzzed daemon's JWT_SECRET, so that tokens with hostile claims can be correctly signed.
JWT_SECRET = secrets.token_urlsafe(48)


def _token(kind: str, **claims: object) -> str:
    now = int(time.time())
    base = {"sub": "0" * 24, "role": "client", "type": kind, "iat": now, "exp": now + 3600, "ver": 0, "jti": "j" * 22}
    return jwt.encode({**base, **claims}, JWT_SECRET, algorithm="HS256")


# Correctly signed tokens whose times are out of range or in the future (issue 18: exp = 10**20 was -32603).
TOKENS = [_token(kind, **claims) for kind in ("access", "refresh") for claims in (
    {}, {"exp": 10**20}, {"exp": 2**63}, {"exp": -1}, {"exp": 1.5}, {"iat": 10**20}, {"iat": -(10**20)},
    {"iat": int(time.time()) + 3600}, {"nbf": 10**20}, {"nbf": int(time.time()) + 3600}, {"nbf": "x"},
)]
PLAUSIBLE = [
    "", " ", "0" * 24, "ffffffffffffffffffffffff", "x", "client", "freelancer", "admin", "pending", "in_progress",
    "completed", "cancelled", "disputed", "refunded", "stripe", "paypal", "week", "month", "year", "all", "order",
    "message", "system", "price_asc", "newest", "relevance", "a@example.com", "Nobody@Example.COM", "password123",
    "19.99", "0.01", "1000000", "1000000.01", "1.005", "1e2", "1_000", "١٢", "１２", "NaN", "-1",
    "2026-01-31", "2026-01-31T12:00:00Z", "0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00",
    "$gt", "$where", "a.b", ".*", "(a+)+$", "https://example.com/x.png", "javascript:alert(1)",
    "Café Zoë 東京", "\u202e", "\ufeff", "x" * 5001, "valid-slug", "UPPER", "eyJhbGciOiJIUzI1NiJ9.e30.x",
    # ids that ``^...$`` took (it matches before a final newline), issue 18
    "6b1126a21daf647fd2dad068\n", "000000000000000000000000\n", "\n6b1126a21daf647fd2dad068",
    "valid-slug\n", "a@example.com\n", "19.99\n", "2026-01-31\n",
    *TOKENS,
]


def _string_xml(text: str) -> bytes:
    return escape(text).encode("utf-8", "surrogatepass")


int_values = st.one_of(
    st.integers(-(2**31), 2**31 - 1),
    st.integers(-(2**70), 2**70),
    st.sampled_from([0, 1, -1, 5, 6, 100, 101, 2**31, -(2**31) - 1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1,
                     10**400, -(10**400)]),
)
# Number texts Python's int() / float() read but XML-RPC does not allow (issue 18), and the forms it does allow.
ODD_INTS = ["١٠٠", "1_000", "１２", "१२", " 5 ", "+5", "-0", "007", "0x10", "", "1.0", "1e3", "\u00a05", "5\u2003"]
ODD_DOUBLES = ["١٠", "1_0", "１.５", "1e-05", "1E+3", ".5", "5.", "+1.5", "1,5", "0x1p3", "\u00a01.5", "1e"]
ints = st.one_of(int_values.map(str), st.sampled_from(ODD_INTS))
doubles = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["nan", "NaN", "inf", "-inf", "1e999", "-0.0", "1_0", " 1 ", "0x10", "", "1e-400", "19.99"]),
    st.sampled_from(ODD_DOUBLES),
)
strings = st.one_of(
    st.sampled_from(PLAUSIBLE).map(_string_xml),
    object_ids.map(_string_xml),
    st.text(max_size=60).map(_string_xml),  # any code point: forbidden characters and surrogates too
    st.text(alphabet=st.characters(codec="utf-8"), max_size=30).map(_string_xml),
    st.binary(max_size=30).map(lambda b: b.replace(b"<", b"").replace(b"&", b"")),  # invalid UTF-8
    st.sampled_from([b"&#1;", b"&#xD800;", b"&#xFFFE;", b"&#0;", b"&#x1F600;", b"&amp;", b"&lt;", b"&bogus;",
                     b"<![CDATA[x]]>", b"<!-- c -->", b"6b1126a21daf647fd2dad068&#10;", b"6b1126a21daf647fd2dad068&#xA;",
                     b"6b1126a21daf647fd2dad068&#13;"]),
)


def scalar(kind: str, body: bytes) -> bytes:
    return b"<value><%s>%s</%s></value>" % (kind.encode(), body, kind.encode())


scalars = st.one_of(
    ints.map(lambda n: scalar("int", _string_xml(n))),
    ints.map(lambda n: scalar("i4", _string_xml(n))),
    ints.map(lambda n: scalar("i8", _string_xml(n))),
    doubles.map(lambda d: scalar("double", _string_xml(d))),
    strings.map(lambda s: scalar("string", s)),
    strings.map(lambda s: b"<value>" + s + b"</value>"),
    st.sampled_from([b"<value><nil/></value>", b"<value><ex:nil xmlns:ex='x'/></value>", b"<value></value>",
                     b"<value><boolean>1</boolean></value>", b"<value><boolean>0</boolean></value>",
                     b"<value><boolean>2</boolean></value>", b"<value><boolean>true</boolean></value>",
                     b"<value><base64>aGVsbG8=</base64></value>", b"<value><base64>!!</base64></value>",
                     b"<value><dateTime.iso8601>20260131T12:00:00</dateTime.iso8601></value>",
                     b"<value><dateTime.iso8601>garbage</dateTime.iso8601></value>",
                     b"<value><bigdecimal>1.5</bigdecimal></value>", b"<value><biginteger>9</biginteger></value>",
                     b"<value><float>1.5</float></value>", b"<value><i1>1</i1></value>",
                     b"<value><unknown>1</unknown></value>", b"<value><string>a</string><string>b</string></value>"]),
)

KEYS = ["title", "description", "category", "price", "deliveryTime", "revisionNumber", "images", "tags",
        "features", "username", "email", "phone", "country", "bio", "skills", "isSeller", "role", "password",
        "rating", "status", "from", "to", "buyer_id", "seller_id", "gig_id", "min_price", "max_price", "min_rating",
        "max_delivery_days", "sort", "search", "user_id", "order_id", "comment", "text", "attachments", "message",
        "link", "idempotency_key", "name", "icon", "isActive", "methodName", "params", "faultCode",
        "$gt", "$set", "$where", "a.b", "_id", "", "東京"]


def _member(name: bytes, value: bytes) -> bytes:
    return b"<member><name>" + name + b"</name>" + value + b"</member>"


def _struct(members: list[tuple[bytes, bytes]]) -> bytes:
    return b"<value><struct>" + b"".join(_member(n, v) for n, v in members) + b"</struct></value>"


member_names = st.one_of(st.sampled_from(KEYS).map(_string_xml), strings)
broken_members = st.sampled_from([
    b"<member><name>a</name></member>", b"<member><value>1</value></member>",
    b"<member><name>a</name><name>b</name><value>1</value></member>", b"<value>1</value>",
    b"<member><value>1</value><name>a</name></member>",
])


def _containers(children: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        st.lists(children, max_size=6).map(lambda vs: b"<value><array><data>" + b"".join(vs) + b"</data></array></value>"),
        st.lists(st.tuples(member_names, children), max_size=6).map(_struct),
        st.tuples(st.lists(st.tuples(member_names, children), max_size=3), broken_members).map(
            lambda t: _struct(t[0])[:-len(b"</struct></value>")] + t[1] + b"</struct></value>"),
    )


values = st.recursive(scalars, _containers, max_leaves=8)


def deep(depth: int, kind: str) -> bytes:
    if kind == "array":
        return b"<value><array><data>" * depth + b"<value><int>1</int></value>" + b"</data></array></value>" * depth
    return (b"<value><struct><member><name>a</name>" * depth + b"<value>1</value>"
            + b"</member></struct></value>" * depth)


# Bodies cheap to send and costly to parse (issue 18): tens of thousands of values or other elements; past
# RPC_MAX_VALUES (10,000 values) they are refused before they are all parsed.
EMPTY_UNITS = [b"<value/>", b"<value></value>", b"<value><nil/></value>", b"<value><int>1</int></value>"]
floods = st.one_of(
    st.tuples(st.integers(9_000, 140_000), st.sampled_from(EMPTY_UNITS)).map(
        lambda t: b"<value><array><data>" + t[1] * t[0] + b"</data></array></value>"),
    st.integers(3_000, 35_000).map(lambda n: b"<value><struct>" + b"<member><name/><value/></member>" * n
                                   + b"</struct></value>"),
    st.integers(9_000, 60_000).map(lambda n: b"<value>" + b"<nil/>" * n + b"</value>"),
)

huge_values = st.one_of(
    floods,
    st.tuples(st.integers(1, 90), st.sampled_from(["array", "struct"])).map(lambda t: deep(*t)),
    st.integers(1000, 300_000).map(lambda n: scalar("string", b"x" * n)),
    st.integers(100, 20_000).map(lambda n: b"<value><array><data>" + b"<value><int>7</int></value>" * n
                                 + b"</data></array></value>"),
)


def call(name: str, params: list[bytes], prolog: bytes = b"<?xml version='1.0'?>") -> bytes:
    return (prolog + b"<methodCall><methodName>" + _string_xml(name) + b"</methodName><params>"
            + b"".join(b"<param>" + p + b"</param>" for p in params) + b"</params></methodCall>")


calls = st.builds(call, method_names, st.lists(values, max_size=5))
huge_calls = st.builds(call, method_names, st.lists(huge_values, min_size=1, max_size=2))


def multicall(subcalls: list[tuple[str, list[bytes]]], broken: list[bytes]) -> bytes:
    entries = [_struct([(b"methodName", scalar("string", _string_xml(name))),
                        (b"params", b"<value><array><data>" + b"".join(ps) + b"</data></array></value>")])
               for name, ps in subcalls]
    return call("system.multicall", [b"<value><array><data>" + b"".join(entries + broken) + b"</data></array></value>"])


multicalls = st.builds(
    multicall,
    st.lists(st.tuples(method_names, st.lists(values, max_size=4)), max_size=8),
    st.lists(st.one_of(scalars, values), max_size=2),
)

# -- raw and mutated bodies ---------------------------------------------------------------------------

raw_bodies = st.one_of(
    st.binary(max_size=400),
    st.sampled_from([b"", b"<", b"<?xml version='1.0'?>", b"<methodCall/>", b"<methodCall></methodCall>",
                     b"<methodCall><methodName/></methodCall>", b"<methodCall><methodName>ping</methodName>",
                     b"<methodCall><methodName>ping</methodName></methodCall>trailing",
                     b"<!DOCTYPE x [<!ENTITY e 'x'>]><methodCall><methodName>&e;</methodName></methodCall>",
                     b"<?xml version='1.0' encoding='utf-16'?><methodCall/>",
                     b"<?xml version='1.0' encoding='bogus'?><methodCall/>",
                     b"\xef\xbb\xbf<methodCall><methodName>ping</methodName></methodCall>",
                     b"<methodResponse><params><param><value>1</value></param></params></methodResponse>"]),
)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    body = bytearray(draw(st.one_of(calls, multicalls)))
    for _ in range(draw(st.integers(1, 4))):
        if not body:
            break
        at = draw(st.integers(0, len(body) - 1))
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "duplicate", "tag"]))
        if op == "flip":
            body[at] = draw(st.integers(0, 255))
        elif op == "insert":
            body[at:at] = draw(st.sampled_from([b"<", b">", b"&", b"</value>", b"<value>", b"<struct>", b"\x00",
                                                b"\xff", b"<int>1</int>", b"<member>", b"]]>"]))
        elif op == "delete":
            del body[at:at + draw(st.integers(1, 20))]
        elif op == "truncate":
            del body[at:]
        elif op == "duplicate":
            end = min(len(body), at + draw(st.integers(1, 200)))
            body[at:at] = body[at:end]
        else:
            body = bytearray(bytes(body).replace(b"string>", draw(st.sampled_from(
                [b"int>", b"double>", b"struct>", b"array>", b"i8>", b"bigdecimal>", b"fault>"])), 1))
    return bytes(body)


# Calls that reach the services: a known name (or its alias), a plausible value per parameter.
plausible = st.one_of(
    st.sampled_from(PLAUSIBLE).map(lambda t: scalar("string", _string_xml(t))),
    object_ids.map(lambda t: scalar("string", _string_xml(t))),
    st.integers(-2, 1002).map(lambda n: scalar("int", str(n).encode())),
    st.sampled_from([b"<value><nil/></value>", b"<value><double>19.99</double></value>",
                     b"<value><double>0.1</double></value>", b"<value><boolean>1</boolean></value>",
                     b"<value><array><data></data></array></value>", b"<value><struct></struct></value>"]),
    st.lists(st.tuples(st.sampled_from(KEYS).map(_string_xml), scalars), max_size=3).map(_struct),
)


@st.composite
def service_calls(draw: st.DrawFn) -> bytes:
    name = draw(st.sampled_from(KNOWN))
    arity = ARITY[name]
    count = draw(st.sampled_from([arity, arity, arity, max(arity - 1, 0), arity + 1]))
    params = draw(st.lists(st.one_of(plausible, plausible, plausible, values), min_size=count, max_size=count))
    if draw(st.booleans()) and "." in name:
        head, _, tail = name.rpartition(".")
        name = head + "." + camel_case(tail)
    return call(name, params)


bodies = st.one_of(service_calls(), service_calls(), service_calls(), service_calls(), calls, calls, multicalls,
                   raw_bodies, mutated(), huge_calls)


# -- cheap variants of a generated body (plain ``random``: many more cases per hypothesis example) -------

INSERTS = [b"<", b">", b"&", b"</value>", b"<value>", b"<struct>", b"</struct>", b"<array><data>", b"\x00", b"\xff",
           b"\xc3", b"<int>99999999999999999999</int>", b"<member>", b"</member>", b"]]>", b"&#1;", b"<nil/>",
           b"<double>nan</double>", b"<name>$gt</name>", b"<bigdecimal>1</bigdecimal>", b"<fault>"]
RETAGS = [(b"string>", b"int>"), (b"string>", b"double>"), (b"int>", b"i8>"), (b"int>", b"boolean>"),
          (b"value>", b"fault>"), (b"struct>", b"array>"), (b"name>", b"value>"), (b"params>", b"param>"),
          (b"methodName>", b"name>"), (b"<data>", b""), (b"</member>", b"")]


_STRING = re.compile(rb"<string>[^<]*</string>")
_INT = re.compile(rb"<int>[^<]*</int>")
SWAP_STRINGS = [_string_xml(t) for t in PLAUSIBLE]
SWAP_INTS = [b"0", b"1", b"5", b"20", b"100", b"101", b"-1", b"2147483648", b"9223372036854775808", b"9" * 400,
             *(_string_xml(n) for n in ODD_INTS)]


def _swap_value(body: bytes, rng: random.Random) -> bytes:
    """Another plausible value in one ``<string>`` or ``<int>`` (the body stays well-formed)."""
    pattern, choices, tag = (_STRING, SWAP_STRINGS, b"string") if rng.random() < 0.7 else (_INT, SWAP_INTS, b"int")
    found = list(pattern.finditer(body))
    if not found:
        return body
    hit = rng.choice(found)
    new = rng.choice(choices) if rng.random() < 0.8 else "".join(rng.choices(HEX, k=24)).encode()
    if tag == b"string" and len(new) == 24 and rng.random() < 0.2:
        new += rng.choice([b"\n", b"&#10;", b"&#13;"])  # an id with a trailing newline was -32603 (issue 18)
    return body[:hit.start()] + b"<%s>%s</%s>" % (tag, new, tag) + body[hit.end():]


def variant(body: bytes, rng: random.Random) -> bytes:
    """``body`` with one to four random changes: mostly another plausible value, else bytes or tags."""
    if rng.random() < 0.6:
        for _ in range(rng.randint(1, 3)):
            body = _swap_value(body, rng)
        return body
    out = bytearray(body)
    for _ in range(rng.randint(1, 4)):
        if not out:
            return bytes(out)
        at = rng.randrange(len(out))
        op = rng.randrange(7)
        if op == 0:
            out[at] = rng.randrange(256)
        elif op == 1:
            out[at:at] = rng.choice(INSERTS)
        elif op == 2:
            del out[at:at + rng.randint(1, 24)]
        elif op == 3:
            del out[at:]
        elif op == 4:
            end = min(len(out), at + rng.randint(1, 300))
            out[at:at] = out[at:end]
        else:
            old, new = rng.choice(RETAGS)
            out = bytearray(bytes(out).replace(old, new, rng.randint(1, 3)))
    return bytes(out)
