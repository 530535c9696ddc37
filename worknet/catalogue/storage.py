"""The catalogue's database I/O (the daemon's side, txmongo): marks, leases, searches and compaction."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

from bson import Binary, ObjectId
from pymongo import ReplaceOne, UpdateOne
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pyroaring import BitMap
from txmongo import filter as qf

from worknet.catalogue.index import (
    BASE,
    COLUMN_CHUNK,
    DIRTY,
    GIG_FIELDS,
    LEASES,
    ROWS,
    STATE,
    Plan,
    Query,
    Row,
    View,
    _row_or_warn,
    column_id,
)
from worknet.logs import logger

T = TypeVar("T")
log = logger("worknet.catalogue")

LEASE_SECONDS = 30.0
# fold when this many gigs are marked, or the oldest mark is this old: every fold rewrites the
# bitmap chunks of all the words it touches, so folding a few gigs at a time costs the writes
FOLD_AT = 100
FOLD_AFTER = 1.0
BATCH = 500  # gigs folded in per compaction
BY_ID = qf.sort(qf.ASCENDING("_id"))  # the markers in _id order: an index scan on MongoDB, not a collection scan
ID_CHUNK = 100  # ids per $in (SecantusDB re-checks each candidate against the list)


class LeaseLost(Exception):
    """A fold's compaction lease ran out and another holder took it: the fold stops writing."""


# -- the async side (the daemon, txmongo) -------------------------------------------

def _chunks(items: Sequence[Any], size: int = ID_CHUNK) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


async def mark(store: Any, gig_ids: Iterable[ObjectId], session: Any = None) -> None:
    """Mark gigs as changed for the catalogue (one small upsert each)."""
    moment = datetime.now(UTC)
    for gig_id in gig_ids:
        await store[DIRTY].update_one({"_id": gig_id}, {"$inc": {"rev": 1}, "$min": {"at": moment}},
                                      upsert=True, session=session)


async def take_lease(store: Any, name: str, holder: str, seconds: float) -> ObjectId | None:
    """Take (or renew) the lease ``name`` in ``catalogueLease`` for ``holder``: its new fencing token, or None
    while another holder's lease runs.  Every take gets a new token, which the holder's writes check."""
    moment = datetime.now(UTC)
    token = ObjectId()
    try:
        result = await store[LEASES].update_one(
            {"_id": name, "$or": [{"until": {"$lt": moment}}, {"holder": holder}]},
            {"$set": {"holder": holder, "token": token, "until": moment + timedelta(seconds=seconds)}},
            upsert=True)
    except DuplicateKeyError:
        return None  # held by another daemon
    return token if result.matched_count or result.upserted_id is not None else None


async def mark_many(store: Any, gig_ids: Sequence[ObjectId]) -> None:
    """Mark many gigs at once (the change stream's batches, a reconciliation): one unordered bulk upsert
    per ``PART_OPS`` gigs, each mark its own atomic write like :func:`mark`'s -- not a transaction, which
    would make every concurrent mark of the same gigs (their own writes) conflict with it."""
    moment = datetime.now(UTC)
    for part in _chunks(gig_ids, PART_OPS):
        ops = [UpdateOne({"_id": gig_id}, {"$inc": {"rev": 1}, "$min": {"at": moment}}, upsert=True)
               for gig_id in part]
        try:
            await store[DIRTY].bulk_write(ops, ordered=False)
        except BulkWriteError as e:  # two upserts inserted the same marker at once: the loser updates it now
            errors = e.details.get("writeErrors", [])
            if not errors or any(error.get("code") != 11000 for error in errors):
                raise
            await store[DIRTY].bulk_write([ops[error["index"]] for error in errors], ordered=False)


PART_OPS = 200
PART_BYTES = 4 << 20


