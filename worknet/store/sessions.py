"""Server sessions with known names, so that a dead daemon's open transactions can be ended by another.

A transaction stays open on the server when the daemon running it dies
(``kill -9``, a crash, a lost host): closing the connection does not abort
it, and MongoDB and SecantusDB keep it -- and every document it wrote, which
other transactions then meet as write conflicts -- until its lifetime runs
out (``transactionLifetimeLimitSeconds``, 60 s by default).  A caller that
retries the cut-off call on another daemon touches the same documents, and
so does every later call about the same buyer, seller or order.

So every process names its server sessions: ``uuid5(NAMESPACE,
"<owner>/<slot>")``, where ``owner`` is random per process start and slots
are numbered as sessions are first needed (:class:`NamedSessions`, handed to
txmongo's pool through :class:`SessionPool`).  Each process keeps a lease
document in ``sessionLeases`` -- its owner, how many slots it has named, its
host and PID -- and rewrites it every ``BEAT_SECONDS`` (:class:`Leases`).
Every process reads the others' leases at the same pace; one whose lease has
not changed for ``STALE_SECONDS`` on the reader's own clock (no clock
comparison between hosts), or whose process is gone from this host, is
dead: the reader ends all of its sessions with ``killSessions`` (which
aborts their transactions and frees their documents) and deletes the lease.
A process that was only slow to beat loses its open transactions: they
abort with a transient error and are run again (``MongoStore.transaction``).

A session that lost its connection in the middle of a command (txmongo marks
it dirty and never reuses it) may also have left a transaction open: it is
killed as well.  On a clean stop a process ends its own sessions and deletes
its lease.
"""

from __future__ import annotations

import os
import socket
import time
import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import bson
from bson import Binary, UuidRepresentation
from bson.raw_bson import DEFAULT_RAW_BSON_OPTIONS, RawBSONDocument
from twisted.internet import defer, task
from txmongo.connection import ConnectionPool
from txmongo.sessions import ServerSession

from worknet.logs import logger

if TYPE_CHECKING:
    from worknet.store.pool import MongoStore

log = logger(__name__)

NAMESPACE = uuid.UUID("6f1c3e0a-4b7d-5c2e-9a18-3d5e7f901b24")
LEASES = "sessionLeases"
BEAT_SECONDS = 2.0
STALE_SECONDS = 10.0  # a lease unchanged this long (reader's clock): its process is gone
SLOTS_AHEAD = 32  # slots a lease declares beyond those in use, so a new session is covered at once
KILL_CHUNK = 500  # session ids per killSessions command
_CODEC = DEFAULT_RAW_BSON_OPTIONS.with_options(uuid_representation=UuidRepresentation.STANDARD)


def session_uuid(owner: str, slot: int) -> uuid.UUID:
    return uuid.uuid5(NAMESPACE, f"{owner}/{slot}")


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


class NamedSessions:
    """The server sessions of one process, named ``(owner, slot)``, reused most recent first (as txmongo does)."""

    def __init__(self, on_lost: Callable[[list[uuid.UUID]], Any] | None = None) -> None:
        self.owner = uuid.uuid4().hex
        self.named = 0  # slots 0 .. named-1 have been handed out at least once
        self._free: deque[ServerSession] = deque()
        self.on_lost = on_lost  # sessions that may have left a transaction open on the server

    @property
    def declared(self) -> int:
        """The slots the lease covers: every one named so far and ``SLOTS_AHEAD`` more."""
        return self.named + SLOTS_AHEAD

    def acquire(self, timeout_minutes: float) -> ServerSession:
        while self._free:
            session = self._free.popleft()
            if not session.is_about_to_expire(timeout_minutes):
                return session
        slot, self.named = self.named, self.named + 1
        raw = RawBSONDocument(bson.encode({"id": session_uuid(self.owner, slot)}, codec_options=_CODEC),
                              codec_options=_CODEC)
        return ServerSession(raw, time.monotonic())

    def release(self, session: ServerSession, timeout_minutes: float) -> None:
        if session.is_dirty:  # its connection broke mid-command: a transaction may be open on the server
            if self.on_lost is not None:
                self.on_lost([session.session_id["id"]])
            return
        if session.is_about_to_expire(timeout_minutes):
            return
        self._free.appendleft(session)

    def all_ids(self) -> list[uuid.UUID]:
        return [session_uuid(self.owner, slot) for slot in range(self.named)]


class SessionPool(ConnectionPool):
    """txmongo's pool, handing out :class:`NamedSessions` instead of random ones.

    It can also be held (:meth:`hold`): while the embedded database is restarted on purpose, a command
    waits for a connection until :meth:`release` (or its call's deadline) instead of meeting a closed one.
    """

    sessions: NamedSessions
    _held: list[defer.Deferred[None]] | None = None  # None: open; else the commands waiting for release()

    def getprotocol(self) -> defer.Deferred[Any]:
        if self._held is None:
            return super().getprotocol()
        held = self._held

        def cancel(d: defer.Deferred[None]) -> None:  # the call's deadline: it stops waiting
            if d in held:
                held.remove(d)

        waiting: defer.Deferred[None] = defer.Deferred(cancel)
        held.append(waiting)
        return waiting.addCallback(lambda _: super(SessionPool, self).getprotocol())

    def hold(self) -> None:
        if self._held is None:
            self._held = []

    def release(self) -> None:
        held, self._held = self._held or [], None
        for waiting in held:
            waiting.callback(None)

    def inflight(self) -> int:
        """Commands sent and not yet answered, over every connection."""
        return sum(factory.instance.inflight() for factory in self.getprotocols() if factory.instance is not None)

    def _acquire_server_session(self) -> ServerSession:
        return self.sessions.acquire(self._logical_session_timeout_minutes)

    def _return_server_session(self, server_session: ServerSession) -> None:
        self.sessions.release(server_session, self._logical_session_timeout_minutes)


