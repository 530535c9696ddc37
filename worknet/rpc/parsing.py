"""Safe parsing of XML-RPC requests.

The standard library's ``xmlrpc.client.loads`` expands internal entities, so a
"billion laughs" body can eat the machine's memory.  This parser drives the
same :class:`xmlrpc.client.Unmarshaller` from an expat parser that refuses any
document type declaration (hence any entity definition, internal or external)
and any ``<value>`` nesting deeper than :data:`MAX_DEPTH`.

It also holds the document to the XML-RPC spec where the unmarshaller is
lenient: only the spec's elements (plus ``<nil>`` and ``<i8>``), each struct
member exactly one ``<name>`` and one value, integers within 64 bits written
as the spec writes them (ASCII digits with an optional sign: Python's ``int()``
would also take ``1_000`` or Arabic-Indic digits) and finite doubles written
likewise (a decimal point and an exponent allowed: Python's own client writes
``1e-05``).  Surrounding XML blanks are ignored.

The work one body can cost is bounded: at most ``max_values`` ``<value>``
elements (``RPC_MAX_VALUES``) and at most :data:`ELEMENTS_PER_VALUE` elements
of any kind per value allowed; the parser stops at the first element past
either limit, so a body of a hundred thousand empty values costs no more than
the limit.  Every refusal is one of three exceptions, which the resource turns
into faults -32700, -32600 and -32602.
"""

from __future__ import annotations

import math
import re
from typing import Any
from xml.parsers import expat
from xmlrpc.client import ResponseError, Unmarshaller

MAX_DEPTH = 64
MAX_ELEMENT_DEPTH = 8 + 4 * MAX_DEPTH
INT64 = 2**63

