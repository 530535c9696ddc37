"""The txmongo connection pool as a Twisted service.

``MongoStore`` owns the pool: it connects when the service starts (txmongo
reconnects by itself after the database restarts), creates the indexes once
the database first answers, finds out whether the server runs transactions,
and disconnects when the service stops -- last, since ``MultiService`` stops
its children in reverse order.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from bson import SON, Decimal128, ObjectId
from bson.codec_options import CodecOptions
from pymongo import ReturnDocument
from pymongo.errors import OperationFailure
from pymongo.write_concern import WriteConcern
from twisted.application import service
from twisted.internet import defer, task, threads
from twisted.python.failure import Failure
from txmongo import collection as txmongo_collection
from txmongo import filter as qf
from txmongo.connection import ConnectionPool
from txmongo.database import Database
from txmongo.sessions import ClientSession

from worknet.config import Settings
from worknet.errors import Unavailable
from worknet.logs import logger
from worknet.store import connect
from worknet.store.indexes import INDEXES
from worknet.store.interface import Capabilities, Session, Steps
from worknet.store.sessions import Leases, NamedSessions, SessionPool
from worknet.store.space import DiskSpace

T = TypeVar("T")

log = logger(__name__)

PING_FRESH_SECONDS = 0.5  # a ping result serves this long after its probe started
PING_TIMEOUT_SECONDS = 1.0  # no answer within this: disconnected
TRANSACTION_ATTEMPTS = 12  # write conflicts under contention: back off and run the steps again
ABORT_SECONDS = 2.0  # an abandoned transaction's abortTransaction, in the background (see MongoStore._abandon)
RECONNECT_MAX_SECONDS = 2.0  # the longest pause between two attempts to reconnect to the database
LOOPBACK_RECONNECT_SECONDS = 0.25  # the same for the embedded database: cheap, and back soon after a restart
DRAIN_SECONDS = 2.0  # a planned restart of the database waits this long at most for the commands already sent
RECONNECT_SECONDS = 15.0  # after a planned restart, held commands wait this long at most for a connection
UNCERTAIN_SECONDS = 3.0  # a connection closed before answering, again and again this long: a real cause
INDEX_RETRY_SECONDS = 5.0  # a conflicting index is checked again this often (fixed by hand, the daemon goes on)
SNAPSHOT_COLLECTION = "idempotency"  # read by _id (never matches) to give each transaction its read concern
PROBE_COLLECTION = "storageProbe"  # one document rewritten to see whether the database writes again
OUT_OF_DISK_SPACE = 14031  # MongoDB's code for a write refused for lack of disk space
IDS_CHUNK = 50  # ids per $in of find_by_ids (SecantusDB checks each candidate against the whole list)
INTERNAL_ERROR = 1  # what SecantusDB answers every command once WiredTiger has panicked (a full disk)


class Collection(txmongo_collection.Collection):
    """txmongo's collection, except that find-and-modify inside a transaction carries no write concern.

    txmongo 26 puts the collection's write concern into every
    ``findAndModify``, also inside a transaction, where MongoDB refuses it
    (code 72, "Cannot set write concern after starting a transaction"); its
    other commands leave it to the commit, as the protocol wants.  With the
    pool's ``w: majority`` default every transaction would fail, so here the
    three find-and-modify methods use a copy without write concern when the
    session is in a transaction.  (No change to txmongo: a subclass the store
    hands out.)
    """

    point_lookups = False  # SecantusDB: read by _id alone, check the rest here (see find_by_id)

    async def find_by_id(self, _id: Any, query: dict | None = None, *, projection: dict | None = None,
                         session: ClientSession | None = None) -> dict | None:
        """The document ``_id`` when it also matches ``query``, else None: ``find_one({_id, **query})``.

        A real MongoDB gets that filter as it is.  SecantusDB serves a filter of
        ``_id`` alone as a point lookup, but for any other field it first looks
        for an index to serve it -- longer than the lookup itself (pymongo,
        100,000 gigs: 1.0 ms by ``_id``, 2.2 ms with ``deletedAt: null``,
        3.0 ms on users) -- so there the document is read by ``_id`` alone, its
        ``query`` fields with it, and ``query`` is checked here on that one
        document (same snapshot, same answer).  Checked here: plain values
        (null: missing or null; an array field: any element) and ``$in`` lists
        of them; any other condition goes to the server.
        """
        if not self.point_lookups or not query or not _checkable(query):
            found: dict | None = await self.find_one({"_id": _id, **(query or {})}, projection=projection,
                                                     session=session)
            return found
        wanted, added = _with_fields(projection, query)
        doc: dict | None = await self.find_one({"_id": _id}, projection=wanted, session=session)
        if doc is None or not all(_field_matches(doc.get(name), value) for name, value in query.items()):
            return None
        for name in added:
            doc.pop(name, None)
        return doc

    def _for(self, session: ClientSession | None) -> txmongo_collection.Collection:
        if session is not None and session.in_transaction():
            return super().with_options(write_concern=WriteConcern())
        return super()

    def find_one_and_update(self, *args: Any, session: ClientSession | None = None, **kwargs: Any) -> Any:
        return self._for(session).find_one_and_update(*args, session=session, **kwargs)

    def find_one_and_replace(self, *args: Any, session: ClientSession | None = None, **kwargs: Any) -> Any:
        return self._for(session).find_one_and_replace(*args, session=session, **kwargs)

    def find_one_and_delete(self, *args: Any, session: ClientSession | None = None, **kwargs: Any) -> Any:
        return self._for(session).find_one_and_delete(*args, session=session, **kwargs)


_PLAIN = (str, bool, int, ObjectId, type(None))


def _checkable(query: dict) -> bool:
    """Whether ``query`` holds only conditions :func:`_field_matches` decides as MongoDB does."""
    for name, value in query.items():
        if not isinstance(name, str) or name.startswith("$") or "." in name or name == "_id":
            return False
        if isinstance(value, dict):
            if set(value) != {"$in"} or not isinstance(value["$in"], list) or not all(
                    isinstance(item, _PLAIN) for item in value["$in"]):
                return False
        elif not isinstance(value, _PLAIN):
            return False
    return True


def _same(stored: Any, wanted: Any) -> bool:
    if wanted is None:
        return stored is None
    if isinstance(stored, bool) or isinstance(wanted, bool):  # BSON: true is not 1
        return isinstance(stored, bool) and isinstance(wanted, bool) and stored == wanted
    if isinstance(wanted, int):  # BSON numbers compare by value across int/long/double/decimal
        if isinstance(stored, Decimal128):
            return stored.to_decimal() == wanted
        return isinstance(stored, (int, float)) and not isinstance(stored, bool) and stored == wanted
    return type(stored) is type(wanted) and stored == wanted


def _field_matches(stored: Any, condition: Any) -> bool:
    """MongoDB's verdict for ``{field: condition}`` on a top-level value (None: missing or null)."""
    options = condition["$in"] if isinstance(condition, dict) else [condition]
    values = [stored, *stored] if isinstance(stored, list) else [stored]
    return any(_same(value, option) for value in values for option in options)


