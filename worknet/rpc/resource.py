"""The XML-RPC root resource (``/RPC2`` and ``/``).

``POST``: caller authentication, the body size limit, safe parsing, then the
:class:`~worknet.rpc.dispatch.Dispatcher`.  ``GET``: a human-readable page of
every method with its signature and help text.  ``system.*`` introspection and
``system.multicall`` live here too.
"""

from __future__ import annotations

import base64
import collections
import hmac
import secrets
import time
from collections.abc import Callable
from io import BytesIO
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, task
from twisted.internet.interfaces import IPullProducer
from twisted.web import http, server, xmlrpc
from zope.interface import implementer

from worknet import __version__
from worknet.errors import Unavailable
from worknet.logs import logger, new_request_id, request_id
from worknet.rpc.describe import describe_methods, render_method_page
from worknet.rpc.dispatch import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    NOT_WELL_FORMED,
    Dispatcher,
    signature,
)
from worknet.rpc.metrics import Metrics
from worknet.rpc.parsing import BadValue, NotAnXmlRpcCall, NotWellFormed, parse_call
from worknet.rpc.wire import EncodedArray, encode_response, encode_value

if TYPE_CHECKING:
    from worknet.store.interface import Store

log = logger("worknet.rpc")

VERSION = __version__  # worknet/__init__.py: the one place the version is written
SERVER_HEADER = b"WorkNet-RPC"

# A batch hands the reactor back at least this often (seconds of work between two yields).
YIELD_SECONDS = 0.0005


class LimitedRequest(server.Request):
    """A request that stops buffering its body past ``max_body`` bytes.

    The body of an oversized request is read and dropped as it arrives (memory
    stays flat); the resource then answers 413 without parsing anything.  Bodies
    up to ``max_body`` stay in memory (Twisted spools bodies of 100 kB and more to
    a temporary file: disk I/O on the reactor thread).
    """

    max_body = 1024 * 1024
    body_too_large = False
    body_refused = False  # set by the channel: the caller has no token, its body was not read
    _received = 0

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name == b"Server":  # Twisted's default names Twisted and its version: name only ourselves
            value = SERVER_HEADER
        super().setHeader(name, value)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.body_too_large = True
        self.content = BytesIO()

    def handleContentChunk(self, data: bytes) -> None:
        if self.body_too_large:
            return
        self._received += len(data)
        if self._received > self.max_body:
            self.body_too_large = True
            if self.content is not None:
                self.content.seek(0)
                self.content.truncate()
            return
        super().handleContentChunk(data)


@implementer(IPullProducer)
class PiecesProducer:
    """Writes an answer already encoded in pieces, at most ``PIECE`` bytes per reactor step, then finishes
    the request: a large answer is never handed to the transport (copied into its buffer) in one go."""

    PIECE = 64 * 1024

    def __init__(self, request: server.Request, pieces: list[bytes]) -> None:
        self.request = request
        self.pieces: collections.deque[bytes | memoryview] = collections.deque(pieces)
        self.done = False

    def start(self) -> None:
        self.request.notifyFinish().addErrback(lambda _: self.stopProducing())  # the caller hung up
        self.request.registerProducer(self, False)

    def resumeProducing(self) -> None:
        if self.done:
            return
        pieces, chunk, room = self.pieces, [], self.PIECE
        while pieces and room > 0:
            piece = pieces.popleft()
            if len(piece) > room:  # a large member: the rest of it at the next step
                pieces.appendleft(memoryview(piece)[room:])
                piece = memoryview(piece)[:room]
            chunk.append(piece)
            room -= len(piece)
        self.request.write(b"".join(chunk))
        if not pieces:
            self.done = True
            self.request.unregisterProducer()
            self.request.finish()

    def stopProducing(self) -> None:  # the connection is gone
        self.done = True
        self.pieces.clear()


def request_factory(max_body: int) -> type[LimitedRequest]:
    return type("Request", (LimitedRequest,), {"max_body": max_body})


