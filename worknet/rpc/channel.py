"""HTTP connections that a slow or greedy client cannot keep forever.

Twisted's ``HTTPChannel`` closes a connection after ``timeout`` seconds with
no data at all, but every byte resets that clock: a client trickling its
headers one byte a second (slowloris) keeps the connection -- and a file
descriptor -- for ever.  :class:`GuardedChannel` adds:

* a read deadline: a request must arrive whole (headers and body) within
  ``read_timeout`` seconds of its first byte; a late one is answered 408 and
  the connection closed.  A timer (``callLater``) enforces it, armed only when
  a ``dataReceived`` leaves a request incomplete and cancelled when it is
  complete, so a client that stops sending is closed on time (the idle
  timeout alone kept it for ``RPC_IDLE_TIMEOUT_SECONDS``) and a request that
  arrives in one read costs no timer at all;
* no body that will be refused: when the site needs a caller token
  (``RPC_AUTH_TOKEN``) and a request that announces a body lacks it, or
  when the announced ``Content-Length`` is over the limit, the request is
  handled as soon as its headers are in, with an empty body (the resource
  answers 401, or 413, without "100 Continue"), and the connection is closed
  after the answer.  The body is never kept: what arrives is dropped, for at
  most ``LINGER_SECONDS`` and ``LINGER_BYTES`` after the answer (the write side closed first, so
  that a client still sending its body reads the answer, not a reset);
* a cap on open connections (:class:`GuardedSite`): past it, a new
  connection is closed at once, so the daemon never runs out of file
  descriptors for its database connections and logs.  At startup the soft
  ``RLIMIT_NOFILE`` is raised to the hard one (:func:`raise_file_limit`) and
  the cap derived from it.
"""

from __future__ import annotations

import resource as rlimit
from collections.abc import Callable
from typing import Any

from twisted.internet.interfaces import ITCPTransport
from twisted.web import http, server

# A skipped body is read and dropped this long at most after the answer, and this much at most.
LINGER_SECONDS = 2.0
LINGER_BYTES = 2 * 1024 * 1024
RESERVED_DESCRIPTORS = 128  # database pool, log files, the embedded database's pipes, listening sockets


def raise_file_limit() -> int:
    """Raise the soft open-files limit to the hard one; return the limit now in force."""
    soft, hard = rlimit.getrlimit(rlimit.RLIMIT_NOFILE)
    if hard == rlimit.RLIM_INFINITY or soft < hard:
        target = hard if hard != rlimit.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            rlimit.setrlimit(rlimit.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def connection_cap(configured: int, file_limit: int, pool_size: int) -> int:
    """``RPC_MAX_CONNECTIONS`` when set, else what the file limit leaves after the daemon's own needs."""
    room = max(file_limit - RESERVED_DESCRIPTORS - pool_size, 16)
    return min(configured, room) if configured else room


class GuardedChannel(http.HTTPChannel):
    read_timeout = 10.0
    _deadline: Any = None  # the DelayedCall answering 408 to a request still incomplete
    _refused = False  # nothing more from this client is looked at (a skipped body, a late request)
    _lingering = False  # a skipped body: the connection reads (and drops) a while after the answer
    _dropped = 0  # bytes dropped since then
    _linger: Any = None  # the DelayedCall closing a lingering connection
    site: GuardedSite  # set by Site.buildProtocol
    transport: Any

    def connectionMade(self) -> None:
        site = self.site
        site.open_connections += 1
        if site.open_connections > site.max_connections:
            site.refused_connections += 1
            self.transport.abortConnection()
            return
        super().connectionMade()

    _host: Any = None

    def getHost(self) -> Any:
        # Every request asks for it (Request.__init__): one getsockname() per connection, not per request.
        if self._host is None:
            self._host = super().getHost()
        return self._host

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            self._dropped += len(data)
            if self._dropped > LINGER_BYTES and self._linger is not None:  # dropping for ever: stop
                self._linger_over()
            return
        super().dataReceived(data)
        self._arm_deadline()

    def _arm_deadline(self) -> None:
        """Start the read deadline when a request has begun (a partial line, headers, a body) and is not whole."""
        if self._deadline is None and not self._handlingRequest and (self.requests or self._buffer) \
                and not self._refused:
            self._deadline = self.site.reactor.callLater(self.read_timeout, self._too_slow)

    def allHeadersReceived(self) -> None:
        request = self.requests[-1]
        if self.length != 0:  # a body is coming (Content-Length, or chunked)
            authorize = self.site.authorize
            if authorize is not None and not authorize(request):
                request.body_refused = True  # the resource answers 401
                self._skip_body(request)
                return
            if self.length is not None and self.length > getattr(request, "max_body", self.length):
                request.body_too_large = True  # the resource answers 413
                self._skip_body(request)
                return
        super().allHeadersReceived()

    def _skip_body(self, request: Any) -> None:
        """Handle ``request`` now, with an empty body, and close the connection after its answer.

        The body is never read: no "100 Continue" is sent, what the client sends meanwhile is dropped.
        """
        self._refused = True
        self._lingering = True
        self.persistent = False
        self.length = 0  # HTTPChannel.lineReceived then calls allContentReceived at once
        self._transferDecoder = None
        request.responseHeaders.setRawHeaders(b"connection", [b"close"])
        request.gotLength(0)

    def allContentReceived(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        super().allContentReceived()

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)
        self._arm_deadline()  # a pipelined request already begun in the buffered data

    def loseConnection(self) -> None:
        if not self._lingering or self.isSecure() or not ITCPTransport.providedBy(self.transport):
            super().loseConnection()
            return
        # The answer to a request whose body was skipped is out: end it (FIN) and go on reading,
        # dropping the body still on its way, so that a client which sends its whole body before it
        # reads (Python's http.client) gets the answer, not a reset. Closed when the client closes,
        # LINGER_SECONDS later, or past LINGER_BYTES dropped.
        self._lingering = False
        transport: Any = self.transport
        transport.unregisterProducer()
        transport.loseWriteConnection()
        self._linger = self.site.reactor.callLater(min(LINGER_SECONDS, self.read_timeout), self._linger_over)

    def _linger_over(self) -> None:
        linger, self._linger = self._linger, None
        if linger is not None and linger.active():
            linger.cancel()
        self.transport.abortConnection()

    def _too_slow(self) -> None:
        self._deadline = None
        self.site.slow_requests += 1
        self._refused = True  # nothing more from this client
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        for timer in (self._deadline, self._linger):
            if timer is not None and timer.active():
                timer.cancel()
        self._deadline = self._linger = None
        self.site.open_connections -= 1
        super().connectionLost(reason)


class GuardedSite(server.Site):
    """A ``Site`` of :class:`GuardedChannel` connections, counting them."""

    protocol = GuardedChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, *, idle_timeout: float, read_timeout: float, max_connections: int,
                 reactor: Any = None, authorize: Callable[[Any], bool] | None = None) -> None:
        """``authorize(request)``: whether a request's headers carry the caller token (None: no token needed)."""
        # An XML-RPC body is never a form: Twisted's Content-Type parsing (email.headerregistry,
        # a sixth of a no-database call) would only look for one.
        super().__init__(resource, timeout=idle_timeout, reactor=reactor, parsePOSTFormSubmission=False)
        self.read_timeout = read_timeout
        self.authorize = authorize
        self.max_connections = max_connections
        self.open_connections = 0
        self.refused_connections = 0
        self.slow_requests = 0

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.read_timeout = self.read_timeout
        return channel
