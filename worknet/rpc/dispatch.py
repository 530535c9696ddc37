"""Calling a method: names, arity, the result envelope, faults, metrics and the log line.

This is the one place where domain errors become
``{"success": false, "error": ..., "code": ...}``, where database outages
become ``UNAVAILABLE``, and where anything unexpected becomes fault -32603
with a short reference id that is also in the log (with the traceback).
"""

from __future__ import annotations

import contextvars
import functools
import inspect
import re
import secrets
import time
from collections.abc import Callable
from typing import Any

from pymongo.errors import AutoReconnect, ConnectionFailure, ExecutionTimeout, NetworkTimeout
from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.python.failure import Failure
from twisted.web import xmlrpc
from txmongo.errors import TimeExceeded

from worknet.errors import DomainError, Unavailable
from worknet.logs import logger
from worknet.rpc.metrics import Metrics
from worknet.rpc.wire import to_wire

log = logger("worknet.rpc")

NOT_WELL_FORMED = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")

# The network address (host) of the client whose call is running; "" when unknown.
_CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("worknet_caller", default="")


def caller_address() -> str:
    """The address of the client of the current call (for per-client rules such as login lockouts)."""
    return _CALLER.get()

DATABASE_DOWN = (
    AutoReconnect, ConnectionFailure, NetworkTimeout, ExecutionTimeout, TimeExceeded,
    net_error.ConnectionLost, net_error.ConnectionDone, net_error.ConnectionRefusedError,
    defer.CancelledError, defer.TimeoutError,
)


def snake_case(name: str) -> str:
    """``getById`` -> ``get_by_id``."""
    return _CAMEL.sub("_", name).lower()


def camel_case(name: str) -> str:
    """``get_by_id`` -> ``getById``."""
    head, *rest = name.split("_")
    return head + "".join(word.capitalize() for word in rest)


class ServiceResource(xmlrpc.XMLRPC):
    """Base of every ``<service>`` handler: snake_case methods, camelCase aliases.

    Subclasses define ``async def xmlrpc_<snake_name>(...)`` methods whose
    docstrings are their ``system.methodHelp`` text and whose ``signature``
    attribute (set with :func:`signature`) feeds ``system.methodSignature``.
    """

    def __init__(self, store: Any, settings: Any) -> None:
        super().__init__(allowNone=True, useDateTime=False)
        self.store = store
        self.settings = settings

    def lookupProcedure(self, procedurePath: str) -> Callable:
        if self.separator not in procedurePath:
            procedurePath = snake_case(procedurePath)
        return super().lookupProcedure(procedurePath)

    def listProcedures(self) -> list[str]:
        names = super().listProcedures()
        return sorted(set(names) | {camel_case(n) for n in names})


XMLRPC_TYPES = frozenset({"string", "int", "double", "boolean", "struct", "array", "base64", "dateTime.iso8601", "nil"})


def signature(*types: str, returns: dict[str, str] | None = None) -> Callable[[Callable], Callable]:
    """Declare ``[return type, arg types...]`` for ``system.methodSignature``.

    ``returns`` names the fields of the result struct (beside ``success``) and
    their XML-RPC types (``"struct|nil"`` for a field that may be nil); with
    the parameter names and defaults of the function itself it feeds
    ``system.describeMethods``.
    """
    declared = [t for spec in (returns or {}).values() for t in spec.split("|")]
    unknown = sorted(set(types) - XMLRPC_TYPES) + sorted(set(declared) - XMLRPC_TYPES)
    if unknown:
        raise ValueError(f"not XML-RPC types: {', '.join(unknown)}")

    def mark(f: Callable) -> Callable:
        f.signature = [list(types)]  # type: ignore[attr-defined]
        f.returns = dict(returns or {})  # type: ignore[attr-defined]
        return f

    return mark


@functools.lru_cache(maxsize=1024)
def _arity(function: Callable) -> tuple[int, int]:
    """(required, maximum) positional parameters of an XML-RPC method."""
    params = [
        p for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
    ]
    return sum(1 for p in params if p.default is p.empty), len(params)


