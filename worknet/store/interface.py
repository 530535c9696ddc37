"""What the services may ask of the database: the :class:`Store` interface and its :class:`Capabilities`.

The services, the earnings ledger (:mod:`worknet.money`) and the XML-RPC
plumbing see the database only through :class:`Store`;
:class:`~worknet.store.pool.MongoStore` is its implementation.  The servers
the daemon runs on differ: a real MongoDB (a replica set, or a standalone
server without transactions) and the embedded SecantusDB, whose query engine
serves one index per query, none at all under a top-level ``$or``, scans the
whole collection for every ``findAndModify`` and re-checks a long ``$in`` list
for each candidate.  Each such difference is decided in ONE store helper, from
the :class:`Capabilities` the store found when it connected; a service calls
the helper and never asks which server it runs on.

* :meth:`Store.transaction`: a unit of work, atomic when the server has
  transactions, else run once as plain writes that the caller guards;
  :meth:`Store.undo_outside_transaction` and :meth:`Store.finish_interrupted`
  are the two halves of that fallback a caller needs.
* :meth:`Store.update_and_fetch` / :meth:`Store.delete_and_fetch`: one
  document changed and returned, as ``findAndModify`` where that is indexed.
* :meth:`Store.find_first`, :meth:`Store.matches_any`,
  :meth:`Store.aggregate_each`: several alternatives, each its own indexed
  query, never one ``$or`` of them.
* :meth:`Store.find_by_ids`: documents by a list of ids, in chunks.
* ``store[name].find_by_id``: one document by ``_id`` with conditions.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar

from twisted.internet import defer
from txmongo.sessions import ClientSession

if TYPE_CHECKING:
    from worknet.store.pool import Collection

T = TypeVar("T")

Session: TypeAlias = ClientSession | None  # the transaction a step runs in; None: plain writes (no transactions)
Steps: TypeAlias = Callable[[Session], Awaitable[T]]  # a unit of work, given the session to pass to each of its writes


@dataclass(frozen=True)
class Capabilities:
    """What the connected server offers, found once when it first answers (as Synapse's database engines do).

    ``transactions``: multi-document transactions (a replica set or a
    ``mongos``); without them :meth:`Store.transaction` runs its steps once, as
    plain writes.  ``indexed_find_and_modify``: ``findAndModify`` uses the
    indexes of its filter (SecantusDB 0.7 rewrites the filter into an ``$and``
    and scans the whole collection instead).  ``point_lookups``: a filter of
    ``_id`` alone is read far more cheaply than ``_id`` with other fields
    (SecantusDB looks for an index for each field first), so the other fields
    are better checked in the daemon on the one document read.
    """

    transactions: bool = False
    indexed_find_and_modify: bool = True
    point_lookups: bool = False

    @classmethod
    def of(cls, hello: dict, build_info: dict) -> Capabilities:
        """From the server's ``hello`` and ``buildInfo`` answers."""
        secantus = "secantusVersion" in build_info
        return cls(
            transactions=bool(hello.get("setName") or hello.get("msg") == "isdbgrid"),
            indexed_find_and_modify=not secantus,
            point_lookups=secantus,
        )


class Store(Protocol):
    """The database as the services, the ledger and the XML-RPC dispatcher use it.

    Collections (``store[name]``) are txmongo collections with one addition,
    ``find_by_id``; every other method here hides a difference between
    servers or is the daemon's view of the database's state.
    """

    @property
    def capabilities(self) -> Capabilities:
        """What the server offers (read by the store's helpers, not by the services)."""

    @property
    def running(self) -> int:
        """Whether the store's service runs (false once the daemon stops: calls answer UNAVAILABLE)."""

    @property
    def is_ready(self) -> bool:
        """The startup indexes exist: the services may read and write."""

    def __getitem__(self, collection: str) -> Collection:
        """The collection ``collection`` of the daemon's database."""

    def wait_ready(self) -> defer.Deferred[None]:
        """A new Deferred that fires once the startup indexes exist (at once afterwards)."""

    async def ping(self) -> bool:
        """True when the database answered a ``ping`` recently. Never raises."""

    def storage_failure(self, error: BaseException) -> bool:
        """Whether ``error`` is the database failing for lack of disk space (then logged once)."""

    async def transaction(self, steps: Steps[T]) -> T:
        """Run ``steps(session)`` atomically: in one transaction (retried on write conflicts) when the
        server has transactions, else once as plain writes (``session`` None) guarded by the caller."""

    async def undo_outside_transaction(self, session: Session, undo: Callable[[], Awaitable[None]]) -> None:
        """Steps about to raise call this with an ``undo`` of what they already wrote: inside a
        transaction the abort discards those writes and nothing runs; outside one ``undo`` does."""

    async def finish_interrupted(self, repair: Callable[[], Awaitable[None]]) -> None:
        """Run ``repair`` -- finishing a flow a crash may have stopped half-way -- when units of work are
        not atomic on this server (no transactions); with transactions there is nothing half-done."""

    async def update_and_fetch(
        self, collection: str, filter: dict, update: dict | list, *,
        projection: dict | None = None, session: Session = None,
        alongside: Callable[[], Coroutine[Any, Any, Any]] | None = None,
    ) -> dict | None:
        """Update the one document ``filter`` selects (it names its ``_id``) and return it as it is now."""

    async def delete_and_fetch(self, collection: str, filter: dict, *, projection: dict | None = None) -> dict | None:
        """Delete the one document ``filter`` selects (it names its ``_id``) and return it; None when none."""

    async def find_first(self, collection: str, filters: Sequence[dict], *,
                         projection: dict | None = None) -> tuple[int, dict] | None:
        """The first of ``filters``, in order, that matches a document: its position and the document."""

    async def matches_any(self, collection: str, filters: Sequence[dict]) -> bool:
        """Whether any of ``filters`` matches a document."""

    async def find_by_ids(self, collection: str, ids: Sequence[Any], query: dict | None = None, *,
                          projection: dict | None = None) -> list[dict]:
        """The documents whose ``_id`` is in ``ids`` and that match ``query``, in no particular order."""

    async def aggregate_each(self, collection: str, pipelines: Sequence[list[dict]]) -> list[list[dict]]:
        """Each pipeline's result, in order; each pipeline starts with its own indexed ``$match``."""
