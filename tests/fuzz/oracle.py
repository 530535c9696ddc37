"""The fuzzer's oracle: what every answer of the daemon must look like, whatever it was sent."""

from __future__ import annotations

import re
import xmlrpc.client
from typing import Any

ALLOWED_FAULTS = frozenset({-32700, -32600, -32601, -32602})
CODES = frozenset({"VALIDATION_ERROR", "NOT_FOUND", "CONFLICT", "INVALID_STATE", "UNAUTHORIZED", "FORBIDDEN",
                   "RATE_LIMITED", "UNAVAILABLE"})
# What must never reach a caller or the log: tracebacks, Python internals, database error texts.
LEAKS = re.compile(
    r"Traceback|File \"|\.py\b|\b[A-Z][a-z]\w*(?:Error|Exception|Failure)\b|pymongo|txmongo|bson\.|"
    r"E11000|errmsg|[Ss]ecantus|WiredTiger|site-packages|/work/|/tmp/|/home/"
)
LOG_PROBLEMS = re.compile(r"#critical\]|#error\]|Traceback|Unhandled error")

# Numbers as XML-RPC writes them (ASCII digits, optional sign; doubles also a point and an exponent), XML blanks
# around; and the values one request may hold (RPC_MAX_VALUES' default).
_NUMBER = re.compile(rb"<(?:[^\s<>/:]+:)?(int|i4|i8|double)>([^<]*)</")
_BLANK = "[ \t\r\n]*"
_SPEC = {
    b"int": re.compile(_BLANK + r"[+-]?[0-9]+" + _BLANK),
    b"double": re.compile(_BLANK + r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?" + _BLANK),
}
_SPEC[b"i4"] = _SPEC[b"i8"] = _SPEC[b"int"]
_CHAR_REF = re.compile(r"&#(x[0-9a-fA-F]+|[0-9]+);")
_VALUE_TAG = re.compile(rb"<(?:[^\s<>/:]+:)?value[\s/>]")
MAX_VALUES = 10_000


class Bad(AssertionError):
    """An answer the oracle refuses (the message says why)."""


def _walk_strings(value: Any):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield key
            yield from _walk_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _walk_strings(item)


def check_envelope(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not isinstance(value.get("success"), bool):
        raise Bad(f"{where}: a service method answered without a success envelope: {str(value)[:200]}")
    if value["success"] is False:
        if value.get("code") not in CODES:
            raise Bad(f"{where}: unknown error code {value.get('code')!r}")
        if not isinstance(value.get("error"), str) or not value["error"]:
            raise Bad(f"{where}: an error envelope without a message")


def check_value(value: Any, method: str | None, where: str) -> None:
    """``method``: the name the call used, when the request parsed (None: unknown)."""
    if method is None:
        return
    if method == "system.multicall":
        if not isinstance(value, list):
            raise Bad(f"{where}: system.multicall answered a {type(value).__name__}")
        for i, item in enumerate(value):
            if isinstance(item, dict):
                if item.get("faultCode") not in ALLOWED_FAULTS:
                    raise Bad(f"{where}[{i}]: sub-call fault {item.get('faultCode')}: {item.get('faultString')!r}")
            elif not (isinstance(item, list) and len(item) == 1):
                raise Bad(f"{where}[{i}]: a sub-call result is not a one-element array")
        return
    service = method.split(".", 1)[0]
    if "." in method and service not in ("system",):
        check_envelope(value, where)


def judge(status: int, payload: bytes, method: str | None) -> None:
    """Raise :class:`Bad` unless the answer is allowed."""
    if status >= 500:
        raise Bad(f"HTTP {status}: {payload[:200]!r}")
    text = payload.decode("utf-8", errors="replace")
    if 400 <= status < 500:
        if LEAKS.search(text):
            raise Bad(f"HTTP {status} leaks: {text[:200]!r}")
        return
    if status != 200:
        raise Bad(f"HTTP {status}")
    try:
        params, _ = xmlrpc.client.loads(payload)
    except xmlrpc.client.Fault as fault:
        if fault.faultCode not in ALLOWED_FAULTS:
            raise Bad(f"fault {fault.faultCode}: {fault.faultString!r}") from None
        if LEAKS.search(fault.faultString):
            raise Bad(f"fault text leaks: {fault.faultString!r}") from None
        return
    except Exception as e:
        raise Bad(f"not a well-formed XML-RPC response ({type(e).__name__}: {e}): {payload[:200]!r}") from None
    if len(params) != 1:
        raise Bad(f"a response with {len(params)} values")
    check_value(params[0], method, "answer")
    for s in _walk_strings(params[0]):
        if LEAKS.search(s) and not _echo(s):
            raise Bad(f"the answer leaks: {s[:200]!r}")


def _echo(s: str) -> bool:
    """Help texts and method names are the daemon's own words (they may say "error")."""
    return len(s) > 40 and s[0].isupper() and "Traceback" not in s and 'File "' not in s


def _xml_text(raw: bytes) -> str | None:
    """The character data of ``raw`` (character references and the five entities resolved), None if unreadable."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None

    def char(m: re.Match) -> str:
        code = int(m.group(1)[1:], 16) if m.group(1)[0] == "x" else int(m.group(1))
        return chr(code) if code <= 0x10FFFF else "\ufffd"

    text = _CHAR_REF.sub(char, text)
    for entity, character in (("&lt;", "<"), ("&gt;", ">"), ("&quot;", '"'), ("&apos;", "'"), ("&amp;", "&")):
        text = text.replace(entity, character)
    return text


def must_fail(body: bytes) -> str | None:
    """Why ``body`` must not be answered with a result, judged from its bytes alone (None: no reason known).

    A number XML-RPC does not allow anywhere in the call, or more than MAX_VALUES values.  Bodies with a
    comment or CDATA section are not judged (their text may look like markup).
    """
    if b"<!--" in body or b"<![CDATA[" in body:
        return None
    for m in _NUMBER.finditer(body):
        text = _xml_text(m.group(2))
        if text is not None and not _SPEC[m.group(1)].fullmatch(text):
            return f"<{m.group(1).decode()}>{text[:40]!r} is not an XML-RPC number"
    values = len(_VALUE_TAG.findall(body))
    if values > MAX_VALUES:
        return f"{values} values (more than {MAX_VALUES})"
    return None


def refused(status: int, payload: bytes) -> bool:
    """True when the answer is an HTTP error or a fault (not a result)."""
    return status != 200 or b"<fault>" in payload[:200]
