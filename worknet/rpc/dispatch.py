"""Calling a method: names, arity, the result envelope, faults, metrics and the log line.

This is the one place where domain errors become
``{"success": false, "error": ..., "code": ...}``, where database outages
become ``UNAVAILABLE``, and where anything unexpected becomes fault -32603
with a short reference id that is also in the log (with the traceback).
"""

from __future__ import annotations

import contextvars
import inspect
import re
import secrets
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pymongo.errors import AutoReconnect, ConnectionFailure, ExecutionTimeout, NetworkTimeout
from twisted.internet import defer
from twisted.internet import error as net_error
from twisted.python.failure import Failure
from twisted.web import xmlrpc
from txmongo.errors import TimeExceeded

from worknet.errors import DomainError, Unavailable
from worknet.logs import logger
from worknet.rpc.metrics import Metrics, multiprocess_dir
from worknet.rpc.wire import to_wire

if TYPE_CHECKING:
    from worknet.store.interface import Store

log = logger("worknet.rpc")

NOT_WELL_FORMED = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")

UNAVAILABLE_MESSAGE = "The database is not available right now; try again shortly."

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



CANCEL_GRACE_SECONDS = 0.5  # a call cancelled at its deadline answers this long after it at the latest


def within(work: defer.Deferred[Any], seconds: float, reactor: Any) -> defer.Deferred[Any]:
    """``work``'s outcome, or ``defer.TimeoutError`` once ``seconds`` have passed; ``work`` is then cancelled.

    Twisted's ``addTimeout`` cancels and then waits for the cancelled work
    to end, and work may go on after its cancellation (a clean-up that waits
    on the database: txmongo's abort of a transaction waited on a frozen
    database for as long as it stayed frozen).  Here the caller waits
    ``CANCEL_GRACE_SECONDS`` more at most, so no call answers later than its
    deadline and that grace; the work's late outcome is dropped.
    """
    answer: defer.Deferred[Any] = defer.Deferred(lambda _: work.cancel())
    timers: list[Any] = []
    expired: list[bool] = []

    def settle(outcome: Any) -> None:
        for timer in timers:
            if timer.active():
                timer.cancel()
        if answer.called:
            return  # answered already (the grace ran out): a late outcome, dropped
        if isinstance(outcome, Failure) and outcome.check(defer.CancelledError) and expired:
            outcome = Failure(defer.TimeoutError(f"the call took longer than {seconds:g} s"))
        if isinstance(outcome, Failure):
            answer.errback(outcome)
        else:
            answer.callback(outcome)

    def expire() -> None:
        expired.append(True)
        timers.append(reactor.callLater(CANCEL_GRACE_SECONDS, give_up))
        work.cancel()  # most work ends here, and settle answers at once

    def give_up() -> None:
        if not answer.called:
            answer.errback(defer.TimeoutError(f"the call took longer than {seconds:g} s; its clean-up goes on"))

    timers.append(reactor.callLater(seconds, expire))
    work.addBoth(settle)
    return answer


def unavailable() -> dict:
    """The ``UNAVAILABLE`` envelope of a call that could not reach the database."""
    return Unavailable(UNAVAILABLE_MESSAGE).envelope()


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

    def __init__(self, store: Store, settings: Any) -> None:
        super().__init__(allowNone=True, useDateTime=False)
        self.store: Store = store
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


def no_database(f: Callable) -> Callable:
    """Mark a service method that never touches the database: it runs at once,
    also before the startup indexes exist and while the database is down."""
    f.needs_database = False  # type: ignore[attr-defined]
    return f


class Procedure:
    """One callable name, resolved once at startup: the function, its arity, what it waits for."""

    __slots__ = ("function", "required", "maximum", "store", "runs_calls")

    def __init__(self, function: Callable) -> None:
        params = [
            p for p in inspect.signature(function).parameters.values()
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
        ]
        self.function = function
        self.required = sum(1 for p in params if p.default is p.empty)
        self.maximum = len(params)
        owner = getattr(function, "__self__", None)
        # the store whose startup indexes the method waits for (None: it needs no database)
        self.store: Store | None = owner.store if isinstance(owner, ServiceResource) and getattr(function, "needs_database", True) else None
        self.runs_calls = bool(getattr(function, "runs_calls", False))

    def arity_fault(self, count: int) -> xmlrpc.Fault | None:
        if self.required <= count <= self.maximum:
            return None
        expected = str(self.required) if self.required == self.maximum else f"{self.required} to {self.maximum}"
        return xmlrpc.Fault(INVALID_PARAMS, f"invalid params: expected {expected} parameters, got {count}")


