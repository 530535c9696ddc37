"""Conversion of stored values to XML-RPC values.

Documents leave with ``id`` (a string) instead of ``_id``; ObjectIds become
strings, dates ISO-8601 UTC strings with milliseconds and ``Z``, Decimal128
money a double with two decimals.  Internal fields (password hashes, login
counters, token versions, search keys) never leave the server.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from bson import Decimal128, ObjectId

from worknet.validators import CENT

INT32_MAX = 2**31 - 1

# Fields that exist for the server's own use and are never returned.
HIDDEN_FIELDS = frozenset({
    "passwordHash", "password", "tokenVersion", "loginFailures", "lockedUntil",
    "usernameLower", "nameLower", "searchTerms", "idempotencyKey", "requestHash",
    "pairKey", "liveOrderId", "ledgerApplied", "ratingSeq",
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
    return float(value.quantize(CENT))


_AS_IS = frozenset({str, float, bool, type(None)})


def to_wire(value: Any) -> Any:
    if type(value) in _AS_IS:  # the most common leaves first, one set lookup
        return value
    if isinstance(value, dict):
        return {
            ("id" if key == "_id" else key): to_wire(item)
            for key, item in value.items()
            if key not in HIDDEN_FIELDS
        }
    if isinstance(value, (list, tuple)):
        return [to_wire(item) for item in value]
    if isinstance(value, bool) or value is None or isinstance(value, (str, float)):
        return value
    if isinstance(value, int):
        return value if -INT32_MAX - 1 <= value <= INT32_MAX else float(value)
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, (Decimal128, Decimal)):
        return money(value)
    return value
