"""Safe parsing of XML-RPC requests.

The standard library's ``xmlrpc.client.loads`` expands internal entities, so a
"billion laughs" body can eat the machine's memory.  This parser drives the
same :class:`xmlrpc.client.Unmarshaller` from an expat parser that refuses any
document type declaration (hence any entity definition, internal or external)
and any ``<value>`` nesting deeper than :data:`MAX_DEPTH`.
"""

from __future__ import annotations

from typing import Any
from xml.parsers import expat
from xmlrpc.client import ResponseError, Unmarshaller

MAX_DEPTH = 64
MAX_ELEMENT_DEPTH = 8 + 4 * MAX_DEPTH


class NotWellFormed(ValueError):
    """-32700: the body is not well-formed (or not acceptable) XML."""


class NotAnXmlRpcCall(ValueError):
    """-32600: well-formed XML but not an XML-RPC ``methodCall``."""


class _Refused(Exception):
    pass


class _SafeParser:
    def __init__(self) -> None:
        self.target = Unmarshaller(use_datetime=False, use_builtin_types=False)
        self.target._encoding = None  # type: ignore[assignment]  # expat hands out str: nothing to decode
        self.value_depth = 0
        self.depth = 0
        self.root: str | None = None
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
        if tag == "value":
            self.value_depth += 1
        if self.value_depth > MAX_DEPTH or self.depth > MAX_ELEMENT_DEPTH:
            raise _Refused(f"values are nested deeper than {MAX_DEPTH} levels")
        self.target.start(tag, attrs)

    def _end(self, tag: str) -> None:
        self.depth -= 1
        if tag == "value":
            self.value_depth -= 1
        self.target.end(tag)


def parse_call(body: bytes) -> tuple[str, tuple]:
    """Return ``(method_name, params)`` or raise NotWellFormed / NotAnXmlRpcCall."""
    p = _SafeParser()
    try:
        p.parser.Parse(body, True)
    except _Refused as e:
        raise NotWellFormed(f"parse error: {e}") from None
    except expat.ExpatError as e:
        raise NotWellFormed(f"parse error: not well-formed XML ({expat.ErrorString(e.code)})") from None
    except (ValueError, TypeError, ResponseError, OverflowError):
        # The unmarshaller refused a value (bad int, bad double, ...).
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