def authorized(request: server.Request, token: str) -> bool:
    """Bearer token or HTTP Basic with the token as password; constant-time comparison."""
    if not token:
        return True
    header = (request.getHeader("authorization") or "").strip()
    scheme, _, credentials = header.partition(" ")
    presented = ""
    if scheme.lower() == "bearer":
        presented = credentials.strip()
    elif scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (ValueError, UnicodeDecodeError):
            decoded = ""
        presented = decoded.partition(":")[2]
    return hmac.compare_digest(presented.encode("utf-8"), token.encode("utf-8"))


def refuse_unauthorized(request: server.Request, metrics: Metrics) -> bytes:
    metrics.http_rejected.labels("401").inc()
    request.setResponseCode(http.UNAUTHORIZED)
    # Basic too, so that a browser asks for the token (as the password) and can open the method page
    request.responseHeaders.setRawHeaders(
        b"www-authenticate", [b'Bearer realm="worknet-rpc"', b'Basic realm="worknet-rpc", charset="UTF-8"'],
    )
    request.setHeader(b"content-type", b"text/plain; charset=utf-8")
    return b"401 Unauthorized: a valid Authorization header is required\n"


class Introspection(xmlrpc.XMLRPCIntrospection):
    """``system.listMethods`` / ``methodHelp`` / ``methodSignature`` and ``system.multicall``."""

    def __init__(self, parent: RPCRoot) -> None:
        super().__init__(parent)
        self._root = parent

    def xmlrpc_listMethods(self) -> list[str]:
        """Every callable method name (snake_case and camelCase forms)."""
        return self._root.all_methods()

    xmlrpc_listMethods.signature = [["array"]]  # type: ignore[attr-defined]

    def xmlrpc_methodHelp(self, method: Any) -> str:
        """The help text of a method (its name a string: fault -32602 otherwise, -32601 for an unknown name)."""
        function = self._root.dispatcher.procedure(method).function
        return getattr(function, "help", None) or function.__doc__ or ""

    xmlrpc_methodHelp.signature = [["string", "string"]]  # type: ignore[attr-defined]

    def xmlrpc_methodSignature(self, method: Any) -> list | str:
        """The signatures of a method, ``[[return type, argument types...]]`` (``""`` when it declares none)."""
        function = self._root.dispatcher.procedure(method).function
        return getattr(function, "signature", None) or ""

    xmlrpc_methodSignature.signature = [["array", "string"]]  # type: ignore[attr-defined]

    async def xmlrpc_multicall(self, calls: Any, *, caller_gone: Callable[[], bool] | None = None,
                               timeout: float | None = None) -> EncodedArray:
        """Run several calls in one request: each result comes back as a one-element array, or a fault struct.

        At most RPC_MAX_MULTICALL calls (a longer batch is fault -32600 and nothing runs); the batch shares
        one deadline of DB_TIMEOUT_SECONDS (calls it leaves no time for answer UNAVAILABLE without running)
        and stops when the caller hangs up. Its answer may not pass RPC_MAX_ANSWER bytes: a batch whose
        answers would is fault -32600, which says how many of its calls ran (the rest did not)."""
        if not isinstance(calls, list):
            raise xmlrpc.Fault(INVALID_REQUEST, "system.multicall takes an array of call structs")
        settings = self._root.settings
        limit = settings.rpc_max_multicall
        if len(calls) > limit:
            raise xmlrpc.Fault(INVALID_REQUEST, f"system.multicall takes at most {limit} calls, got {len(calls)}")
        dispatcher = self._root.dispatcher
        reactor = dispatcher.reactor
        deadline = reactor.seconds() + (dispatcher.call_timeout if timeout is None else timeout)
        yielded = time.perf_counter()
        # Each result is encoded as soon as it comes and dropped: the batch holds its answer's bytes,
        # counted as they grow, never every result's objects nor the whole document built at the end.
        answer = EncodedArray()
        for index, call in enumerate(calls):
            if caller_gone is not None and caller_gone():
                log.info("system.multicall stopped after {done} of {total} calls: the caller hung up",
                         done=index, total=len(calls))
                break
            name = call.get("methodName") if isinstance(call, dict) else None
            params = call.get("params", []) if isinstance(call, dict) else None
            left = deadline - reactor.seconds()
            if not isinstance(name, str) or not isinstance(params, list):
                outcome: Any = xmlrpc.Fault(INVALID_REQUEST, "each call needs methodName (string) and params (array)")
            elif name == "system.multicall":
                outcome = xmlrpc.Fault(INVALID_REQUEST, "system.multicall cannot be nested")
            elif left <= 0:
                outcome = Unavailable("Not run: the batch ran out of time; send the rest again.").envelope()
            else:
                outcome = await dispatcher.call(name, tuple(params), timeout=left)
            answer.append(self._member(outcome))
            if answer.size > settings.rpc_max_answer:
                log.info("system.multicall stopped after {done} of {total} calls: its answer passed {limit} bytes",
                         done=index + 1, total=len(calls), limit=settings.rpc_max_answer)
                raise xmlrpc.Fault(INVALID_REQUEST, (
                    f"the answer of this system.multicall would pass {settings.rpc_max_answer} bytes: its first "
                    f"{index + 1} of {len(calls)} calls ran, the others did not; send smaller batches"))
            # Sub-calls whose Deferreds have already fired resume at once: hand the reactor
            # back every few milliseconds so that other callers are not held up by a batch.
            if time.perf_counter() - yielded > YIELD_SECONDS:
                await task.deferLater(reactor, 0, lambda: None)
                yielded = time.perf_counter()
        return answer

    @staticmethod
    def _member(outcome: Any) -> bytes:
        """One member of a batch's answer: ``[result]``, or the fault struct."""
        if isinstance(outcome, xmlrpc.Fault):
            return encode_value({"faultCode": outcome.faultCode, "faultString": outcome.faultString})
        try:
            return encode_value([outcome])
        except Exception:  # a value the wire cannot carry slipped through: this member is the fault
            reference = secrets.token_hex(4)
            log.failure("could not encode the answer (ref {ref})", ref=reference)
            return encode_value({"faultCode": INTERNAL_ERROR, "faultString": f"internal error (ref {reference})"})

    xmlrpc_multicall.signature = [["array", "array"]]  # type: ignore[attr-defined]
    xmlrpc_multicall.runs_calls = True  # type: ignore[attr-defined]

    @signature("array")
    def xmlrpc_describeMethods(self) -> list[dict]:
        """Every method once, as data: name, names (with the camelCase alias), service, help, params (name, type, optional, default) and returns (type, envelope, fields: name, type, optional). A WorkNet extension; the Node client's TypeScript declarations are generated from it."""
        return describe_methods(self._root)


