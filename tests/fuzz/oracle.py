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
