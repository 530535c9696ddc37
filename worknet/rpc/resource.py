"""The XML-RPC root resource (``/RPC2`` and ``/``).

``POST``: caller authentication, the body size limit, safe parsing, then the
:class:`~worknet.rpc.dispatch.Dispatcher`.  ``GET``: a human-readable page of
every method with its signature and help text.  ``system.*`` introspection and
``system.multicall`` live here too.
"""

from __future__ import annotations

import base64
import hmac
import time
from typing import Any
from xmlrpc.client import dumps

from twisted.internet import defer
from twisted.web import http, server, xmlrpc

from worknet.logs import logger
from worknet.rpc.describe import describe_methods, render_method_page
from worknet.rpc.dispatch import INVALID_REQUEST, NOT_WELL_FORMED, Dispatcher, signature
from worknet.rpc.metrics import Metrics
from worknet.rpc.parsing import NotAnXmlRpcCall, NotWellFormed, parse_call

log = logger("worknet.rpc")

VERSION = "0.1.0"
SERVER_HEADER = b"WorkNet-RPC"


class LimitedRequest(server.Request):
    """A request that stops buffering its body past ``max_body`` bytes.

    The body of an oversized request is read and dropped as it arrives (memory
    stays flat); the resource then answers 413 without parsing anything.
    """

    max_body = 1024 * 1024
    body_too_large = False
    _received = 0

    def setHeader(self, name: bytes | str, value: bytes | str) -> None:
        if name == b"Server":  # Twisted's default names Twisted and its version: name only ourselves
            value = SERVER_HEADER
        super().setHeader(name, value)

    def gotLength(self, length: int | None) -> None:
        if length is not None and length > self.max_body:
            self.body_too_large = True
            length = 0  # keep nothing
        super().gotLength(length)

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

    async def xmlrpc_multicall(self, calls: Any) -> list:
        """Run several calls in one request: each result comes back as a one-element array, or a fault struct."""
        if not isinstance(calls, list):
            raise xmlrpc.Fault(INVALID_REQUEST, "system.multicall takes an array of call structs")
        results: list = []
        for call in calls:
            name = call.get("methodName") if isinstance(call, dict) else None
            params = call.get("params", []) if isinstance(call, dict) else None
            if not isinstance(name, str) or not isinstance(params, list):
                outcome: Any = xmlrpc.Fault(INVALID_REQUEST, "each call needs methodName (string) and params (array)")
            elif name == "system.multicall":
                outcome = xmlrpc.Fault(INVALID_REQUEST, "system.multicall cannot be nested")
            else:
                outcome = await self._root.dispatcher.call(name, tuple(params))
            if isinstance(outcome, xmlrpc.Fault):
                results.append({"faultCode": outcome.faultCode, "faultString": outcome.faultString})
            else:
                results.append([outcome])
        return results

    xmlrpc_multicall.signature = [["array", "array"]]  # type: ignore[attr-defined]
    xmlrpc_multicall.runs_calls = True  # type: ignore[attr-defined]

    @signature("array")
    def xmlrpc_describeMethods(self) -> list[dict]:
        """Every method once, as data: name, names (with the camelCase alias), service, help, params (name, type, optional, default) and returns (type, envelope, fields: name, type, optional). A WorkNet extension; the Node client's TypeScript declarations are generated from it."""
        return describe_methods(self._root)


class RPCRoot(xmlrpc.XMLRPC):
    """The root handler: ``ping`` plus one sub-handler per service."""

    def __init__(self, store: Any, settings: Any, metrics: Metrics, services: dict[str, Any], reactor: Any = None) -> None:
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
        self.dispatcher.canonical = {name: self.canonical_name(name) for name in self.all_methods()}

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
        if not authorized(request, self.settings.rpc_auth_token):
            return refuse_unauthorized(request, self.metrics)
        if getattr(request, "body_too_large", False):
            self.metrics.http_rejected.labels("413").inc()
            request.setResponseCode(http.REQUEST_ENTITY_TOO_LARGE)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return f"413 Request Entity Too Large: the limit is {self.settings.rpc_max_body} bytes\n".encode()
        request.setHeader(b"content-type", b"text/xml; charset=utf-8")
        body = b""
        if request.content is not None:
            request.content.seek(0, 0)
            body = request.content.read()
        try:
            method, args = parse_call(body)
        except NotWellFormed as e:
            return self._respond(request, xmlrpc.Fault(NOT_WELL_FORMED, str(e)))
        except NotAnXmlRpcCall as e:
            return self._respond(request, xmlrpc.Fault(INVALID_REQUEST, str(e)))
        finished: list = []
        request.notifyFinish().addBoth(finished.append)
        d = defer.ensureDeferred(self.dispatcher.call(method, args, getattr(request.getClientAddress(), "host", "")))
        d.addCallback(lambda result: None if finished else self._write(request, result))
        d.addErrback(lambda f: log.failure("could not answer {method}", f, method=method))
        return server.NOT_DONE_YET

    def _respond(self, request: server.Request, result: Any) -> bytes:
        self.metrics.faults.labels(str(result.faultCode)).inc()
        log.info("(no call) fault {code}", code=result.faultCode)
        return self._encode(result)

    def _encode(self, result: Any) -> bytes:
        payload = result if isinstance(result, xmlrpc.Fault) else (result,)
        return dumps(payload, methodresponse=True, allow_none=True, encoding="utf-8").encode("utf-8")

    def _write(self, request: server.Request, result: Any) -> None:
        body = self._encode(result)
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