class RPCRoot(xmlrpc.XMLRPC):
    """The root handler: ``ping`` plus one sub-handler per service."""

    def __init__(self, store: Store, settings: Any, metrics: Metrics, services: dict[str, Any], reactor: Any = None) -> None:
        super().__init__(allowNone=True, useDateTime=False)
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.started = time.monotonic()
        for name, handler in services.items():
            self.putSubHandler(name, handler)
        self.putSubHandler("system", Introspection(self))
        self.dispatcher = Dispatcher(self, metrics, settings.db_timeout_seconds, reactor)
        self.dispatcher.register({name: self.canonical_name(name) for name in self.all_methods()})

    def canonical_name(self, name: str) -> str:
        """``usersService.getById`` -> ``usersService.get_by_id``."""
        function = self.lookupProcedure(name)
        prefix, _, _ = name.rpartition(".")
        return (prefix + "." if prefix else "") + function.__name__.removeprefix("xmlrpc_")

    def all_methods(self) -> list[str]:
        names: list[str] = []
        pending: list[tuple[xmlrpc.XMLRPC, str]] = [(self, "")]
        while pending:
            handler, prefix = pending.pop()
            names.extend(prefix + name for name in handler.listProcedures())
            for sub in handler.getSubHandlerPrefixes():
                pending.append((handler.getSubHandler(sub), prefix + sub + handler.separator))
        return sorted(names)

    @signature("struct", returns={"status": "string", "message": "string", "mongodb": "string", "version": "string",
                                  "uptime_seconds": "int"})
    async def xmlrpc_ping(self) -> dict:
        """Health of the server: status, message, mongodb (connected/disconnected), version, uptime_seconds. Never raises."""
        connected = await self.store.ping()
        return {
            "status": "ok",
            "message": "RPC Server is running",
            "mongodb": "connected" if connected else "disconnected",
            "version": VERSION,
            "uptime_seconds": int(time.monotonic() - self.started),
        }

    # -- HTTP -------------------------------------------------------------------

    def render_POST(self, request: server.Request) -> Any:
        # The call's id: in the X-Request-Id response header and on its log lines (a context
        # variable, copied into the call's coroutine when it starts, reset here when it returns).
        rid = new_request_id(request.getHeader("x-request-id"))
        request.setHeader(b"x-request-id", rid.encode())
        token = request_id.set(rid)
        try:
            return self._render_call(request)
        finally:
            request_id.reset(token)

    def _render_call(self, request: server.Request) -> Any:
        # body_refused: the channel did not read the body of a caller without the token (GuardedChannel)
        if getattr(request, "body_refused", False) or not authorized(request, self.settings.rpc_auth_token):
            return refuse_unauthorized(request, self.metrics)
        if getattr(request, "body_too_large", False):
            self.metrics.http_rejected.labels("413").inc()
            request.setResponseCode(http.REQUEST_ENTITY_TOO_LARGE)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"413 Request Entity Too Large: the limit is {self.settings.rpc_max_body} bytes\n".encode()
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        content = request.content
        body = content.getvalue() if isinstance(content, BytesIO) else b""
        try:
            method, args = parse_call(body, self.settings.rpc_max_values)
        except NotWellFormed as e:
            return self._respond(request, xmlrpc.Fault(NOT_WELL_FORMED, str(e)))
        except NotAnXmlRpcCall as e:
            return self._respond(request, xmlrpc.Fault(INVALID_REQUEST, str(e)))
        except BadValue as e:
            return self._respond(request, xmlrpc.Fault(INVALID_PARAMS, str(e)))
        finished: list = []
        request.notifyFinish().addBoth(finished.append)
        d = defer.ensureDeferred(self.dispatcher.call(method, args, lambda: bool(finished),
                                                      caller=getattr(request.getClientAddress(), "host", "")))
        d.addCallback(lambda result: None if finished else self._write(request, result))
        d.addErrback(lambda f: log.failure("could not answer {method}", f, method=method))
        return server.NOT_DONE_YET

    def _respond(self, request: server.Request, result: Any) -> bytes:
        self.metrics.faults.labels(str(result.faultCode)).inc()
        log.info("(no call) fault {code}", code=result.faultCode)
        return self._encode(result)

    def _encode(self, result: Any) -> bytes:
        return encode_response(result)

    def _write(self, request: server.Request, result: Any) -> None:
        if isinstance(result, EncodedArray):  # a batch's answer, already encoded: written in pieces
            request.setHeader(b"content-length", b"%d" % result.size)
            PiecesProducer(request, result.pieces()).start()
            return
        try:
            body = self._encode(result)
        except Exception:  # a value the wire cannot carry slipped through: still answer
            reference = secrets.token_hex(4)
            log.failure("could not encode the answer (ref {ref})", ref=reference)
            body = self._encode(xmlrpc.Fault(INTERNAL_ERROR, f"internal error (ref {reference})"))
        request.setHeader(b"content-length", b"%d" % len(body))
        request.write(body)
        request.finish()

    def render_GET(self, request: server.Request) -> bytes:
        if not authorized(request, self.settings.rpc_auth_token):
            return refuse_unauthorized(request, self.metrics)
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        return self.method_page().encode("utf-8")

    def method_page(self) -> str:
        return render_method_page(self, VERSION)