def _with_fields(projection: dict | None, query: dict) -> tuple[dict | None, list[str]]:
    """``projection`` widened to return ``query``'s fields, and the fields it added (to drop again)."""
    if not projection:
        return projection, []
    fields = [name for name in query if name != "_id"]
    others = [value for name, value in projection.items() if name != "_id"]
    inclusion = any(others) if others else bool(projection.get("_id"))  # {_id: 1} includes _id only
    if inclusion:
        added = [name for name in fields if not projection.get(name)]
        return {**projection, **dict.fromkeys(added, 1)}, added
    added = [name for name in fields if name in projection]
    widened = {name: value for name, value in projection.items() if name not in added}
    return widened or None, added


class IndexConflict(Exception):
    """A startup index cannot be created (an index of other options on the same keys, duplicates, ...)."""


def index_failure(collection: str, keys: list[tuple[str, int]], options: dict, error: OperationFailure) -> str:
    """One line naming the index and the conflict, from the server's answer."""
    spec = "{" + ", ".join(f"{field}: {order}" for field, order in keys) + "}"
    reason = (error.details or {}).get("errmsg") or str(error)
    return f"index {options.get('name')} {spec} on {collection}: {reason} (code {error.code})"



class MongoStore(service.Service):
    """Database access for the services: collections, ping, transactions."""

    name = "mongodb"

    def __init__(self, settings: Settings, uri: Callable[[], str], reactor: Any = None,
                 data_dir: str | None = None) -> None:
        """``data_dir``: the embedded database's directory, whose free space is watched (None: an external one)."""
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._settings = settings
        self._uri = uri
        self._reactor = reactor
        self._pool: ConnectionPool | None = None
        self.capabilities = Capabilities()  # what the server offers, found when it first answers (see _prepare)
        self.connected = False
        self.is_ready = False  # indexes created: the services may read and write
        self._waiting: list[defer.Deferred[None]] = []
        self.target: connect.Target | None = None
        self.problem: str | None = None  # the last connection failure the operator must fix, until one succeeds
        self.hint: str | None = None  # an uncertain cause (see _connection_problem)
        self._hint_since: float | None = None
        self.index_problem: str | None = None  # a startup index that cannot be created
        self.warnings: dict[str, str] = {}  # what /health lists while serving (search catching up, ...)
        self._logged_problem: str | None = None
        self._probing = False
        self._probe_started = -1e9
        self._probe_waiters: list[defer.Deferred[bool]] = []
        self._idle_sweep: task.LoopingCall | None = None
        self._waiting_pool: ConnectionPool | None = None
        self.sessions = NamedSessions(on_lost=self._kill_lost_sessions)
        self.leases = Leases(self, self.sessions, reactor)
        self.storage_problem: str | None = None  # the database cannot write (a full disk), until a write succeeds
        self.space = DiskSpace(data_dir, settings.data_dir_min_free_mb, reactor) if data_dir else None
        self._space_warned = False

    # -- service life -------------------------------------------------------

    def startService(self) -> None:
        super().startService()
        if self.space is not None:
            self.space.on_reading.append(self._space_read)
            self.space.start()
        self._preparing = defer.ensureDeferred(self._prepare())

    def _space_read(self) -> None:
        """Log the low-space warning once when it starts, and once when it ends."""
        if self.space is None:
            return
        warning = self.space.warning()
        if warning and not self._space_warned:
            log.warn("{warning}", warning=warning)
        elif not warning and self._space_warned:
            log.info("free space in {path} is back above DATA_DIR_MIN_FREE_MB ({mb} MB free)",
                     path=self.space.path, mb=self.space.free_mb)
        self._space_warned = bool(warning)

    @property
    def health_warnings(self) -> list[str]:
        """What ``/health`` lists under ``warnings``: low free space (before it stops the database), and the
        notes other parts leave in ``warnings`` (search catching up with other writers)."""
        space = self.space.warning() if self.space is not None else None
        return ([space] if space else []) + sorted(self.warnings.values())

    def storage_failure(self, error: BaseException) -> bool:
        """Whether ``error`` is the database failing for lack of disk space; if so it is the cause until a write succeeds.

        MongoDB refuses a write with code 14031 or an ENOSPC message;
        SecantusDB's WiredTiger panics and then answers every command with an
        internal error (code 1), which means "no space" when the embedded
        database's directory is low on space, and goes on meaning it until the
        database is restarted (see ``EmbeddedDatabase``).  The cause is logged
        once, not per call.
        """
        if not isinstance(error, OperationFailure):
            return False
        text = str((error.details or {}).get("errmsg") or error)
        full = error.code == OUT_OF_DISK_SPACE or "No space left on device" in text or "ENOSPC" in text
        low = self.space is not None and self.space.low
        if not full and not (error.code == INTERNAL_ERROR and (low or self.storage_problem is not None)):
            return False
        if self.storage_problem is None:
            if self.space is not None:
                cause = (f"the database cannot write: its directory {self.space.path} is full "
                         f"({self.space.free_mb} MB free); free space there and the daemon recovers by itself")
            else:
                cause = "the database refuses writes for lack of disk space (No space left on device)"
            self.storage_problem = cause
            log.error("cannot use the database: {cause}", cause=cause)
        return True

    def _connect(self, target: connect.Target, size: int | None = None) -> ConnectionPool:
        """The txmongo pool for ``target``: our TLS creator, our protocol (SCRAM-SHA-256, X.509, causes).

        From the URI: ``connectTimeoutMS`` is txmongo's ``retry_delay``, which
        txmongo uses as the TCP connect timeout and the handshake's ``hello``
        deadline (and as the first reconnect delay, capped by ``max_delay``);
        ``heartbeatFrequencyMS`` its pingers' interval; ``uuidRepresentation``
        its codec's.
        """
        observer = connect.Observer(self._connection_problem, self._connection_answered)
        if size is None:
            self._observer = observer
        codec: dict[str, Any] = {}
        if target.uuid_representation is not None:
            codec["codec_options"] = CodecOptions(uuid_representation=target.uuid_representation)
        pool = SessionPool(
            target.txmongo_uri(),
            pool_size=size or self._settings.mongodb_pool_size,
            ssl_context_factory=connect.tls_creator(target),
            retry_delay=target.connect_timeout or connect.DEFAULT_CONNECT_TIMEOUT,
            max_delay=LOOPBACK_RECONNECT_SECONDS if self.space is not None else RECONNECT_MAX_SECONDS,
            ping_interval=target.heartbeat or connect.DEFAULT_HEARTBEAT,
            ping_timeout=5,
            **codec,
            **target.write_concern,
        )
        pool.sessions = self.sessions  # named server sessions (see worknet/store/sessions.py)
        protocol = connect.protocol_class(target, observer, self._reactor)
        for factory in pool.getprotocols():
            factory.noisy = False  # no "Starting factory" line per reconnect
            factory.protocol = protocol  # built on the first connection, after this returns
        if target.authenticates:
            pool.authenticate(target.auth_database, target.username, target.password or "", target.mechanism)
        return pool

    async def _target(self) -> connect.Target:
        target = connect.parse(self._uri(), self._settings.node_env)
        if target.srv is None:
            return target
        while True:
            try:
                return await threads.deferToThread(connect.resolve, target)
            except Exception as e:  # DNS down or wrong name: say so, keep trying
                self._connection_problem(f"DNS lookup of the SRV/TXT records of {target.srv} failed: "
                                         f"{type(e).__name__}: {e}")
                await task.deferLater(self._reactor, 5.0, lambda: None)
                if not self.running:
                    raise

    def _connection_problem(self, cause: str, certain: bool = True) -> None:
        """A connection failed for a reason the operator must fix (credentials, TLS, ...): one line per cause.

        A certain cause makes calls answer UNAVAILABLE at once until a
        connection succeeds.  An uncertain one (a connection closed before any
        answer: a plaintext URI to a TLS server, or a server shutting down) is
        shown by /health at once, and becomes certain -- logged, calls refused
        -- once it has lasted ``UNCERTAIN_SECONDS`` without any connection
        getting an answer in between.
        """
        if not certain:
            if self.problem is not None:
                return  # never hide a certain cause behind a vaguer one
            now = self._reactor.seconds()
            if self.hint != cause or self._hint_since is None:
                self.hint, self._hint_since = cause, now
                return
            if now - self._hint_since < UNCERTAIN_SECONDS:
                return
        self.problem = cause
        if cause != self._logged_problem:
            self._logged_problem = cause
            log.error("cannot use the database: {cause}", cause=cause)

    def _connection_answered(self) -> None:
        """A connection got its first answer: a pending uncertain cause was not the reason."""
        self.hint = self._hint_since = None

    async def _prepare(self) -> None:
        """Wait until the database answers, then create indexes and probe transactions."""
        target = await self._target()
        self.target = target
        self._pool = self._connect(target)
        if target.max_idle is not None:
            self._idle_sweep = task.LoopingCall(self._close_idle, target.max_idle)
            self._idle_sweep.clock = self._reactor
            self._idle_sweep.start(max(0.05, min(target.max_idle / 4, 5.0)), now=False)
        attempt = 0
        started = self._reactor.seconds()
        selection = target.server_selection_timeout  # serverSelectionTimeoutMS: how long startup waits
        while self.running:
            waited = self._reactor.seconds() - started
            timeout = self._settings.db_timeout_seconds
            if selection is not None and self.problem is None:
                timeout = min(timeout, max(0.1, selection - waited))
            try:
                hello = await self.command({"hello": 1}, timeout=timeout)
            except Exception as e:  # the database is not up yet (or refuses us: see _connection_problem)
                attempt += 1
                waited = self._reactor.seconds() - started
                if selection is not None and waited >= selection and self.problem is None:
                    self._connection_problem(f"no answer from {target.where} within {selection:g} s "
                                             "(serverSelectionTimeoutMS); still trying")
                if self.cause is None and (attempt in (1, 20) or attempt % 120 == 0):
                    log.warn("waiting for the database at {where}: {reason}", where=target.where,
                             reason=await self._why_unreachable(target) or type(e).__name__)
                await task.deferLater(self._reactor, 0.25, lambda: None)
                continue
            if self.problem is not None and self.index_problem is None:
                log.info("the database at {where} answers again", where=target.where)
            self.problem = self.hint = self._hint_since = self._logged_problem = None
            try:
                await self._create_indexes()
            except IndexConflict as e:  # a conflicting index or duplicates: the operator must act
                cause = str(e)
                if cause != self.index_problem:
                    log.error("cannot create the startup indexes: {cause}", cause=cause)
                self.index_problem = cause
                await task.deferLater(self._reactor, INDEX_RETRY_SECONDS, lambda: None)
                continue
            except Exception:  # the connection dropped in between: start over
                await task.deferLater(self._reactor, 0.25, lambda: None)
                continue
            if self.index_problem is not None:
                log.info("the startup indexes now exist")
            self.index_problem = None
            self.capabilities = Capabilities.of(hello, await self.command({"buildInfo": 1}))
            if not self.supports_transactions:
                log.warn(
                    "the database has no transactions (standalone server): multi-document "
                    "changes run step by step, each step guarded so that a retry completes it"
                )
            self.connected = True
            auth = target.authenticates_against
            log.info("database ready: {db} at {where} ({mode}, writes {concern}{reads}{auth})",
                     db=self._settings.db_name, where=target.where,
                     mode="transactions" if self.supports_transactions else "no transactions",
                     concern=target.write_concern,
                     reads=f", reads {target.read_concern}" if target.read_concern else "",
                     auth=f", user authenticated against {auth}" if auth else "")
            self.is_ready = True
            if self.supports_transactions:
                self.leases.start()  # a daemon killed with transactions open: any other one ends them
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                if not d.called:  # a caller that gave up (timeout) cancelled its own Deferred only
                    d.callback(None)
            return

    async def _why_unreachable(self, target: connect.Target) -> str | None:
        """Why the first host does not answer, named from one TCP connection to it (the name does not
        resolve, nothing listens, no answer); None when it accepts connections (the cause is elsewhere)."""
        from twisted.internet import endpoints, error, protocol

        from worknet.startup import unreachable

        if not target.hosts:
            return None
        host, port = target.hosts[0]
        timeout = self._settings.db_timeout_seconds
        endpoint = endpoints.HostnameEndpoint(self._reactor, host, port, timeout=timeout)
        try:
            connected: Any = await endpoint.connect(protocol.Factory.forProtocol(protocol.Protocol))
        except error.DNSLookupError:
            return unreachable(host, port, "dns", timeout)
        except error.ConnectionRefusedError:
            return unreachable(host, port, "refused", timeout)
        except Exception:  # noqa: BLE001 - timed out, no route...: the connection was not made
            return unreachable(host, port, "timeout", timeout)
        connected.transport.loseConnection()
        return None

    @property
    def refused(self) -> str | None:
        """Why the database refuses the daemon (credentials, TLS, a startup index), when that is certain."""
        return self.index_problem or self.problem

    @property
    def cause(self) -> str | None:
        """Why the database cannot be used right now (for /health), or None."""
        if self.refused or self.storage_problem:
            return self.refused or self.storage_problem
        if self.hint:
            return self.hint
        if not self.connected and self.space is not None and self.space.low:
            return self.space.warning()  # the embedded database stopped for lack of space
        return None

    def wait_ready(self) -> defer.Deferred[None]:
        """A new Deferred that fires once the indexes exist (at once afterwards).

        Each caller gets its own Deferred, so a call that times out and cancels
        it leaves the others waiting.
        """
        if self.is_ready:
            return defer.succeed(None)
        if self.refused is not None:  # credentials, TLS, index conflict: answer at once, not at the deadline
            return defer.fail(Unavailable("The database is not available right now; try again shortly."))
        d: defer.Deferred[None] = defer.Deferred()
        self._waiting.append(d)
        return d

    def _close_idle(self, max_idle: float) -> None:
        """``maxIdleTimeMS``: close each pool connection unused that long; its slot reconnects at once.

        Only a connection with no request in flight is closed, and it is taken
        out of its slot first, so no call is sent on it while it closes.
        """
        if self._pool is None:
            return
        now = self._reactor.seconds()
        for factory in self._pool.getprotocols():
            protocol = factory.instance
            if protocol is None or protocol.in_flight or now - protocol.last_used < max_idle:
                continue
            factory.setInstance(None)  # new calls wait for the slot's next connection
            factory.delay = 0  # ReconnectingClientFactory: reconnect now, not after a backoff
            if protocol.transport is not None:
                protocol.transport.loseConnection()

    async def stopService(self) -> None:
        super().stopService()
        if self._idle_sweep is not None and self._idle_sweep.running:
            self._idle_sweep.stop()
        if self.space is not None:
            self.space.stop()
        if self._waiting_pool is not None:
            await self._waiting_pool.disconnect()
            self._waiting_pool = None
        if self._pool is not None:
            await self.leases.stop()
            await self._pool.disconnect()
            self._pool = None

    async def _create_indexes(self) -> None:
        """Every startup index: one ``createIndexes`` per collection, the collections at once (a dozen
        commands in one round trip's time, not 39 in turn: a startup on a distant server, or on a busy
        machine, waited for each)."""
        try:
            await defer.gatherResults([defer.ensureDeferred(self._create_collection_indexes(collection, specs))
                                       for collection, specs in INDEXES.items()], consumeErrors=True)
        except defer.FirstError as e:
            e.subFailure.raiseException()

    async def _create_collection_indexes(self, collection: str, specs: list[tuple[list[tuple[str, int]], dict]]) -> None:
        try:
            await self.db.command("createIndexes", collection, indexes=[
                {"key": SON(qf.sort(keys)["orderby"]), **options} for keys, options in specs])
        except OperationFailure as e:
            # one index is refused, and the answer may not say which: each alone names it
            for keys, options in specs:
                try:
                    await self.db[collection].create_index(qf.sort(keys), **options)
                except OperationFailure as alone:
                    raise IndexConflict(index_failure(collection, keys, options, alone)) from alone
            raise IndexConflict(f"the indexes of {collection}: {(e.details or {}).get('errmsg') or e} "
                                f"(code {e.code})") from e

    # -- access ---------------------------------------------------------------

    @property
    def pool(self) -> ConnectionPool:
        if self._pool is None:
            raise RuntimeError("the database service is not running")
        return self._pool

    @property
    def waiting_pool(self) -> ConnectionPool:
        """A one-connection pool of its own for commands that wait on the server by design (a change
        stream's ``getMore`` waits up to its ``maxTimeMS``): the server answers one connection's commands in
        order, so on a shared pool connection every call sent behind it would wait too (measured: searches
        at 100,000 gigs went from p99 20 ms to 480 ms)."""
        if self._waiting_pool is None:
            if self.target is None or not self.running:  # a stream closed after the store stopped opens none
                raise RuntimeError("the database service is not running")
            self._waiting_pool = self._connect(self.target, size=1)
        return self._waiting_pool

    @property
    def db(self) -> Database:
        return self.pool[self._settings.db_name]

    def __getitem__(self, collection: str) -> Collection:
        found = Collection(self.db, collection)
        found.point_lookups = self.capabilities.point_lookups
        return found

    @property
    def supports_transactions(self) -> bool:
        """Whether the server runs multi-document transactions (for logs and tests; see :attr:`capabilities`)."""
        return self.capabilities.transactions

    @property
    def is_secantus(self) -> bool:
        """Whether the server is the embedded SecantusDB (for logs and tests; see :attr:`capabilities`)."""
        return self.capabilities.point_lookups and not self.capabilities.indexed_find_and_modify

    @property
    def db_timeout_seconds(self) -> float:
        """The per-call deadline of one database command."""
        return float(self._settings.db_timeout_seconds)

    def open_connections(self) -> int:
        """How many pool connections are established right now."""
        if self._pool is None:
            return 0
        return sum(1 for factory in self._pool.getprotocols() if factory.instance is not None)

    async def command(self, command: dict, timeout: float | None = None, database: str | None = None,
                      session: ClientSession | None = None, waits: bool = False) -> dict:
        """``command`` on the daemon's database (or ``database``); ``timeout`` instead of the per-call
        deadline; ``waits``: a command that waits on the server by design, sent on :attr:`waiting_pool`
        (with a session of that pool)."""
        pool = self.waiting_pool if waits else self.pool
        return await pool.command(
            database or self._settings.db_name, command, timeout=timeout or self._settings.db_timeout_seconds,
            session=session,
        )

    async def checkpoint(self) -> None:
        """Before a planned restart, while calls go on: ``fsync`` (a checkpoint), so that the database's own
        checkpoint as it stops has little left to write (never raises: it only shortens the pause)."""
        try:
            await self.command({"fsync": 1}, database="admin", timeout=max(self._settings.db_timeout_seconds, 10.0))
        except Exception as e:  # noqa: BLE001 - the restart goes on without it
            log.info("no checkpoint before the restart: {e}", e=e)

    async def hold(self, drain: float = DRAIN_SECONDS) -> None:
        """Before the embedded database is restarted on purpose: new commands wait (until :meth:`release`,
        within their call's deadline) and those already sent are answered (at most ``drain`` seconds)."""
        if self._pool is None:
            return
        pool = self._pool
        pool.hold()
        deadline = self._reactor.seconds() + drain
        while pool.inflight() and self._reactor.seconds() < deadline:
            await task.deferLater(self._reactor, 0.01, lambda: None)
        if pool.inflight():
            log.info("{n} database commands still unanswered after {s} s: the restart goes on", n=pool.inflight(),
                     s=drain)

    async def release(self, wait: float = RECONNECT_SECONDS) -> None:
        """The database was restarted: once a connection to it is up again (``wait`` seconds at most), the
        held commands go on (before that, they would meet refused connections)."""
        if self._pool is None:
            return
        pool = self._pool
        deadline = self._reactor.seconds() + wait
        while not self.open_connections() and self._reactor.seconds() < deadline:
            await task.deferLater(self._reactor, 0.02, lambda: None)
        pool.release()

    def _kill_lost_sessions(self, ids: list) -> None:
        """Sessions whose connection broke mid-command may hold a transaction open on the server: end it."""
        if self._pool is not None and self.running:
            defer.ensureDeferred(self.leases.kill_lost(ids)).addErrback(lambda f: None)  # again with each beat

    async def ping(self) -> bool:
        """True when the database answered a ``ping`` recently. Never raises.

        One probe at a time, shared by every caller: a "connected" result
        serves for ``PING_FRESH_SECONDS`` after its probe started (a
        "disconnected" one is not reused, so the return is seen at once); later
        callers join the probe in flight or start the next one.  A probe that gets no answer
        within ``PING_TIMEOUT_SECONDS``, or finds no pool connection up, says
        disconnected.  So the status a
        caller gets describes the database at most one second ago, and load
        on ``ping`` (or ``/health``) costs the database two commands a second.
        """
        if self._pool is None:
            return False
        if self.connected and self._reactor.seconds() - self._probe_started < PING_FRESH_SECONDS:
            return True  # only good news is reused: after an outage the first ping asks again
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
        if connected and self.storage_problem is not None:  # a ping needs no disk: does it write again?
            connected = await self._writes()
        self.connected = connected
        if connected and self.is_ready:
            self.problem = self.hint = self._hint_since = self._logged_problem = None
        self._probing = False
        waiting, self._probe_waiters = self._probe_waiters, []
        for d in waiting:
            if not d.called:
                d.callback(connected)

    async def _writes(self) -> bool:
        """One small write; clears the storage problem when it succeeds."""
        try:
            await self.command({"update": PROBE_COLLECTION, "updates": [
                {"q": {"_id": "probe"}, "u": {"$inc": {"n": 1}}, "upsert": True}]}, timeout=PING_TIMEOUT_SECONDS)
        except Exception:
            return False
        if self.storage_problem is not None:
            log.info("the database writes again")
            self.storage_problem = None
        return True

    async def update_and_fetch(
        self, collection: str, filter: dict, update: dict | list, *,
        projection: dict | None = None, session: Session = None,
        alongside: Callable[[], Coroutine[Any, Any, Any]] | None = None,
    ) -> dict | None:
        """Update the one document ``filter`` selects (it must name its ``_id``) and return it as it is now.

        None when nothing matched. A real MongoDB runs one ``findAndModify``
        (atomic, index-served). SecantusDB rewrites a ``findAndModify`` filter
        into an ``$and`` that disables every index (a full scan per call), so
        there it is a compare-and-set ``update_one`` followed by a read by
        ``_id`` -- in the same transaction when ``session`` is given; without one
        the read may already show a later write, never an earlier state.

        ``alongside``: a step that must follow the write (a catalogue mark),
        run once the update is applied and only when it matched -- on
        SecantusDB at the same time as the read, so it costs no extra round
        trip in sequence.  The call returns once both are done.
        """
        if "_id" not in filter:
            raise ValueError("update_and_fetch needs a filter on _id")
        target = self[collection]
        if self.capabilities.indexed_find_and_modify:
            doc: dict | None = await target.find_one_and_update(
                filter, update, projection=projection, return_document=ReturnDocument.AFTER, session=session,
            )
            if doc is not None and alongside is not None:
                await alongside()
            return doc
        result = await target.update_one(filter, update, session=session)
        if result.matched_count == 0:
            return None
        read = defer.ensureDeferred(target.find_one({"_id": filter["_id"]}, projection=projection, session=session))
        if alongside is not None:
            outcomes = await defer.DeferredList([read, defer.ensureDeferred(alongside())], consumeErrors=True)
            for succeeded, value in outcomes:
                if not succeeded:
                    value.raiseException()
            found: dict | None = outcomes[0][1]
            return found
        found = await read
        return found

    async def delete_and_fetch(self, collection: str, filter: dict, *, projection: dict | None = None) -> dict | None:
        """Delete the one document ``filter`` selects (it must name its ``_id``) and return it as it was.

        None when nothing matched; of two concurrent calls only one gets the
        document.  A real MongoDB runs one ``findAndModify``.  On SecantusDB,
        whose ``findAndModify`` scans the whole collection, the document is read
        by ``_id`` and then deleted by ``_id`` and ``filter`` (``delete_one``):
        None when another call deleted it in between.  The document returned
        is then the one read, which a concurrent update may have changed before
        the delete: callers read only fields that never change.
        """
        if "_id" not in filter:
            raise ValueError("delete_and_fetch needs a filter on _id")
        target = self[collection]
        if self.capabilities.indexed_find_and_modify:
            doc: dict | None = await target.find_one_and_delete(filter, projection=projection)
            return doc
        rest = {name: value for name, value in filter.items() if name != "_id"}
        found = await target.find_by_id(filter["_id"], rest or None, projection=projection)
        if found is None or (await target.delete_one(filter)).deleted_count == 0:
            return None
        return found

    async def find_first(self, collection: str, filters: Sequence[dict], *,
                         projection: dict | None = None) -> tuple[int, dict] | None:
        """The first of ``filters``, in order, that matches a document: its position and the document
        (None when none matches).

        One query per filter, in turn, each served by its own index -- never
        one ``$or`` of them, which SecantusDB answers with a scan of the whole
        collection (it uses no index under a top-level ``$or``); a filter
        naming ``_id`` is a read by ``_id`` (``find_by_id``).
        """
        target = self[collection]
        for position, query in enumerate(filters):
            found: dict | None
            if "_id" in query:
                rest = {name: value for name, value in query.items() if name != "_id"}
                found = await target.find_by_id(query["_id"], rest or None, projection=projection)
            else:
                found = await target.find_one(query, projection=projection)
            if found is not None:
                return position, found
        return None

    async def matches_any(self, collection: str, filters: Sequence[dict]) -> bool:
        """Whether any of ``filters`` matches a document: one indexed count (``limit: 1``) per filter,
        in turn, stopping at the first match -- never one ``$or`` (a full scan on SecantusDB)."""
        target = self[collection]
        for query in filters:
            if await target.count_documents(query, limit=1):
                return True
        return False

    async def find_by_ids(self, collection: str, ids: Sequence[Any], query: dict | None = None, *,
                          projection: dict | None = None) -> list[dict]:
        """The documents whose ``_id`` is in ``ids`` and that match ``query``, in no particular order.

        Read ``IDS_CHUNK`` ids at a time: SecantusDB 0.7 re-checks each
        candidate against the whole ``$in`` list, a cost quadratic in its length
        (1,000 ids: ~1.5 s; 20 chunks of 50: ~0.1 s), and any chunk size suits
        MongoDB.  Where a filter of ``_id`` alone is the cheap one
        (``point_lookups``), ``query`` -- plain values and ``$in`` lists, as for
        ``find_by_id`` -- is checked here on the documents read; otherwise it
        goes to the server with the ids.
        """
        target = self[collection]
        local = bool(query) and self.capabilities.point_lookups and _checkable(query or {})
        wanted, added = _with_fields(projection, query or {}) if local else (projection, [])
        found: list[dict] = []
        for start in range(0, len(ids), IDS_CHUNK):
            chunk = {"_id": {"$in": list(ids[start:start + IDS_CHUNK])}}
            docs = await target.find(chunk if local else {**chunk, **(query or {})}, projection=wanted)
            for doc in docs:
                if local and not all(_field_matches(doc.get(name), value) for name, value in (query or {}).items()):
                    continue
                for name in added:
                    doc.pop(name, None)
                found.append(doc)
        return found

    async def aggregate_each(self, collection: str, pipelines: Sequence[list[dict]]) -> list[list[dict]]:
        """Each pipeline's result, in order.  Alternatives (a user as buyer, as seller) each get a
        pipeline starting with its own indexed ``$match``, run one after the other, rather than one
        pipeline matching an ``$or`` of them (SecantusDB: a scan of every document)."""
        target = self[collection]
        return [list(await target.aggregate(pipeline)) for pipeline in pipelines]

    async def undo_outside_transaction(self, session: Session, undo: Callable[[], Awaitable[None]]) -> None:
        """Steps of :meth:`transaction` about to raise call this with an ``undo`` of the writes they
        already made: inside a transaction the abort discards them, so nothing runs; without one
        (``session`` None, the fallback of a server without transactions) ``undo`` takes them back."""
        if session is None:
            await undo()

    async def finish_interrupted(self, repair: Callable[[], Awaitable[None]]) -> None:
        """Run ``repair`` -- finishing what a crash may have left half-done -- when units of work are
        not atomic here: without transactions :meth:`transaction` runs its steps as plain writes, each
        guarded so that running a flow again completes it.  With transactions a flow either committed
        or left nothing, so ``repair`` is not run."""
        if not self.capabilities.transactions:
            await repair()

    async def _snapshot(self, session: ClientSession) -> None:
        """Open the transaction with read concern ``snapshot``.

        txmongo has no transaction read concern; a transaction's read concern
        is the one of its first command, so the transaction starts with a
        one-document read by ``_id`` carrying it.  With the ``w: majority``
        commit, every read of the transaction comes from one majority-committed
        snapshot.
        """
        await self.pool.command(self._settings.db_name, {
            "find": SNAPSHOT_COLLECTION, "filter": {"_id": 0}, "limit": 1, "singleBatch": True,
            "readConcern": {"level": "snapshot"},
        }, session=session)

    def _abandon(self, session: ClientSession) -> defer.Deferred[None]:
        """End ``session`` after a failed or cancelled attempt; the returned Deferred fires once it is ended.

        txmongo's transaction context awaits ``abortTransaction`` -- a command
        without a deadline, which also waits for a connection -- before the
        error goes on; so a call cancelled at its deadline answered only once
        the database answered the abort (8.5 s for a 2 s deadline with the
        database frozen; up to 7.1 s for 5 s after a database crash).  Here the
        abort gets ``ABORT_SECONDS`` and runs on by itself: a caller that
        stops waiting (its deadline) does not stop it.  An abort without an
        answer marks the server session dirty, so it is killed
        (``killSessions``, see worknet/store/sessions.py) rather than reused;
        a server that never hears of it ends the transaction at its lifetime.
        The server session goes back to the pool only after the abort.
        """
        done: defer.Deferred[None] = defer.Deferred()  # cancelling it (a deadline) leaves the abort running
        if not session.in_transaction():
            ending = defer.ensureDeferred(session.end_session())  # no transaction open: no command
        else:
            ending = defer.ensureDeferred(session.abort_transaction())  # the server's errors are swallowed
            ending.addTimeout(ABORT_SECONDS, self._reactor)

            def ended(outcome: Any) -> defer.Deferred[None]:
                if isinstance(outcome, Failure):
                    session._mark_dirty()  # maybe still open on the server: killed, never reused
                return defer.ensureDeferred(session.end_session())

            ending.addBoth(ended)
        ending.addErrback(lambda f: None)
        ending.addCallback(lambda _: None if done.called else done.callback(None))
        return done

    async def transaction(self, steps: Steps[T]) -> T:
        """Run ``steps(session)`` as one transaction, retried with a jittered backoff on transient errors.

        A failed attempt is aborted within ``ABORT_SECONDS`` (:meth:`_abandon`);
        a call cancelled at its deadline does not wait for that abort at all.

        When every attempt hits a write conflict the caller gets UNAVAILABLE
        ("try again shortly"): the conflict is transient -- a concurrent
        transaction, or one a killed daemon left open on the server until it
        is aborted -- and CONFLICT is kept for a real duplicate, so a caller
        can tell "retry" from "already exists".

        Without transaction support ``steps(None)`` runs once, as plain
        writes: callers order and guard their steps (compare-and-set,
        unique keys) so that a retry completes a half-done change.
        """
        if not self.capabilities.transactions:
            return await steps(None)
        for attempt in range(1, TRANSACTION_ATTEMPTS + 1):
            session = self.pool.start_session()
            try:
                session.start_transaction(write_concern=self.pool.write_concern)
                await self._snapshot(session)
                result = await steps(session)
                await session.commit_transaction()
            except BaseException as e:
                abandoned = self._abandon(session)
                if not isinstance(e, defer.CancelledError):  # the call's deadline: answer now, the abort runs on
                    await abandoned
                transient = isinstance(e, OperationFailure) and (
                    e.has_error_label("TransientTransactionError") or e.code in (112, 251)
                )
                if not transient:
                    raise
            else:
                await session.end_session()  # committed: no command, the server session goes back to the pool
                return result
            # a write conflict with a concurrent transaction, or with one of this process's own that a lost
            # connection left open on the server: end those first, back off (jittered) and run again
            if self.leases.lost:
                await self.leases.end_lost()
            await task.deferLater(self._reactor, random.uniform(0, 0.005 * 2 ** min(attempt, 6)),  # noqa: S311
                                  lambda: None)
        raise Unavailable("The data changed at the same time too often; try again shortly.")


if TYPE_CHECKING:
    from worknet.store.interface import Store

    _PROVIDES: type[Store] = MongoStore  # checked by mypy: MongoStore provides every method of the Store interface
