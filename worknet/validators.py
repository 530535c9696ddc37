"""Input validation: every argument a caller sends goes through one of these.

Each validator takes the raw XML-RPC value and the argument's name (used as
the ``field`` of the error) and returns the clean value or raises
:class:`~worknet.errors.ValidationError`.  Structs are whitelisted key by key
(:func:`struct`), so no ``$`` operator and no unknown key ever reaches a
database query.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar
from urllib.parse import urlsplit

from bson import ObjectId

from worknet.errors import ValidationError

T = TypeVar("T")
Validator = Callable[[Any, str], Any]

CENT = Decimal("0.01")
MAX_AMOUNT = Decimal("1000000")
MAX_PAGE_LIMIT = 100
DEFAULT_PAGE_LIMIT = 20

# Patterns are applied with ``fullmatch`` (never ``match`` with ``$``, which also matches before a final
# newline: "6b1126a21daf647fd2dad068\n" would pass as an id and then crash ``ObjectId``).
_HEX24 = re.compile(r"[0-9a-fA-F]{24}")
_FORBIDDEN_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
_EMAIL = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)+")
_SLUG = re.compile(r"[a-z0-9]+(-[a-z0-9]+)*")
_AMOUNT = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_DATE_ONLY = re.compile(r"[0-9]{4}-?[0-9]{2}-?[0-9]{2}")
LAST_MILLISECOND = timedelta(days=1, milliseconds=-1)


def object_id(value: Any, field: str) -> ObjectId:
    """A 24-hex id string; anything else is a validation error."""
    if isinstance(value, str) and _HEX24.fullmatch(value):
        return ObjectId(value)
    raise ValidationError(field, f"{field} must be a 24-character hexadecimal id")


def client_id(value: Any, field: str) -> ObjectId | None:
    """A client-chosen id: an id string, or ``""`` for "let the server choose"."""
    if value == "" or value is None:
        return None
    return object_id(value, field)


def text(
    value: Any,
    field: str,
    min_len: int = 0,
    max_len: int = 10_000,
    *,
    strip: bool = True,
    pattern: re.Pattern[str] | None = None,
    pattern_hint: str = "",
) -> str:
    """A string of ``min_len``..``max_len`` characters with no forbidden control characters."""
    if not isinstance(value, str):
        raise ValidationError(field, f"{field} must be a string")
    if strip:
        value = value.strip()
    if _FORBIDDEN_CHARS.search(value):
        raise ValidationError(field, f"{field} contains control characters")
    if len(value) < min_len:
        if min_len == 1:
            raise ValidationError(field, f"{field} must not be empty")
        raise ValidationError(field, f"{field} must be at least {min_len} characters")
    if len(value) > max_len:
        raise ValidationError(field, f"{field} must be at most {max_len} characters")
    if pattern is not None and not pattern.fullmatch(value):
        raise ValidationError(field, f"{field} {pattern_hint or 'has an invalid format'}")
    return value


def integer(value: Any, field: str, low: int, high: int) -> int:
    """A whole number in ``low..high`` (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError(field, f"{field} must be a whole number")
    if not low <= value <= high:
        raise ValidationError(field, f"{field} must be between {low} and {high}")
    return value


def boolean(value: Any, field: str) -> bool:
    if not isinstance(value, bool):
        raise ValidationError(field, f"{field} must be a boolean")
    return value


def choice(value: Any, field: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValidationError(field, f"{field} must be one of: {', '.join(choices)}")
    return value


_ZERO = Decimal(0)


def money(value: Any, field: str) -> Decimal:
    """An amount: int, double or decimal string, at most 2 decimals, 0 < x <= 1,000,000.

    A string is ASCII digits with an optional ``.`` (no sign, exponent, ``_`` or
    non-ASCII digits; surrounding ASCII blanks are ignored).  Doubles are read through
    their shortest repr (``19.99`` is ``Decimal('19.99')``, not the binary
    expansion), so no float arithmetic ever touches money.
    """
    if isinstance(value, bool):
        raise ValidationError(field, f"{field} must be an amount")
    if isinstance(value, int):
        amount = Decimal(value)
    elif isinstance(value, float):
        amount = Decimal(repr(value))
    elif isinstance(value, str):
        raw = value.strip(" \t\r\n")
        if not _AMOUNT.fullmatch(raw):
            raise ValidationError(field, f"{field} must be an amount (digits with an optional '.')")
        amount = Decimal(raw)
    else:
        raise ValidationError(field, f"{field} must be an amount")
    if not amount.is_finite():
        raise ValidationError(field, f"{field} must be a finite amount")
    # the range first: quantizing a number of more than 28 significant digits is an error
    if not _ZERO < amount <= MAX_AMOUNT:
        raise ValidationError(field, f"{field} must be greater than 0 and at most 1000000")
    cents_only = amount.quantize(CENT)
    if cents_only != amount:  # 1.005 is refused, 1.000 is 1.00
        raise ValidationError(field, f"{field} must have at most 2 decimals")
    return cents_only


def cents(amount: Decimal) -> Decimal:
    """Round to the cent, half up (the only rounding money ever gets)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def email(value: Any, field: str = "email") -> str:
    address = text(value, field, 3, 254).lower()
    if not _EMAIL.fullmatch(address):
        raise ValidationError(field, f"{field} is not a valid email address")
    return address


def url(value: Any, field: str) -> str:
    link = text(value, field, 1, 2048)
    parts = urlsplit(link)
    if parts.scheme not in ("http", "https") or not parts.netloc or " " in link:
        raise ValidationError(field, f"{field} must be an http(s) URL")
    return link


def slug(value: Any, field: str = "slug") -> str:
    return text(value, field, 1, 60, pattern=_SLUG, pattern_hint="must be lower-case words of a-z and 0-9 joined by single hyphens")


def iso_datetime(value: Any, field: str) -> datetime:
    """An ISO-8601 date or date-time (XML-RPC dateTime.iso8601 accepted too); naive means UTC.

    A date-only value is the start of that day (UTC), except for a ``to`` bound,
    where it is the day's last millisecond: a range ``from``..``to`` of dates
    includes both days whole.  A moment outside years 1..9999 once in UTC is a
    validation error.
    """
    if hasattr(value, "value") and isinstance(value.value, str):  # xmlrpc.client.DateTime
        value = value.value
    if not isinstance(value, str):
        raise ValidationError(field, f"{field} must be an ISO-8601 date")
    raw = value.strip()
    if raw.endswith("Z"):
        raw = raw[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        try:
            moment = datetime.strptime(raw, "%Y%m%dT%H:%M:%S")
        except ValueError:
            raise ValidationError(field, f"{field} must be an ISO-8601 date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        moment = moment.astimezone(UTC)
        if field == "to" and _DATE_ONLY.fullmatch(raw):
            moment += LAST_MILLISECOND
    except OverflowError:
        raise ValidationError(field, f"{field} must be a date between the years 1 and 9999 (UTC)") from None
    return moment


def string_list(value: Any, field: str, max_items: int, item: Validator) -> list:
    if not isinstance(value, list):
        raise ValidationError(field, f"{field} must be an array")
    if len(value) > max_items:
        raise ValidationError(field, f"{field} must have at most {max_items} items")
    return [item(v, f"{field}[{i}]") for i, v in enumerate(value)]


def struct(value: Any, field: str, spec: Mapping[str, Validator], *, allow_empty: bool = True) -> dict:
    """A struct whose keys are all in ``spec``; each value cleaned by its validator.

    ``None`` (nil) is an empty struct.  Keys starting with ``$``, dotted keys and
    unknown keys are refused: no operator injection, no mass assignment.
    """
    if value is None or value == "":
        value = {}
    if not isinstance(value, dict):
        raise ValidationError(field, f"{field} must be a struct")
    clean = {}
    for key, raw in value.items():
        if not isinstance(key, str) or key.startswith("$") or "." in key:
            raise ValidationError(field, f"{field} has a forbidden key")
        if key not in spec:
            allowed = ", ".join(sorted(spec)) or "none"
            raise ValidationError(f"{field}.{key}", f"{field}.{key} is not allowed (allowed: {allowed})")
        clean[key] = spec[key](raw, key)
    if not clean and not allow_empty:
        raise ValidationError(field, f"{field} must name at least one field")
    return clean


def paging(page: Any, limit: Any) -> tuple[int, int]:
    """``page`` >= 1 (default 1), ``limit`` 1..100 (default 20); nil means default."""
    page = 1 if page is None else integer(page, "page", 1, 1_000_000)
    limit = DEFAULT_PAGE_LIMIT if limit is None else integer(limit, "limit", 1, MAX_PAGE_LIMIT)
    return page, limit


def escape_prefix(value: str) -> str:
    """A regex that matches ``value`` literally at the start of a string."""
    return "^" + re.escape(value)