def _parts(docs: Sequence[dict]) -> Iterable[list[ReplaceOne]]:
    """Upserting replacements of ``docs`` (by ``_id``), in parts of at most ``PART_OPS`` documents
    and about ``PART_BYTES`` of binary payload."""
    part: list[ReplaceOne] = []
    size = 0
    for doc in docs:
        weight = sum(len(value) for value in doc.values() if isinstance(value, bytes))
        if part and (len(part) >= PART_OPS or size + weight > PART_BYTES):
            yield part
            part, size = [], 0
        part.append(ReplaceOne({"_id": doc["_id"]}, doc, upsert=True))
        size += weight
    if part:
        yield part


async def _find_by_ids(collection: Any, ids: Sequence[Any], projection: dict | None = None) -> list[dict]:
    found: list[dict] = []
    for part in _chunks(ids):
        found += await collection.find({"_id": {"$in": list(part)}}, projection=projection)
    return found


def _aware(moment: datetime | None) -> datetime:
    if moment is None:
        return datetime.fromtimestamp(0, UTC)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def _empty_state() -> dict:
    return {"version": 0, "nextSeq": 0, "epoch": "0"}


class Catalogue:
    """The catalogue of one daemon: searches, and compaction."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.view = View()
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{ObjectId()}"
        self.token: ObjectId | None = None  # the fencing token of the lease this daemon holds
        self.compacting = False

    async def refresh(self, always_list: bool = False) -> View:
        """Bring the view to the database's current version (one read when nothing changed)."""
        base = self.store[BASE]
        state = await base.find_one({"_id": STATE}) or _empty_state()
        if state.get("epoch", "0") != self.view.epoch:
            self.view = View(state.get("epoch", "0"))  # rebuilt: start again
        view = self.view
        if state["version"] != view.version or always_list:
            if view.version >= 0:
                changed = await base.find({"v": {"$gt": view.version}}, projection={"_id": 1})
                view.invalidate(doc["_id"] for doc in changed)
            view.version = state["version"]
        view.next_seq = max(view.next_seq, int(state.get("nextSeq", 0)))
        return view

    async def load(self, view: View, keys: Iterable[str]) -> None:
        bitmap_ids = view.missing_bitmaps(keys)
        column_chunks = view.missing_columns()
        wanted = bitmap_ids + [column_id(view.epoch, c) for c in column_chunks]
        if wanted:
            docs = await _find_by_ids(self.store[BASE], wanted)
            view.take(docs, bitmap_ids, column_chunks)

    async def search(self, query: Query, page: int, limit: int) -> tuple[list[ObjectId], int]:
        """The ids of one page of ``query`` in order, and the total."""
        # markers first, then the base (see the module docstring)
        marked = [doc["_id"] for doc in await self.store[DIRTY].find({}, projection={"_id": 1}, sort=BY_ID)]
        view = await self.refresh()
        await self.load(view, query.keys())
        changed = [row for doc in await _find_by_ids(self.store["gigs"], marked, GIG_FIELDS)
                   if (row := Row.readable(doc)) is not None]
        seqs = view.candidates(query, marked)
        extra = sorted((row for row in changed if query.admits(row)), key=lambda r: r.sort_key(query.sort))
        total = len(seqs) + len(extra)
        skip = (page - 1) * limit
        if skip >= total:
            return [], total
        best = view.columns.top(seqs, query.sort, min(skip + limit, len(seqs)))
        if not extra:
            return [view.columns.oid(int(s)) for s in best[skip:skip + limit]], total
        rows = [view.columns.row(int(s)) for s in best] + extra
        rows.sort(key=lambda r: r.sort_key(query.sort))
        return [row.oid for row in rows[skip:skip + limit]], total

    # -- compaction ----------------------------------------------------------------

    async def _take_lease(self) -> bool:
        """Take (or renew) the compaction lease; each take gets a new fencing token (see :meth:`_fenced`)."""
        token = await take_lease(self.store, "compaction", self.holder, LEASE_SECONDS)
        if token is not None:
            self.token = token
        return token is not None

    async def _release_lease(self) -> None:
        await self.store[LEASES].update_one(
            {"_id": "compaction", "holder": self.holder, "token": self.token},
            {"$set": {"until": datetime.fromtimestamp(0, UTC)}},
        )

    async def _fenced(self, steps: Callable[[Any], Awaitable[Any]]) -> None:
        """Run ``steps(session)`` -- writes of the fold -- only while this fold still holds its lease.

        One transaction: it first renews the lease on the condition that the
        holder and the fencing token are still the ones this fold took, then
        writes.  A fold that outlived its lease (a slow database, a paused
        process) and whose lease another daemon took finds another token and
        stops with :class:`LeaseLost` before writing anything; if the take-over
        happens while the transaction runs, the two writes of the lease
        document conflict and the transaction is retried, then stops the same
        way.  So nothing a later holder wrote is overwritten by an older plan.
        (A server without transactions runs the check and the writes one after
        the other: the window is the time between two commands.)
        """
        async def guarded(session: Any) -> None:
            moment = datetime.now(UTC)
            held = await self.store[LEASES].update_one(
                {"_id": "compaction", "holder": self.holder, "token": self.token},
                {"$set": {"until": moment + timedelta(seconds=LEASE_SECONDS)}}, session=session)
            if held.matched_count == 0:
                raise LeaseLost("the catalogue lease ran out and another daemon took it; this fold stops")
            await steps(session)

        await self.store.transaction(guarded)

    async def _replace_all(self, collection: str, docs: Sequence[dict]) -> None:
        """The compaction's replacements, one fenced transaction per part.

        Each write command outside a transaction is its own commit, and the
        embedded database runs with ``--sync-on-commit``: a fold replaces hundreds
        of documents, one journal flush each, which starved every concurrent call
        (the figures: docs/DECISIONS.md, "Hot paths on the embedded database",
        "Compaction writes in transactions").  One transaction per part is one commit.  The index stays
        right either way: every step is idempotent and searches judge marked gigs
        from their documents until the markers go.
        """
        for part in _parts(docs):
            async def steps(session: Any, part: list[ReplaceOne] = part) -> None:
                await self.store[collection].bulk_write(part, ordered=False, session=session)

            await self._fenced(steps)

    async def compact(self, batch: int = BATCH, force: bool = False) -> int:
        """Fold up to ``batch`` marked gigs into the base; returns how many (0: none, or another holds the lease)."""
        if self.compacting:
            return 0
        self.compacting = True
        try:
            markers = await self.store[DIRTY].find({}, limit=batch, sort=BY_ID)
            if not markers or (len(markers) < FOLD_AT and not force and min(
                    _aware(m.get("at")) for m in markers) > datetime.now(UTC) - timedelta(seconds=FOLD_AFTER)):
                return 0  # a few recent marks: searches judge them directly; fold them with the next ones
            if not await self._take_lease():
                return 0
            try:
                await self._fold(markers)
            finally:
                await self._release_lease()
            return len(markers)
        finally:
            self.compacting = False

    async def _fold(self, markers: list[dict]) -> None:
        base, rows_collection = self.store[BASE], self.store[ROWS]
        view = await self.refresh(always_list=True)
        ids = [m["_id"] for m in markers]
        gigs = {doc["_id"]: doc for doc in await _find_by_ids(self.store["gigs"], ids, GIG_FIELDS)}
        old_rows = {doc["_id"]: doc for doc in await _find_by_ids(rows_collection, ids)}
        state = await base.find_one({"_id": STATE}) or _empty_state()
        epoch = view.epoch
        next_seq = max(int(state.get("nextSeq", 0)), view.next_seq)
        plan = Plan(epoch)
        new_rows: list[dict] = []
        for gig_id in ids:
            old = old_rows.get(gig_id)
            doc = gigs.get(gig_id)
            if old is None and doc is None:
                continue
            if old is not None:
                seq = int(old["seq"])
            else:
                seq, next_seq = next_seq, next_seq + 1
            row = Row.absent(gig_id) if doc is None else _row_or_warn(doc)
            plan.change(seq, old["keys"] if old else [], row.keys)
            plan.columns[seq] = row
            new_rows.append({"_id": gig_id, "seq": seq, "keys": row.keys})
        version = int(state["version"]) + 1
        # reserve the new seqs before anything refers to them
        await self._fenced(lambda session: base.update_one(
            {"_id": STATE}, {"$max": {"nextSeq": next_seq}, "$setOnInsert": {"version": 0, "epoch": epoch}},
            upsert=True, session=session))
        view.next_seq = max(view.next_seq, next_seq)
        await self.load(view, [])  # every column chunk (the compaction rewrites some)
        touched = list(plan.bitmaps)
        current = {doc["_id"]: doc for doc in await _find_by_ids(base, touched)}
        writes = []
        for _id in touched:
            doc = current.get(_id)
            bits = BitMap.deserialize(bytes(doc["bits"])) if doc else BitMap()
            adds, removes = plan.bitmaps[_id]
            bits.difference_update(BitMap(removes))
            bits.update(adds)
            view.bitmaps[_id] = bits
            writes.append({"_id": _id, "bits": Binary(bits.serialize()), "v": version})
        for seq, row in plan.columns.items():
            view.columns.put(seq, row)
        for chunk in sorted({seq // COLUMN_CHUNK for seq in plan.columns}):
            doc = view.columns.chunk_doc(epoch, chunk)
            view.loaded_columns.add(chunk)
            writes.append({**doc, "v": version})
        await self._replace_all(BASE, writes)
        await self._replace_all(ROWS, new_rows)
        await self._fenced(lambda session: base.update_one({"_id": STATE}, {"$set": {"version": version}},
                                                           session=session))
        view.version = version
        # markers whose rev moved were marked again meanwhile: they stay for the next round
        for part in _chunks(markers):
            unchanged = {"$or": [{"_id": m["_id"], "rev": m.get("rev")} for m in part]}

            async def forget(session: Any, unchanged: dict = unchanged) -> None:
                await self.store[DIRTY].delete_many(unchanged, session=session)

            await self._fenced(forget)


async def write_marked(store: Any, gig_ids: Sequence[ObjectId],
                       write: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``write(session)`` -- a write of gigs -- then mark ``gig_ids`` for the catalogue.

    The mark is a plain upsert after the write, not in a transaction with it:
    a transaction would make every two writes of one gig conflict (fifty
    concurrent ``update_rating`` calls then time out in retries), where the
    gig writes themselves are single atomic updates.  The mark is written
    before the call returns, so the next search judges the gig from its
    document; a compaction that folded the gig before the write is followed
    by another one for this mark.  A failed write may leave a harmless mark
    (the gig is indexed again as it is).  The one gap: the daemon dies
    between the write and the mark; then the gig's index entry is stale until
    its next write or a ``rebuild``.  ``session`` is None.
    """
    result = await write(None)
    await mark(store, gig_ids)
    return result


async def update_marked(store: Any, gig_id: ObjectId, filter: dict, update: dict | list, *,
                        projection: dict | None = None) -> dict | None:
    """``store.update_and_fetch`` of one gig, marked for the catalogue once the update is applied.

    The same order as :func:`write_marked` (write, then mark, both before the
    call returns), but the mark goes out together with the read of the
    updated gig instead of after it; nothing matched, nothing written: no mark.
    """
    found: dict | None = await store.update_and_fetch("gigs", filter, update, projection=projection,
                                                      alongside=lambda: mark(store, [gig_id]))
    return found


_CATALOGUES: WeakKeyDictionary[Any, Catalogue] = WeakKeyDictionary()


def catalogue_of(store: Any) -> Catalogue:
    """The one Catalogue (view and compaction) of this daemon's store."""
    found = _CATALOGUES.get(store)
    if found is None:
        found = _CATALOGUES[store] = Catalogue(store)
    return found