def _check_arity(function: Callable, args: tuple) -> None:
    required, maximum = _arity(getattr(function, "__func__", function))
    if not required <= len(args) <= maximum:
        expected = str(required) if required == maximum else f"{required} to {maximum}"
        raise xmlrpc.Fault(INVALID_PARAMS, f"invalid params: expected {expected} parameters, got {len(args)}")


class Dispatcher:
    """Runs one call and shapes its outcome for the wire."""

    def __init__(self, root: xmlrpc.XMLRPC, metrics: Metrics, call_timeout: float, reactor: Any) -> None:
        self.root = root
        self.metrics = metrics
        self.call_timeout = call_timeout
        self.reactor = reactor
        # every callable name -> its canonical (snake_case) name, for metrics and logs
        self.canonical: dict[str, str] = {}
        self.active = 0
        self._idle: list[defer.Deferred[None]] = []

    def drained(self) -> defer.Deferred[None]:
        """Fires once no call is running (at once if none is)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.active == 0:
            d.callback(None)
        else:
            self._idle.append(d)
        return d

    async def call(self, method: str, args: tuple, caller: str | None = None) -> Any:
        """Result value (already converted for the wire) or an ``xmlrpc.Fault``.

        ``caller`` is the client's address (sub-calls of a multicall inherit it).
        """
        if caller is not None:
            _CALLER.set(caller)  # this call's own context: Deferred.fromCoroutine runs it in a copy
        started = time.perf_counter()
        label = self.canonical.get(method, "unknown")
        self.metrics.in_flight.inc()
        self.active += 1
        try:
            result = await self._run(method, args)
        finally:
            self.metrics.in_flight.dec()
            self.active -= 1
            if self.active == 0:
                waiting, self._idle = self._idle, []
                for d in waiting:
                    d.callback(None)
        elapsed = time.perf_counter() - started
        if isinstance(result, xmlrpc.Fault):
            outcome = f"fault {result.faultCode}"
            self.metrics.faults.labels(str(result.faultCode)).inc()
        elif isinstance(result, dict) and result.get("success") is False:
            outcome = str(result.get("code"))
        else:
            outcome = "ok"
        self.metrics.requests.labels(label, outcome.split(" ")[0]).inc()
        self.metrics.latency.labels(label).observe(elapsed)
        log.info("{method} {ms:.1f} ms {outcome}", method=label if label != "unknown" else "(unknown method)",
                 ms=elapsed * 1000, outcome=outcome)
        return result

    async def _run(self, method: str, args: tuple) -> Any:
        try:
            function = self.root.lookupProcedure(method)
        except xmlrpc.Fault:
            return xmlrpc.Fault(METHOD_NOT_FOUND, f"method not found: {method[:100]}")
        try:
            _check_arity(function, args)
        except xmlrpc.Fault as fault:
            return fault
        owner = getattr(function, "__self__", None)
        if isinstance(owner, ServiceResource) and not owner.store.is_ready:
            d = defer.ensureDeferred(self._after_indexes(owner.store, function, args))
        else:
            d = defer.maybeDeferred(function, *args)
        if not getattr(function, "runs_calls", False):  # multicall: each sub-call has its own deadline
            d.addTimeout(self.call_timeout, self.reactor)
        try:
            result = await d
        except DomainError as e:
            return e.envelope()
        except xmlrpc.Fault as fault:
            return fault
        except DATABASE_DOWN:
            return Unavailable("The database is not available right now; try again shortly.").envelope()
        except Exception:
            reference = secrets.token_hex(4)
            log.failure("internal error in {method} (ref {ref})", Failure(), method=method, ref=reference)
            return xmlrpc.Fault(INTERNAL_ERROR, f"internal error (ref {reference})")
        return to_wire(result)

    @staticmethod
    async def _after_indexes(store: Any, function: Callable, args: tuple) -> Any:
        """Run a service method once the startup indexes exist.

        Until the unique indexes exist a write could slip a duplicate in, so no
        service method runs before them (afterwards nothing waits).  ``ping``
        and introspection answer at once.
        """
        await store.wait_ready()
        return await defer.maybeDeferred(function, *args)
