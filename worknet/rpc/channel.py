"""HTTP connections that a slow or greedy client cannot keep forever.

Twisted's ``HTTPChannel`` closes a connection after ``timeout`` seconds with
no data at all, but every byte resets that clock: a client trickling its
headers one byte a second (slowloris) keeps the connection -- and a file
descriptor -- for ever.  :class:`GuardedChannel` adds:

* a read deadline: a request must arrive whole (headers and body) within
  ``read_timeout`` seconds of its first byte; a late one is answered 408 and
  the connection closed.  It costs one clock read per ``dataReceived``, no
  timer;
* a cap on open connections (:class:`GuardedSite`): past it, a new
  connection is closed at once, so the daemon never runs out of file
  descriptors for its database connections and logs.  At startup the soft
  ``RLIMIT_NOFILE`` is raised to the hard one (:func:`raise_file_limit`) and
  the cap derived from it.
"""

from __future__ import annotations

import resource as rlimit
from typing import Any

from twisted.web import http, server

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
    _request_started: float | None = None
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

    def dataReceived(self, data: bytes) -> None:
        if self._request_started is None:
            if not self._handlingRequest:
                self._request_started = self.site.reactor.seconds()
        elif self.site.reactor.seconds() - self._request_started > self.read_timeout:
            self._too_slow()
            return
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        self._request_started = None
        super().allContentReceived()

    def _too_slow(self) -> None:
        self.site.slow_requests += 1
        self.transport.write(b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
        self.dataReceived = lambda data: None  # type: ignore[method-assign]  # nothing more from this client
        self.loseConnection()

    def connectionLost(self, reason: Any = None) -> None:
        self.site.open_connections -= 1
        super().connectionLost(reason)


class GuardedSite(server.Site):
    """A ``Site`` of :class:`GuardedChannel` connections, counting them."""

    protocol = GuardedChannel  # type: ignore[assignment]

    def __init__(self, resource: Any, *, idle_timeout: float, read_timeout: float, max_connections: int,
                 reactor: Any = None) -> None:
        # An XML-RPC body is never a form: Twisted's Content-Type parsing (email.headerregistry,
        # a sixth of a no-database call) would only look for one.
        super().__init__(resource, timeout=idle_timeout, reactor=reactor, parsePOSTFormSubmission=False)
        self.read_timeout = read_timeout
        self.max_connections = max_connections
        self.open_connections = 0
        self.refused_connections = 0
        self.slow_requests = 0

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        channel.read_timeout = self.read_timeout
        return channel
