"""The txmongo connection pool as a Twisted service.

``MongoStore`` owns the pool: it connects when the service starts (txmongo
reconnects by itself after the database restarts), creates the indexes once
the database first answers, finds out whether the server runs transactions,
and disconnects when the service stops -- last, since ``MultiService`` stops
its children in reverse order.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pymongo import ReturnDocument
from pymongo.errors import OperationFailure, PyMongoError
from twisted.application import service
from twisted.internet import defer, task
from txmongo import filter as qf
from txmongo.connection import ConnectionPool
from txmongo.database import Database
from txmongo.sessions import ClientSession

from worknet.config import Settings
from worknet.errors import Conflict
from worknet.logs import logger
from worknet.store.indexes import INDEXES

T = TypeVar("T")

log = logger(__name__)

PING_FRESH_SECONDS = 0.5  # a ping result serves this long after its probe started
PING_TIMEOUT_SECONDS = 1.0  # no answer within this: disconnected
TRANSACTION_ATTEMPTS = 12  # write conflicts under contention: back off and run the steps again



class MongoStore(service.Service):
    """Database access for the services: collections, ping, transactions."""

    name = "mongodb"

    def __init__(self, settings: Settings, uri: Callable[[], str], reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._settings = settings
        self._uri = uri
        self._reactor = reactor
        self._pool: ConnectionPool | None = None
        self.supports_transactions = False
        self.is_secantus = False  # the embedded SecantusDB: some operations take another form (see update_and_fetch)
        self.connected = False
        self.is_ready = False  # indexes created: the services may read and write
        self._waiting: list[defer.Deferred[None]] = []
        self._probing = False
        self._probe_started = -1e9
        self._probe_waiters: list[defer.Deferred[bool]] = []

    # -- service life -------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        self._pool = ConnectionPool(
            self._uri(),
            pool_size=self._settings.mongodb_pool_size,
            retry_delay=0.5,
            max_delay=2.0,
            ping_interval=5,
            ping_timeout=5,
        )
        for factory in self._pool.getprotocols():
            factory.noisy = False  # no "Starting factory" line per reconnect
        self._preparing = defer.ensureDeferred(self._prepare())

    async def _prepare(self) -> None:
        """Wait until the database answers, then create indexes and probe transactions."""
        attempt = 0
        while self.running:
            try:
                hello = await self.command({"hello": 1})
                await self._create_indexes()
            except Exception as e:  # the database is not up yet: keep trying
                attempt += 1
                if attempt in (1, 20) or attempt % 120 == 0:
                    log.warn("waiting for the database ({reason})", reason=type(e).__name__)
                await task.deferLater(self._reactor, 0.25, lambda: None)
                continue
            self.supports_transactions = bool(hello.get("setName") or hello.get("msg") == "isdbgrid")
            build = await self.command({"buildInfo": 1})
            self.is_secantus = "secantusVersion" in build
            if not self.supports_transactions:
                log.warn(
                    "the database has no transactions (standalone server): multi-document "
                    "changes run step by step, each step guarded so that a retry completes it"
                )
            self.connected = True
            log.info("database ready: {db} ({mode})", db=self._settings.db_name,
                     mode="transactions" if self.supports_transactions else "no transactions")
            self.is_ready = True
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                if not d.called:  # a caller that gave up (timeout) cancelled its own Deferred only
                    d.callback(None)
            return

    def wait_ready(self) -> defer.Deferred[None]:
        """A new Deferred that fires once the indexes exist (at once afterwards).

        Each caller gets its own Deferred, so a call that times out and cancels
        it leaves the others waiting.
        """
        if self.is_ready:
            return defer.succeed(None)
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    async def stopService(self) -> None:
        super().stopService()
        if self._pool is not None:
            await self._pool.disconnect()
            self._pool = None

    async def _create_indexes(self) -> None:
        for collection, specs in INDEXES.items():
            for keys, options in specs:
                await self.db[collection].create_index(qf.sort(keys), **options)

    # -- access ---------------------------------------------------------------

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise RuntimeError("the database service is not running")
        return self._pool

    @property
    def db(self) -> Database:
        return self.pool[self._settings.db_name]

    def __getitem__(self, collection: str) -> Any:
        return self.db[collection]

    def open_connections(self) -> int:
        """How many pool connections are established right now."""
        if self._pool is None:
            return 0
        return sum(1 for factory in self._pool.getprotocols() if factory.instance is not None)

    async def command(self, command: dict, timeout: float | None = None) -> dict:
        return await self.pool.command(
            self._settings.db_name, command, timeout=timeout or self._settings.db_timeout_seconds
        )

    async def ping(self) -> bool:
        """True when the database answered a ``ping`` recently. Never raises.

        One probe at a time, shared by every caller: a result serves for
        ``PING_FRESH_SECONDS`` after its probe started; later callers join the
        probe in flight or start the next one.  A probe that gets no answer
        within ``PING_TIMEOUT_SECONDS``, or finds no pool connection up, says
        disconnected.  So the status a
        caller gets describes the database at most one second ago, and load
        on ``ping`` (or ``/health``) costs the database two commands a second.
        """
        if self._pool is None:
            return False
        if self._reactor.seconds() - self._probe_started < PING_FRESH_SECONDS:
            return self.connected
        # a Deferred per caller: a caller that gives up (its deadline) cancels its own only
        mine: defer.Deferred[bool] = defer.Deferred()
        self._probe_waiters.append(mine)  # before the probe starts: it may end at once
        if not self._probing:
            self._probing = True
            self._probe_started = self._reactor.seconds()
            defer.ensureDeferred(self._run_probe())
        return await mine

    async def _run_probe(self) -> None:
        connected = False
        if self.open_connections():  # none up (the server went away): no need to wait for a timeout
            try:
                await self.command({"ping": 1}, timeout=PING_TIMEOUT_SECONDS)
                connected = True
            except Exception:
                connected = False
        self.connected = connected
        self._probing = False
        waiting, self._probe_waiters = self._probe_waiters, []
        for d in waiting:
            if not d.called:
                d.callback(connected)

    async def update_and_fetch(
        self, collection: str, filter: dict, update: dict | list, *,
        projection: dict | None = None, session: ClientSession | None = None,
    ) -> dict | None:
        """Update the one document ``filter`` selects (it must name its ``_id``) and return it as it is now.

        None when nothing matched. A real MongoDB runs one ``findAndModify``
        (atomic, index-served). SecantusDB rewrites a ``findAndModify`` filter
        into an ``$and`` that disables every index (a full scan per call), so
        there it is a compare-and-set ``update_one`` followed by a read by
        ``_id`` -- in the same transaction when ``session`` is given; without one
        the read may already show a later write, never an earlier state.
        """
        if "_id" not in filter:
            raise ValueError("update_and_fetch needs a filter on _id")
        target = self.db[collection]
        if not self.is_secantus:
            return await target.find_one_and_update(
                filter, update, projection=projection, return_document=ReturnDocument.AFTER, session=session,
            )
        result = await target.update_one(filter, update, session=session)
        if result.matched_count == 0:
            return None
        return await target.find_one({"_id": filter["_id"]}, projection=projection, session=session)

    async def transaction(self, steps: Callable[[ClientSession | None], Awaitable[T]]) -> T:
        """Run ``steps(session)`` as one transaction, retried with a jittered backoff on transient errors.

        When every attempt hits a write conflict the caller gets a CONFLICT ("try again").

        Without transaction support ``steps(None)`` runs once, as plain
        writes: callers order and guard their steps (compare-and-set,
        unique keys) so that a retry completes a half-done change.
        """
        if not self.supports_transactions:
            return await steps(None)
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            async with self.pool.start_session() as session:
                try:
                    async with session.start_transaction():
                        return await steps(session)
                except PyMongoError as e:
                    transient = isinstance(e, OperationFailure) and (
                        e.has_error_label("TransientTransactionError") or e.code in (112, 251)
                    )
                    if not transient:
                        raise
            # a write conflict with a concurrent transaction: back off (jittered) and run again
            await task.deferLater(self._reactor, random.uniform(0, 0.005 * 2 ** min(attempt, 6)),  # noqa: S311
                                  lambda: None)
        raise Conflict("the data changed at the same time too often; try again")