def lsids(ids: list[uuid.UUID]) -> list[dict]:
    return [{"id": Binary(u.bytes, 4)} for u in ids]


class Leases:
    """This process's lease, beaten every ``BEAT_SECONDS``; the leases of dead processes, ended."""

    def __init__(self, store: MongoStore, sessions: NamedSessions, reactor: Any) -> None:
        self.store = store
        self.sessions = sessions
        self.reactor = reactor
        self.beats = 0
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.pid_namespace = _pid_namespace()
        self._seen: dict[str, tuple[tuple, float]] = {}  # owner -> ((beat, slots), when it last changed)
        self._loop: task.LoopingCall | None = None
        self.ended = 0  # leases of dead processes ended by this one
        self.lost: set[uuid.UUID] = set()  # this process's sessions to kill, not yet confirmed by the database

    def start(self) -> None:
        self._loop = task.LoopingCall(self._tick)
        self._loop.clock = self.reactor
        self._loop.start(BEAT_SECONDS, now=True).addErrback(lambda f: None)

    def _tick(self) -> defer.Deferred[None]:
        d = defer.ensureDeferred(self.beat())
        d.addErrback(lambda f: None)  # the database is away: the store's own checks say so
        return d

    async def beat(self) -> None:
        await self._kill_lost()  # sessions lost while the database did not answer: once it answers again
        leases = self.store[LEASES]
        self.beats += 1
        await leases.update_one({"_id": self.sessions.owner}, {"$set": {
            "slots": self.sessions.declared, "beat": self.beats, "host": self.host, "pid": self.pid,
            "pidNamespace": self.pid_namespace,
        }}, upsert=True)
        now = self.reactor.seconds()
        present = set()
        for lease in await leases.find({}):
            owner = lease["_id"]
            if owner == self.sessions.owner:
                continue
            present.add(owner)
            mark = (lease.get("beat"), lease.get("slots"))
            seen = self._seen.get(owner)
            if seen is None or seen[0] != mark:
                self._seen[owner] = (mark, now)
                if not self._gone_from_this_host(lease):
                    continue
            elif now - seen[1] < STALE_SECONDS:
                continue
            await self._end(lease)
            present.discard(owner)
        self._seen = {owner: seen for owner, seen in self._seen.items() if owner in present}

    def _gone_from_this_host(self, lease: dict) -> bool:
        """The lease's process ran on this host, in this PID namespace, and is not running any more."""
        if lease.get("host") != self.host or not self.pid_namespace or lease.get("pidNamespace") != self.pid_namespace:
            return False
        pid = lease.get("pid")
        if not isinstance(pid, int) or pid <= 0 or pid == self.pid:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # someone else's process: alive
            return False
        return False

    async def _end(self, lease: dict) -> None:
        owner, slots = str(lease["_id"]), int(lease.get("slots") or 0)
        await self.kill([session_uuid(owner, slot) for slot in range(slots)])
        await self.store[LEASES].delete_one({"_id": lease["_id"], "beat": lease.get("beat")})
        self._seen.pop(owner, None)
        self.ended += 1
        log.info("ended the sessions of a daemon that stopped ({host} pid {pid}): its open transactions are "
                 "aborted", host=lease.get("host"), pid=lease.get("pid"))

    async def kill_lost(self, ids: list[uuid.UUID]) -> None:
        """Kill sessions of this process that may hold a transaction open; kept and sent again with every beat
        until the database confirms it.  (Without that, a transaction whose abort and kill were both lost while
        the database was frozen held its documents until the server's 60 s lifetime, and every retry of the
        same buyer's or seller's flow answered UNAVAILABLE meanwhile.)"""
        self.lost.update(ids)
        await self._kill_lost()

    async def _kill_lost(self) -> None:
        if not self.lost:
            return
        ids = list(self.lost)
        await self.kill(ids)
        self.lost.difference_update(ids)

    async def end_lost(self) -> None:
        """Before a transaction runs again after a write conflict: end this process's lost sessions now rather
        than at the next beat, since the conflict may be with one of their transactions (the database has just
        come back).  Never raises: the beat tries again."""
        try:
            await self._kill_lost()
        except defer.CancelledError:
            raise
        except Exception:  # noqa: BLE001,S110 - the database is still away: the next beat sends it again
            pass

    async def kill(self, ids: list[uuid.UUID]) -> None:
        for start in range(0, len(ids), KILL_CHUNK):
            await self.store.command({"killSessions": lsids(ids[start:start + KILL_CHUNK])}, database="admin")

    async def stop(self) -> None:
        """Stop beating; end this process's sessions and delete its lease (best effort: the database may be away)."""
        if self._loop is None:
            return
        if self._loop.running:
            self._loop.stop()
        try:
            ids = self.sessions.all_ids()
            for start in range(0, len(ids), KILL_CHUNK):
                await self.store.command({"endSessions": lsids(ids[start:start + KILL_CHUNK])}, timeout=1.0,
                                         database="admin")
            await defer.ensureDeferred(self.store[LEASES].delete_one({"_id": self.sessions.owner})).addTimeout(
                1.0, self.reactor)
        except Exception:  # noqa: BLE001,S110 - the database is away: the others end them once the lease is stale
            pass