# The elements of a methodCall (namespace prefixes such as ``ex:`` are dropped first, as the
# unmarshaller does).  Anything else -- <fault>, <bigdecimal>, <bigint>, <float>, ... -- is refused.
ELEMENTS = frozenset({
    "methodCall", "methodName", "params", "param", "value", "nil", "boolean", "int", "i4", "i8",
    "double", "string", "base64", "dateTime.iso8601", "array", "data", "struct", "member", "name",
})
_INTEGERS = frozenset({"int", "i4", "i8"})
_BLANK = "[ \t\r\n]*"  # XML's white space, and only it (int() and float() also strip Unicode spaces)
_INTEGER_TEXT = re.compile(_BLANK + r"[+-]?[0-9]+" + _BLANK)
_DOUBLE_TEXT = re.compile(_BLANK + r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?" + _BLANK)

MAX_VALUES = 10_000  # the default of RPC_MAX_VALUES
# Elements of any kind per allowed value: a value, its type, an array's <data>, a struct member's <member> and
# <name> (a top-level value's <param> instead), so no call within MAX_VALUES values reaches this bound.
ELEMENTS_PER_VALUE = 5
_ENVELOPE = 3  # <methodCall>, <methodName>, <params>


class NotWellFormed(ValueError):
    """-32700: the body is not well-formed (or not acceptable) XML."""


class NotAnXmlRpcCall(ValueError):
    """-32600: well-formed XML but not an XML-RPC ``methodCall``."""


class BadValue(ValueError):
    """-32602: a well-formed call with a value no method accepts (an integer beyond 64 bits, NaN)."""


class _Refused(Exception):
    pass


class _Invalid(Exception):
    pass


class _BadValue(Exception):
    pass


class _SafeParser:
    def __init__(self, max_values: int) -> None:
        self.max_values = max_values
        self.values_left = max_values
        self.elements_left = ELEMENTS_PER_VALUE * max_values + _ENVELOPE
        self.target = Unmarshaller(use_datetime=False, use_builtin_types=False)
        self.target._encoding = None  # type: ignore[assignment]  # expat hands out str: nothing to decode
        self.value_depth = 0
        self.depth = 0
        self.root: str | None = None
        self.members: list[list] = []  # per open <member>: [stack height at its start, name seen]
        parser = expat.ParserCreate(None, None)
        parser.buffer_text = True
        parser.StartDoctypeDeclHandler = self._doctype
        parser.EntityDeclHandler = self._entity
        parser.ExternalEntityRefHandler = self._external
        parser.StartElementHandler = self._start
        parser.EndElementHandler = self._end
        parser.CharacterDataHandler = self.target.data
        self.parser = parser

    def _doctype(self, *args: Any) -> None:
        raise _Refused("document type declarations are not allowed")

    def _entity(self, *args: Any) -> None:
        raise _Refused("entity declarations are not allowed")

    def _external(self, *args: Any) -> int:
        raise _Refused("external entities are not allowed")

    def _start(self, tag: str, attrs: dict) -> None:
        if self.root is None:
            self.root = tag
        self.depth += 1
        self.elements_left -= 1
        local = tag.rpartition(":")[2] if ":" in tag else tag
        if local == "value":
            self.value_depth += 1
            self.values_left -= 1
            if self.values_left < 0:
                raise _Invalid(f"a request holds at most {self.max_values} values (RPC_MAX_VALUES)")
        if self.elements_left < 0:
            raise _Invalid(f"too many elements for at most {self.max_values} values (RPC_MAX_VALUES)")
        if self.value_depth > MAX_DEPTH or self.depth > MAX_ELEMENT_DEPTH:
            raise _Refused(f"values are nested deeper than {MAX_DEPTH} levels")
        if local not in ELEMENTS:
            raise _Invalid(f"<{tag[:40]}> has no place in a methodCall")
        if local == "member":
            self.members.append([len(self.target._stack), False])
        self.target.start(tag, attrs)

    def _end(self, tag: str) -> None:
        self.depth -= 1
        local = tag.rpartition(":")[2] if ":" in tag else tag
        if local == "value":  # the most common element first
            self.value_depth -= 1
            self.target.end(tag)
            return
        target = self.target
        stack: list[Any] = target._stack
        if local in _INTEGERS:
            if not _INTEGER_TEXT.fullmatch("".join(target._data)):
                raise _BadValue("an integer must be ASCII digits with an optional sign")
            target.end(tag)
            if not -INT64 <= stack[-1] < INT64:
                raise _BadValue("an integer beyond 64 bits")
        elif local == "double":
            if not _DOUBLE_TEXT.fullmatch("".join(target._data)):
                raise _BadValue("a double must be ASCII digits with an optional sign, a '.' and an exponent")
            target.end(tag)
            if not math.isfinite(stack[-1]):
                raise _BadValue("a double that is not a finite number")
        elif local == "name":
            target.end(tag)
            member = self.members[-1] if self.members else None
            if member is None or member[1] or len(stack) != member[0] + 1:
                raise _Invalid("a <name> outside a struct member")
            member[1] = True
        elif local == "member":
            target.end(tag)
            start, named = self.members.pop()
            if not named or len(stack) != start + 2:
                raise _Invalid("a struct member needs one <name> and one <value>")
        else:
            target.end(tag)


def parse_call(body: bytes, max_values: int = MAX_VALUES) -> tuple[str, tuple]:
    """Return ``(method_name, params)`` or raise NotWellFormed / NotAnXmlRpcCall / BadValue."""
    p = _SafeParser(max_values)
    try:
        p.parser.Parse(body, True)
    except _Refused as e:
        raise NotWellFormed(f"parse error: {e}") from None
    except expat.ExpatError as e:
        raise NotWellFormed(f"parse error: not well-formed XML ({expat.ErrorString(e.code)})") from None
    except _Invalid as e:
        raise NotAnXmlRpcCall(f"invalid XML-RPC: {e}") from None
    except _BadValue as e:
        raise BadValue(f"invalid params: {e}") from None
    except Exception:  # noqa: BLE001 - the unmarshaller refused a value (bad int, bad boolean, bad base64, ...)
        raise NotAnXmlRpcCall("invalid XML-RPC: a value could not be read") from None
    if p.root != "methodCall":
        raise NotAnXmlRpcCall("invalid XML-RPC: the document is not a methodCall")
    method = p.target.getmethodname()
    if not isinstance(method, str) or not method:
        raise NotAnXmlRpcCall("invalid XML-RPC: no methodName")
    if p.target._type is None and not p.target._marks and not p.target._stack:
        return method, ()  # a call without <params> has no parameters
    try:
        params = p.target.close()
    except ResponseError:
        raise NotAnXmlRpcCall("invalid XML-RPC: the call is incomplete") from None
    return method, tuple(params)
