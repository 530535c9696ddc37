"""Search follows the database, whoever writes it.

The catalogue index (:mod:`worknet.catalogue`) learns of this daemon's own gig
writes from the marks they leave before they return (the next call on any
daemon sees them).  Everything else -- the Node backend's models, an operator
in mongosh or Compass, a migration -- reaches it through the ``gigs``
collection's change stream (:mod:`worknet.store.changes`): one daemon at a
time (under a lease in ``catalogueLease``) reads the stream and marks every
gig whose searchable fields changed; searches judge marked gigs from their
documents at once, and compaction folds them in.  So another writer's change
is seen by search within about a second (the stream's wait, the mark).

The stream's position (its resume token) is kept in the lease document after
each batch is marked, so a restart, a failover, or another daemon taking over
continues where the last holder stopped: nothing written in between is
missed.  Marking is idempotent, so a batch marked twice (a holder that died
between the marks and the save) costs one more fold, nothing else.

When no position can be used -- the first start on a database, a history
that no longer reaches the saved position (the oplog rolled past it), a
dropped or renamed collection -- the follower starts a new stream at once and
*reconciles* beside it: it reads every gig and every index row and marks the
gigs whose index entry differs from their document.  Searches stay right all
along (only the differing gigs were wrong, and once marked they are judged
from their documents); ``/health`` says ``catching up`` until it ends.

A server without change streams (a standalone ``mongod``) is told once at
startup, and the holder reconciles periodically instead (every
``RECONCILE_SECONDS``, or thirty times the last reconciliation's duration if
that is longer), so another writer's change is seen within that period;
``python -m worknet.catalogue rebuild`` catches up at once.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import ObjectId
from twisted.application import service
from twisted.internet import defer, task

from worknet.catalogue import GIG_FIELDS, LEASES, ROWS, Row, catalogue_of, mark_many, same_columns, take_lease
from worknet.logs import logger
from worknet.store.changes import ChangeStream, HistoryLost, Unsupported

log = logger(__name__)

STREAM = "stream"  # the lease document of the follower; it keeps the stream's position too
LEASE_SECONDS = 6.0  # a holder that stops renewing is replaced after this long
RENEW_SECONDS = 2.0  # the holder renews (and saves its position) at least this often
STANDBY_SECONDS = 1.0  # how often the other daemons look whether the lease is free
STOP_SECONDS = 1.0  # at shutdown, the lease is handed over within this, or left to run out
RETRY_SECONDS = 1.0  # after a failure (the database went away): open the stream again
RECONCILE_SECONDS = 60.0  # without change streams: the period of reconciliation
COOPERATE_EVERY = 500  # gigs compared between two returns to the reactor
BATCH_DOCS = 1000  # documents per batch of a reconciliation's reads (a batch is decoded in one reactor step)
WATCHED = frozenset(GIG_FIELDS)  # an update that touches none of these leaves search as it was
ENDS = frozenset({"drop", "rename", "dropDatabase", "invalidate"})  # the stream ends: start a new one


UNSUPPORTED_STATUS = "reconciling periodically (the database has no change streams)"


class StreamEnded(Exception):
    """The collection was dropped or renamed: the stream is invalid; start anew and reconcile."""


def changed_gigs(events: Iterable[dict]) -> list[ObjectId]:
    """The gigs whose searchable fields ``events`` changed, once each, in order."""
    found: dict[Any, None] = {}
    for event in events:
        kind = event.get("operationType")
        if kind in ENDS:
            raise StreamEnded(f"the gigs collection saw {kind}")
        key = (event.get("documentKey") or {}).get("_id")
        if key is None:
            continue
        if kind == "update":
            described = event.get("updateDescription") or {}
            fields = [*(described.get("updatedFields") or {}), *(described.get("removedFields") or [])]
            if not any(name.split(".", 1)[0] in WATCHED for name in fields):
                continue
        found[key] = None
    return list(found)


async def reconcile(store: Any, reactor: Any) -> int:
    """Mark every gig whose index entry differs from its document (and every entry whose gig is gone);
    returns how many.  Reads every gig and every index row once, in batches, returning to the reactor
    between them."""
    catalogue = catalogue_of(store)
    view = await catalogue.refresh()
    await catalogue.load(view, [])  # every column chunk
    rows: dict[Any, tuple[int, frozenset[str]]] = {}
    async for batch in store[ROWS].find({}, batch_size=BATCH_DOCS).batches():
        for row in batch:
            rows[row["_id"]] = (int(row["seq"]), frozenset(row["keys"]))
        await task.deferLater(reactor, 0, lambda: None)
    differing: list[Any] = []
    seen: set[Any] = set()
    compared = 0
    async for batch in store["gigs"].find({}, projection=GIG_FIELDS, batch_size=BATCH_DOCS).batches():
        for doc in batch:
            gig_id = doc["_id"]
            seen.add(gig_id)
            row = Row.readable(doc) or Row.absent(gig_id)
            indexed = rows.get(gig_id)
            if indexed is None:
                if row.keys:
                    differing.append(gig_id)
            elif frozenset(row.keys) != indexed[1] or not same_columns(view.columns, indexed[0], row):
                differing.append(gig_id)
            compared += 1
            if compared % COOPERATE_EVERY == 0:
                await task.deferLater(reactor, 0, lambda: None)
    differing += [gig_id for gig_id in rows if gig_id not in seen]
    await mark_many(store, differing)
    return len(differing)


class Follower(service.Service):
    """The gigs change stream, followed by one daemon at a time, into catalogue marks.

    A service of the daemon's tree, before the store in it: stopping it hands
    the lease over while the store still runs.
    """

    name = "search-follower"

    def __init__(self, store: Any, reactor: Any) -> None:
        self.store = store
        self.reactor = reactor
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{ObjectId()}"
        self.token: ObjectId | None = None  # this holder's fencing token while it holds the lease
        self.stream: ChangeStream | None = None
        self._status = "starting"
        self.catching_up: str | None = None
        self.unsupported: str | None = None
        self.next_reconcile = 0.0
        self.done: defer.Deferred | None = None
        self._waiting_ready: defer.Deferred[None] | None = None

    @property
    def status(self) -> str:
        """following, standby (another daemon follows), catching up, reconciling periodically (no change
        streams); the last two are a warning of ``/health``."""
        return self._status

    @status.setter
    def status(self, value: str) -> None:
        self._status = value
        if value in ("catching up", UNSUPPORTED_STATUS):
            self.store.warnings["search"] = f"search {value}: other writers' changes may show late"
        else:
            self.store.warnings.pop("search", None)

    def startService(self) -> None:
        super().startService()  # self.running: the loop goes on while it is true
        self.done = defer.ensureDeferred(self._run())

    def stopService(self) -> defer.Deferred:
        """Stop following and hand the lease over (waits at most ``STOP_SECONDS``: the database may be
        going away too, and then the lease runs out by itself)."""
        super().stopService()
        if self._waiting_ready is not None:
            self._waiting_ready.cancel()
        if self.token is None:
            return defer.succeed(None)
        release = defer.ensureDeferred(self.store[LEASES].update_one(
            {"_id": STREAM, "holder": self.holder, "token": self.token},
            {"$set": {"until": datetime.fromtimestamp(0, UTC)}}))
        release.addTimeout(STOP_SECONDS, self.reactor)
        release.addErrback(lambda _failure: None)
        return release

    async def _sleep(self, seconds: float) -> None:
        await task.deferLater(self.reactor, seconds, lambda: None)

    async def _until_ready(self) -> None:
        """Until the store is ready (it says when), or this service stops; while the store refuses the
        database (credentials, an index conflict), look again now and then."""
        ready = self.store.wait_ready()
        self._waiting_ready = ready
        try:
            await ready
        except defer.CancelledError:
            pass  # stopped
        except Exception:  # refused for now
            await self._sleep(RETRY_SECONDS)
        finally:
            self._waiting_ready = None

    async def _run(self) -> None:
        await self._loop()

    async def _loop(self) -> None:
        failure: str | None = None
        while self.running:
            try:
                if not self.store.is_ready:
                    await self._until_ready()
                    continue
                if not await self._take_lease():
                    self.status = "standby"
                    await self._sleep(STANDBY_SECONDS)
                    continue
                if self.unsupported is not None:
                    await self._reconcile_periodically()
                else:
                    await self._follow()
                failure = None
            except Unsupported as e:
                self.unsupported = str(e)
                log.warn("the database has no change streams ({reason}): search sees other writers' changes to "
                         "gigs only by a reconciliation every {seconds:.0f} s or more (python -m worknet.catalogue "
                         "rebuild catches up at once); a replica set or Atlas has them", reason=str(e)[:200],
                         seconds=RECONCILE_SECONDS)
            except Exception as e:  # the database went away, the daemon is stopping: start again
                if not self.running:
                    break
                reason = f"{type(e).__name__}: {str(e)[:200]}"
                if reason != failure:
                    log.warn("search stops following the database for a moment ({reason}); it resumes where it "
                             "stopped", reason=reason)
                failure = reason
                await self._sleep(RETRY_SECONDS)

    async def _follow(self) -> None:
        lease = await self.store[LEASES].find_one({"_id": STREAM}) or {}
        resume = lease.get("resume")
        stream = ChangeStream(self.store, "gigs", resume)
        try:
            try:
                events = await stream.open()
                if resume is None:
                    self._catch_up("no saved stream position (a first start)")
            except HistoryLost as e:
                log.warn("the database no longer holds the gigs' change history after the saved position ({reason}):"
                         " search catches up by comparing every gig with the index", reason=str(e)[:200])
                stream = ChangeStream(self.store, "gigs")
                events = await stream.open()
                self._catch_up("the change history after the saved position is gone")
            self.stream = stream
            if self.status != "catching up":
                self.status = "following"
            saved = self.reactor.seconds()
            while self.running:
                try:
                    gigs = changed_gigs(events)
                except StreamEnded as e:
                    await self._save(None)
                    self._catch_up(str(e))
                    return
                if gigs:
                    await mark_many(self.store, gigs)
                if gigs or events or self.reactor.seconds() - saved >= RENEW_SECONDS:
                    if not await self._save(stream.token):
                        return  # another daemon follows now
                    saved = self.reactor.seconds()
                events = await stream.next()
        finally:
            self.stream = None
            await stream.close()

    def _catch_up(self, why: str) -> None:
        """Reconcile beside the new stream (once at a time); /health says so until it ends."""
        if self.catching_up is not None or not self.running:
            return
        self.catching_up = why
        self.status = "catching up"
        began = time.monotonic()

        def ended(result: Any) -> None:
            self.catching_up = None
            if self.status == "catching up":
                self.status = "following"
            if isinstance(result, int):
                log.info("search caught up with the database: compared every gig with the index, re-indexed "
                         "{n} that differed ({seconds:.1f} s; {why})", n=result, seconds=time.monotonic() - began,
                         why=why)
            elif self.running:  # (stopping: the store went away under it, nothing to say or retry)
                log.warn("search could not catch up with the database ({reason}); it tries again",
                         reason=result.getErrorMessage()[:200])
                self.reactor.callLater(RETRY_SECONDS, self._catch_up, why)

        defer.ensureDeferred(reconcile(self.store, self.reactor)).addBoth(ended)

    async def _reconcile_periodically(self) -> None:
        """Without change streams: reconcile now and then, holding the lease meanwhile."""
        self.status = UNSUPPORTED_STATUS
        if self.reactor.seconds() >= self.next_reconcile:
            began = self.reactor.seconds()
            marked = await reconcile(self.store, self.reactor)
            took = self.reactor.seconds() - began
            self.next_reconcile = self.reactor.seconds() + max(RECONCILE_SECONDS, 30 * took)
            if marked:
                log.info("search reconciled with the database: {n} gigs changed by other writers ({seconds:.1f} s)",
                         n=marked, seconds=took)
        if await self._save(None):
            await self._sleep(RENEW_SECONDS)

    # -- the lease, fenced ------------------------------------------------------------

    async def _take_lease(self) -> bool:
        self.token = await take_lease(self.store, STREAM, self.holder, LEASE_SECONDS)
        return self.token is not None

    async def _save(self, resume: dict | None) -> bool:
        """Renew the lease and keep the stream's position, if the lease is still this holder's."""
        moment = datetime.now(UTC)
        fields: dict[str, Any] = {"until": moment + timedelta(seconds=LEASE_SECONDS)}
        if resume is not None or self.unsupported is None:
            fields["resume"] = resume
        result = await self.store[LEASES].update_one({"_id": STREAM, "holder": self.holder, "token": self.token},
                                                     {"$set": fields})
        return bool(result.matched_count)

