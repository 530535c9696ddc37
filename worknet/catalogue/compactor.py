"""The compaction loop: a service of the daemon's tree (:func:`worknet.app.build_app`)."""

from __future__ import annotations

from typing import Any

from twisted.application import service
from twisted.internet import defer, task

from worknet.catalogue.index import BASE, STATE
from worknet.catalogue.storage import BATCH, catalogue_of
from worknet.logs import logger

log = logger("worknet.catalogue")

COMPACT_SECONDS = 0.2  # how often each daemon looks for marked gigs
STOP_SECONDS = 2.0  # at shutdown, a round in progress may end within this before the store stops


class Compactor(service.Service):
    """Every ``interval`` seconds, fold marked gigs into the base (when this daemon gets the lease).

    A service of the daemon's tree, before the store in it: stopping it ends
    the loop and waits (at most ``STOP_SECONDS``) for a round in progress,
    which releases its lease, before the store stops.
    """

    name = "catalogue-compactor"

    def __init__(self, store: Any, reactor: Any, interval: float = COMPACT_SECONDS) -> None:
        self.catalogue = catalogue_of(store)
        self.store = store
        self.reactor = reactor
        self.interval = interval
        self.loop = task.LoopingCall(self._tick)
        self.loop.clock = reactor
        self.done: defer.Deferred | None = None
        self.checked = False

    def startService(self) -> None:
        super().startService()
        self.done = self.loop.start(self.interval, now=False)

    def stopService(self) -> defer.Deferred[None]:
        """No new round; one in progress may end (its errors are logged as warnings), for ``STOP_SECONDS`` at most."""
        super().stopService()
        ended: defer.Deferred[None] = defer.Deferred()
        if self.loop.running:
            self.loop.stop()
        if self.done is None or self.done.called:
            ended.callback(None)
            return ended

        def pass_on(result: Any) -> Any:
            if not ended.called:
                ended.callback(None)
            return result

        self.done.addBoth(pass_on)
        ended.addTimeout(STOP_SECONDS, self.reactor)
        ended.addErrback(lambda _failure: None)  # still running: it ends by itself, or fails on the stopped store
        return ended

    def _tick(self) -> defer.Deferred:
        return defer.ensureDeferred(self._round())

    async def _round(self) -> None:
        if not self.store.is_ready or not self.store.running:
            return
        try:
            if not self.checked:
                self.checked = True
                if await self.store[BASE].find_one({"_id": STATE}) is None and await self.store["gigs"].find_one(
                        {}, projection={"_id": 1}) is not None:
                    log.warn("the catalogue index is missing while the database has gigs (a database from "
                             "before the index): search catches up by itself, gig by gig; "
                             "`python -m worknet.catalogue rebuild` does it faster")
            while await self.catalogue.compact() >= BATCH and self.loop.running:
                pass  # behind: the next batch at once (every step awaits the database, so calls go on)
        except Exception as e:  # the database went away, or the daemon is stopping: next round
            log.warn("catalogue compaction postponed ({reason}: {detail})", reason=type(e).__name__, detail=str(e)[:200])