class Dispatcher:
    """Runs one call and shapes its outcome for the wire."""

    def __init__(self, root: xmlrpc.XMLRPC, metrics: Metrics, call_timeout: float, reactor: Any) -> None:
        self.root = root
        self.metrics = metrics
        self.call_timeout = call_timeout
        self.reactor = reactor
        # every callable name (snake_case and camelCase) -> its procedure, and -> its canonical
        # (snake_case) name for metrics and logs; a name not in here names no method
        self.procedures: dict[str, Procedure] = {}
        self.canonical: dict[str, str] = {}
        self.active = 0
        # One process: the in-flight gauge reads ``active`` when scraped. Workers (--workers): every
        # call updates the shared gauge, which another worker may render at any moment.
        self.shared_in_flight: Any = None
        if multiprocess_dir():
            self.shared_in_flight = metrics.in_flight
        else:
            metrics.in_flight.set_function(lambda: self.active)
        self._idle: list[defer.Deferred[None]] = []
        # prometheus children bound once per label set (``labels()`` per call costs a lock and a dict)
        self._counted: dict[tuple[str, str], Any] = {}
        self._timed: dict[str, Any] = {}
        self._faulted: dict[int, Any] = {}

    def register(self, names: dict[str, str]) -> None:
        """``names``: every callable name -> its canonical name."""
        self.canonical = dict(names)
        self.procedures = {name: Procedure(self.root.lookupProcedure(name)) for name in names}

    def procedure(self, name: Any) -> Procedure:
        """The procedure a name calls; fault -32602 for a name that is not a string, -32601 for an unknown one."""
        if not isinstance(name, str):
            raise xmlrpc.Fault(INVALID_PARAMS, "invalid params: a method name must be a string")
        procedure = self.procedures.get(name)
        if procedure is None:
            raise xmlrpc.Fault(METHOD_NOT_FOUND, f"method not found: {name[:100]}")
        return procedure

    def drained(self) -> defer.Deferred[None]:
        """Fires once no call is running (at once if none is)."""
        d: defer.Deferred[None] = defer.Deferred()
        if self.active == 0:
            d.callback(None)
        else:
            self._idle.append(d)
        return d

    async def call(self, method: str, args: tuple, caller_gone: Callable[[], bool] | None = None,
                   timeout: float | None = None, caller: str | None = None) -> Any:
        """Result value (already converted for the wire) or an ``xmlrpc.Fault``.

        ``caller_gone`` tells whether the caller hung up (a batch stops then);
        ``timeout`` overrides the call's deadline (a batch's sub-calls share one);
        ``caller`` is the client's address (sub-calls of a multicall inherit it).
        """
        if caller is not None:
            _CALLER.set(caller)  # this call's own context: Deferred.fromCoroutine runs it in a copy
        started = time.perf_counter()
        label = self.canonical.get(method, "unknown")
        self.active += 1
        shared = self.shared_in_flight
        if shared is not None:
            shared.inc()
        try:
            result = await self._run(method, args, caller_gone, self.call_timeout if timeout is None else timeout)
        finally:
            self.active -= 1
            if shared is not None:
                shared.dec()
            if self.active == 0:
                waiting, self._idle = self._idle, []
                for d in waiting:
                    d.callback(None)
        elapsed = time.perf_counter() - started
        if isinstance(result, xmlrpc.Fault):
            outcome = f"fault {result.faultCode}"
            faulted = self._faulted.get(result.faultCode)
            if faulted is None:
                faulted = self._faulted[result.faultCode] = self.metrics.faults.labels(str(result.faultCode))
            faulted.inc()
        elif isinstance(result, dict) and result.get("success") is False:
            outcome = str(result.get("code"))
        else:
            outcome = "ok"
        key = (label, outcome.split(" ")[0])
        counted = self._counted.get(key)
        if counted is None:
            counted = self._counted[key] = self.metrics.requests.labels(*key)
        counted.inc()
        timed = self._timed.get(label)
        if timed is None:
            timed = self._timed[label] = self.metrics.latency.labels(label)
        timed.observe(elapsed)
        name = label if label != "unknown" else "(unknown method)"
        ms = elapsed * 1000
        # Rendered here, once: the text observers write it as it is. The fields stay in the event.
        log.info_rendered(f"{name} {ms:.1f} ms {outcome}", method=name, ms=ms, outcome=outcome)
        return result

    async def _run(self, method: str, args: tuple, caller_gone: Callable[[], bool] | None, timeout: float) -> Any:
        try:
            procedure = self.procedure(method)
        except xmlrpc.Fault as unknown:
            return unknown
        fault = procedure.arity_fault(len(args))
        if fault is not None:
            return fault
        store = procedure.store
        try:
            if store is not None and not store.running:
                raise Unavailable("The server is shutting down; try again shortly.")
            if procedure.runs_calls:  # a batch: its sub-calls share the deadline
                d = defer.ensureDeferred(procedure.function(*args, caller_gone=caller_gone, timeout=timeout))
            elif store is not None and not store.is_ready:
                d = within(defer.ensureDeferred(self._after_indexes(store, procedure.function, args)), timeout,
                           self.reactor)
            else:
                d = defer.maybeDeferred(procedure.function, *args)
                if not d.called:  # a deadline only for a call still running (most no-database calls are done)
                    d = within(d, timeout, self.reactor)
            result = await d
            return result if procedure.runs_calls else to_wire(result)
        except DomainError as e:
            return e.envelope()
        except xmlrpc.Fault as fault:
            return fault
        except DATABASE_DOWN:
            return unavailable()
        except Exception as e:
            if store is not None and not store.running:  # the pool closed under the call (shutdown)
                return unavailable()
            if store is not None and store.storage_failure(e):  # a full disk: the cause is in /health and logged once
                return unavailable()
            reference = secrets.token_hex(4)
            log.failure("internal error in {method} (ref {ref})", Failure(), method=method, ref=reference)
            return xmlrpc.Fault(INTERNAL_ERROR, f"internal error (ref {reference})")

    @staticmethod
    async def _after_indexes(store: Store, function: Callable, args: tuple) -> Any:
        """Run a service method once the startup indexes exist.

        Until the unique indexes exist a write could slip a duplicate in, so no
        service method that uses the database runs before them (afterwards
        nothing waits).  ``ping``, introspection and methods marked
        :func:`no_database` answer at once.
        """
        await store.wait_ready()
        return await defer.maybeDeferred(function, *args)
