"""Conversion of stored values to XML-RPC values.

Documents leave with ``id`` (a string) instead of ``_id``; ObjectIds become
strings, dates ISO-8601 UTC strings with milliseconds and ``Z``, Decimal128
money a double with two decimals.  Internal fields (password hashes, login
counters, token versions, search keys) never leave the server.

Values written by others (the Node backend shares the collections) are
converted where the wire can carry them: a ``NumberLong`` is an int (a double
beyond 32 bits), binary data base64; characters XML 1.0 forbids get U+FFFD in
their place when the response is encoded (:func:`encode_response`, one scan
of the whole document rather than one per string).  A value that cannot be carried (a NaN or infinite
number, a regex, ...) raises :class:`Unmarshallable`: the call then answers
fault -32603 with a reference id, never nothing.
"""

from __future__ import annotations

import math
import re
import uuid
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any
from xmlrpc.client import Binary, DateTime, Fault, Marshaller, dumps

from bson import Decimal128, ObjectId, Timestamp

from worknet.validators import CENT

INT32_MAX = 2**31 - 1
# Characters XML 1.0 cannot carry (lone surrogates cannot even be encoded as UTF-8).
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


class Unmarshallable(ValueError):
    """A stored value the XML-RPC wire cannot carry (its type name only, never the value)."""

# Fields that exist for the server's own use and are never returned.
HIDDEN_FIELDS = frozenset({
    "passwordHash", "password", "tokenVersion", "loginFailures", "lockedUntil",
    "usernameLower", "nameLower", "searchTerms", "idempotencyKey", "requestHash",
    "pairKey", "liveOrderId", "ledgerApplied", "ratingSeq", "ratingTicket", "ratingLog", "moneySeq",
    "refreshJti",
    "deletedAt_",
})


def iso(moment: datetime) -> str:
    """``2026-11-25T11:39:29.123Z``; naive datetimes (as BSON returns them) are UTC."""
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def money(value: Decimal | Decimal128) -> float:
    """Money for the wire: a double with two decimals (conversion only, never arithmetic)."""
    if isinstance(value, Decimal128):
        value = value.to_decimal()
    if not value.is_finite():
        raise Unmarshallable("a decimal that is not a finite number")
    try:
        return float(value.quantize(CENT))
    except InvalidOperation:  # more than 28 significant digits
        raise Unmarshallable("a decimal too large for money") from None


def encode_response(result: Any) -> bytes:
    """The methodResponse document of a result (already :func:`to_wire`'d) or of an ``xmlrpc.Fault``."""
    payload = result if isinstance(result, Fault) else (result,)
    document = dumps(payload, methodresponse=True, allow_none=True, encoding="utf-8")
    if _NOT_XML.search(document):  # only string values can hold them: the markup is ours
        document = _NOT_XML.sub("\ufffd", document)
    return document.encode("utf-8")


# A methodResponse whose one value is an array, around its members (what ``dumps`` writes).
ARRAY_HEAD = b"<?xml version='1.0'?>\n<methodResponse>\n<params>\n<param>\n<value><array><data>\n"
ARRAY_TAIL = b"</data></array></value>\n</param>\n</params>\n</methodResponse>\n"
_PARAM_HEAD, _PARAM_TAIL = "<params>\n<param>\n", "</param>\n</params>\n"


def encode_value(value: Any) -> bytes:
    """One ``<value>`` element, as :func:`encode_response` writes it inside its document."""
    text = Marshaller("utf-8", allow_none=True).dumps((value,))[len(_PARAM_HEAD):-len(_PARAM_TAIL)]
    if _NOT_XML.search(text):
        text = _NOT_XML.sub("\ufffd", text)
    return text.encode("utf-8")


class EncodedArray:
    """An answer whose value is an array, encoded member by member as the members come
    (``system.multicall``): its size is known at every step, and it is written in pieces."""

    def __init__(self) -> None:
        self.parts: list[bytes] = [ARRAY_HEAD]
        self.size = len(ARRAY_HEAD) + len(ARRAY_TAIL)  # the whole document's, once finished

    def __len__(self) -> int:
        return len(self.parts) - 1

    def append(self, member: bytes) -> None:
        self.parts.append(member)
        self.size += len(member)

    def pieces(self) -> list[bytes]:
        """The whole document, in pieces (``b"".join`` of them is what ``encode_response`` writes)."""
        return [*self.parts, ARRAY_TAIL]


_AS_IS = frozenset({str, bool, type(None)})  # floats: checked below (NaN, infinity)


def to_wire(value: Any) -> Any:
    kind = type(value)
    if kind in _AS_IS:  # the most common types first, by exact type; subclasses below
        return value
    if kind is dict or isinstance(value, dict):
        return {
            ("id" if key == "_id" else key if isinstance(key, str) else str(key)): to_wire(item)
            for key, item in value.items()
            if key not in HIDDEN_FIELDS
        }
    if kind is float:
        if math.isfinite(value):
            return value
        raise Unmarshallable("a double that is not a finite number")
    if isinstance(value, (list, tuple)):
        return [to_wire(item) for item in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):  # bson.Int64 (a NumberLong) too: a plain int or a double
        if -INT32_MAX - 1 <= value <= INT32_MAX:
            return int(value)
        return float(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        raise Unmarshallable("a double that is not a finite number")
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, (Decimal128, Decimal)):
        return money(value)
    if isinstance(value, (bytes, bytearray)):  # bson.Binary too
        return Binary(bytes(value))
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, Timestamp):
        return iso(value.as_datetime())
    if isinstance(value, (Binary, DateTime)):
        return value
    raise Unmarshallable(f"a {type(value).__name__} value")
