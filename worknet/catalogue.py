"""The catalogue index: roaring bitmaps and sort columns over a dense gig number, kept in the database.

Why: SecantusDB plans one index per query, decodes every candidate in full
and sorts in Python (see docs/DECISIONS.md, "Catalogue index"), so a search
or a category browse over 100,000 gigs cannot be a query on the gigs
collection.  This module answers ``gigsService.search`` from a compact index
instead, on every server (MongoDB too), the same way.

The index (a base, written only by compaction) -- collection ``catalogue``:

* ``{_id: "state", version, nextSeq}``: every indexed gig has a dense
  sequence number ``seq``; ``version`` grows by one per compaction.
* bitmaps ``b:<key>:<chunk>`` (``bits``: a serialized ``pyroaring.BitMap`` of
  the seqs in ``[chunk * 65536, (chunk + 1) * 65536)``), keys: ``live``
  (active, not deleted), ``t:<word>`` (search terms), ``c:<categoryId>``,
  ``u:<sellerId>``;
* columns ``col:<chunk>`` (4,096 seqs each, little-endian arrays): price in
  cents, rating, review count, creation time (ms), delivery days and the
  gig's ``_id``: the range filters and every sort run over them;
* each doc carries ``v``, the version that last wrote it (indexed).

Collection ``catalogueRows``: one small document per indexed gig (its seq and
the keys it was indexed under), so that compaction can take a changed gig out
of the bitmaps it was in.

Changes: every write of a gig field that search reads also upserts a marker
``{_id: gigId, rev}`` in ``catalogueDirty`` after the gig write (see
:func:`write_marked` for why not in a transaction).  A search reads the markers FIRST, then the base: marked gigs are
taken out of the base result and judged from their current documents, so a
gig is found by the next call after its create or update returns, whatever
compaction is doing.  Compaction (one daemon at a time, under a lease in the
database; every daemon runs the loop) folds marked gigs into the base --
bitmaps and columns first, then rows, then ``state.version``, then it deletes
the markers whose ``rev`` did not change meanwhile.  Any step may be
interrupted: the next compaction redoes it (every step is idempotent) and
searches stay right because the gigs are still marked.

Each daemon keeps a cache of the base docs it has read, validated on every
call by one read of ``state``: when the version moved, the ids of the docs
written since (``v`` greater than the cached version) are read and those
entries dropped, so N daemons on one database answer alike.

``python -m worknet.catalogue rebuild`` rebuilds the whole index from the gigs
(pymongo, a progress bar; safe while daemons run).
"""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, TypeVar
from weakref import WeakKeyDictionary

import numpy as np
from bson import Binary, Decimal128, ObjectId
from pymongo import ReplaceOne, UpdateOne
from pymongo import errors as pymongo_errors
from pymongo.errors import BulkWriteError, DuplicateKeyError
from pyroaring import BitMap
from twisted.internet import defer, task
from txmongo import filter as qf

from worknet.logs import logger
from worknet.search import search_terms

T = TypeVar("T")
log = logger(__name__)

BASE = "catalogue"
ROWS = "catalogueRows"
DIRTY = "catalogueDirty"
STATE = "state"
LEASES = "catalogueLease"  # its own tiny collection: the lease update has an $or
BITMAP_CHUNK = 1 << 16
COLUMN_CHUNK = 4096
LEASE_SECONDS = 30.0
COMPACT_SECONDS = 0.2  # how often each daemon looks for marked gigs
# fold when this many gigs are marked, or the oldest mark is this old: every fold rewrites the
# bitmap chunks of all the words it touches, so folding a few gigs at a time costs the writes
FOLD_AT = 100
FOLD_AFTER = 1.0
BATCH = 500  # gigs folded in per compaction
BY_ID = qf.sort(qf.ASCENDING("_id"))  # the markers in _id order: an index scan on MongoDB, not a collection scan
ID_CHUNK = 100  # ids per $in (SecantusDB re-checks each candidate against the list)
GIG_FIELDS = {"title": 1, "description": 1, "tags": 1, "searchTerms": 1, "categoryId": 1, "userId": 1,
              "price": 1, "rating": 1, "reviewCount": 1, "createdAt": 1, "deliveryTime": 1,
              "isActive": 1, "deletedAt": 1}
COLUMNS = {"price": "<i8", "rating": "<f8", "reviews": "<i8", "created": "<i8", "delivery": "<i8"}

# sort name -> (column, descending) from the primary key down; _id breaks ties in the last direction
SORT_KEYS: dict[str, list[tuple[str, bool]]] = {
    "relevance": [("rating", True), ("reviews", True), ("created", True), ("_id", True)],
    "price_asc": [("price", False), ("_id", False)],
    "price_desc": [("price", True), ("_id", True)],
    "rating": [("rating", True), ("reviews", True), ("_id", True)],
    "newest": [("created", True), ("_id", True)],
}


# -- one gig as the index sees it -------------------------------------------------

class LeaseLost(Exception):
    """A fold's compaction lease ran out and another holder took it: the fold stops writing."""


class Malformed(ValueError):
    """A gig document another writer left in a shape the index cannot read (a string price, no title)."""


def cents(value: Any) -> int:
    """Money (Decimal128 or Decimal, at most 2 decimals) as integer cents."""
    amount = value.to_decimal() if isinstance(value, Decimal128) else value
    return int(amount.scaleb(2).to_integral_value())


def _stored_cents(value: Any) -> int:
    """A stored price as cents: Decimal128 as this daemon writes it, or a plain number as another
    writer may (a Mongoose ``Number``); anything else is malformed.  Never through float arithmetic:
    a double is read by its shortest decimal form."""
    if isinstance(value, bool) or value is None:
        raise Malformed("no price")
    if isinstance(value, float):
        value = Decimal(repr(value))
    elif isinstance(value, int):
        value = Decimal(value)
    elif isinstance(value, Decimal128):
        value = value.to_decimal()
    if not isinstance(value, Decimal) or not value.is_finite() or value < 0:
        raise Malformed(f"price is {type(value).__name__}, not a number")
    return cents(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _number(doc: dict, name: str, kind: type, default: Any) -> Any:
    value = doc.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise Malformed(f"{name} is {type(value).__name__}, not a number")
    return kind(value)


def _texts(doc: dict) -> tuple[str, str, list[str]]:
    title, description, tags = doc.get("title"), doc.get("description") or "", doc.get("tags") or []
    if not isinstance(title, str) or not title.strip():
        raise Malformed("no title")
    if not isinstance(description, str):
        raise Malformed("description is not a string")
    if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
        raise Malformed("tags are not a list of strings")
    return title, description, tags


def millis(moment: datetime | None) -> int:
    if moment is None:
        return 0
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


@dataclass
class Row:
    """The indexed view of one gig: its bitmap keys and its column values."""

    oid: ObjectId
    keys: list[str]
    price: int
    rating: float
    reviews: int
    created: int
    delivery: int

    @classmethod
    def of(cls, doc: dict) -> Row:
        """The row of a gig document, whoever wrote it; :class:`Malformed` when a field cannot be read.

        The words come from the title, description and tags themselves, never from the stored
        ``searchTerms``: another writer (the Node backend, an operator in mongosh) changes the
        title without them.
        """
        title, description, tags = _texts(doc)
        keys = [f"t:{term}" for term in search_terms(title, description, tags)]
        for name, prefix in (("categoryId", "c"), ("userId", "u")):
            ref = doc.get(name)
            if ref is not None and not isinstance(ref, ObjectId):
                raise Malformed(f"{name} is {type(ref).__name__}, not an ObjectId")
            if ref is not None:
                keys.append(f"{prefix}:{ref}")
        created = doc.get("createdAt")
        if created is not None and not isinstance(created, datetime):
            raise Malformed("createdAt is not a date")
        row = cls(doc["_id"], keys, _stored_cents(doc.get("price")), _number(doc, "rating", float, 0.0),
                  _number(doc, "reviewCount", int, 0), millis(created), _number(doc, "deliveryTime", int, 0))
        if doc.get("isActive") is True and doc.get("deletedAt") is None:
            keys.append("live")
        return row

    @classmethod
    def absent(cls, oid: ObjectId) -> Row:
        """The row of a gig that is not in the index: deleted, or malformed."""
        return cls(oid, [], 0, 0.0, 0, 0, 0)

    @classmethod
    def readable(cls, doc: dict) -> Row | None:
        """``Row.of(doc)``, or None when another writer left it malformed."""
        try:
            return cls.of(doc)
        except Malformed:
            return None

    def sort_key(self, sort: str) -> tuple:
        return tuple(_python_key(self, name, desc) for name, desc in SORT_KEYS[sort])


def _python_key(row: Row, name: str, desc: bool) -> Any:
    value = int.from_bytes(row.oid.binary, "big") if name == "_id" else getattr(row, name)
    return -value if desc else value


def bitmap_id(epoch: str, key: str, chunk: int) -> str:
    return f"b:{epoch}:{key}:{chunk}"


def column_id(epoch: str, chunk: int) -> str:
    return f"col:{epoch}:{chunk}"


@dataclass
class Query:
    """A search, validated: words, filters (prices in cents), sort, paging."""

    terms: list[str]
    category_id: ObjectId | None = None
    seller_id: ObjectId | None = None
    min_price: int | None = None
    max_price: int | None = None
    min_rating: float | None = None
    max_delivery: int | None = None
    sort: str = "relevance"

    def keys(self) -> list[str]:
        keys = ["live", *(f"t:{t}" for t in self.terms)]
        if self.category_id is not None:
            keys.append(f"c:{self.category_id}")
        if self.seller_id is not None:
            keys.append(f"u:{self.seller_id}")
        return keys

    def admits(self, row: Row) -> bool:
        if not set(self.keys()) <= set(row.keys):
            return False
        if self.min_price is not None and row.price < self.min_price:
            return False
        if self.max_price is not None and row.price > self.max_price:
            return False
        if self.min_rating is not None and row.rating < self.min_rating:
            return False
        return self.max_delivery is None or row.delivery <= self.max_delivery


# -- the columns in memory ------------------------------------------------------------

class Columns:
    """The sort and filter columns, one numpy array each, indexed by seq."""

    def __init__(self) -> None:
        self.size = 0
        self.arrays: dict[str, np.ndarray] = {name: np.zeros(0, dtype=dtype) for name, dtype in COLUMNS.items()}
        self.oids = np.zeros((0, 12), dtype=np.uint8)
        self.oid_hi = np.zeros(0, dtype=np.uint64)  # the _id as two sortable numbers; 0, 0: no gig
        self.oid_lo = np.zeros(0, dtype=np.uint64)

    def _grow(self, size: int) -> None:
        if size <= self.size:
            return
        size = max(size, self.size * 5 // 4)
        extra = size - self.size
        for name, array in self.arrays.items():
            self.arrays[name] = np.concatenate([array, np.zeros(extra, dtype=array.dtype)])
        self.oids = np.concatenate([self.oids, np.zeros((extra, 12), dtype=np.uint8)])
        self.oid_hi = np.concatenate([self.oid_hi, np.zeros(extra, dtype=np.uint64)])
        self.oid_lo = np.concatenate([self.oid_lo, np.zeros(extra, dtype=np.uint64)])
        self.size = size

    def load(self, chunk: int, doc: dict | None) -> None:
        """Put one column document (None: absent, all empty) in place."""
        start = chunk * COLUMN_CHUNK
        self._grow(start + COLUMN_CHUNK)
        part = slice(start, start + COLUMN_CHUNK)
        if doc is None:
            for array in self.arrays.values():
                array[part] = 0
            self.oids[part] = 0
        else:
            for name, dtype in COLUMNS.items():
                self.arrays[name][part] = np.frombuffer(doc[name], dtype=dtype)
            self.oids[part] = np.frombuffer(doc["oid"], dtype=np.uint8).reshape(COLUMN_CHUNK, 12)
        raw = self.oids[part]
        self.oid_hi[part] = raw[:, :8].copy().view(">u8").ravel()
        self.oid_lo[part] = raw[:, 8:].copy().view(">u4").ravel()

    def chunk_doc(self, epoch: str, chunk: int) -> dict:
        """The column document of ``chunk`` as the arrays are now."""
        part = slice(chunk * COLUMN_CHUNK, (chunk + 1) * COLUMN_CHUNK)
        self._grow(part.stop)
        doc: dict[str, Any] = {"_id": column_id(epoch, chunk)}
        for name, dtype in COLUMNS.items():
            doc[name] = Binary(self.arrays[name][part].astype(dtype).tobytes())
        doc["oid"] = Binary(self.oids[part].tobytes())
        return doc

    def put(self, seq: int, row: Row) -> None:
        self._grow(seq + 1)
        for name in COLUMNS:
            self.arrays[name][seq] = getattr(row, name)
        self.oids[seq] = np.frombuffer(row.oid.binary, dtype=np.uint8)
        self.oid_hi[seq] = int.from_bytes(row.oid.binary[:8], "big")
        self.oid_lo[seq] = int.from_bytes(row.oid.binary[8:], "big")

    def oid(self, seq: int) -> ObjectId:
        return ObjectId(self.oids[seq].tobytes())

    def row(self, seq: int) -> Row:
        a = self.arrays
        return Row(self.oid(seq), [], int(a["price"][seq]), float(a["rating"][seq]),
                   int(a["reviews"][seq]), int(a["created"][seq]), int(a["delivery"][seq]))

    def _key(self, name: str, desc: bool, seqs: np.ndarray) -> list[np.ndarray]:
        """Sort keys (ascending order = the wanted order) for ``seqs``; ``_id`` gives two arrays."""
        if name == "_id":
            hi, lo = self.oid_hi[seqs], self.oid_lo[seqs]
            return [~hi, ~lo] if desc else [hi, lo]
        values = self.arrays[name][seqs]
        return [-values if desc else values]

    def top(self, seqs: np.ndarray, sort: str, k: int) -> np.ndarray:
        """The first ``k`` of ``seqs`` in ``sort`` order, sorted."""
        if k <= 0 or len(seqs) == 0:
            return seqs[:0]
        spec = SORT_KEYS[sort]
        if len(seqs) > 4 * k and len(seqs) > 2048:
            # only the candidates whose primary key is within the k best can be on the page
            primary = self._key(*spec[0], seqs)[0]
            bound = np.partition(primary, k - 1)[k - 1]
            seqs = seqs[primary <= bound]
        keys: list[np.ndarray] = []
        for name, desc in spec:
            keys += self._key(name, desc, seqs)
        order = np.lexsort(keys[::-1])  # lexsort: the last key is the primary one
        return seqs[order[:k]]

    def keep(self, seqs: np.ndarray, query: Query, excluded: Sequence[ObjectId]) -> np.ndarray:
        """``seqs`` that pass the range filters, are not ``excluded`` and are known (a gig is there)."""
        a = self.arrays
        hi, lo = self.oid_hi[seqs], self.oid_lo[seqs]
        mask = (hi != 0) | (lo != 0)  # a seq of a compaction still being written: judged as marked, or not yet there
        if query.min_price is not None:
            mask &= a["price"][seqs] >= query.min_price
        if query.max_price is not None:
            mask &= a["price"][seqs] <= query.max_price
        if query.min_rating is not None:
            mask &= a["rating"][seqs] >= query.min_rating
        if query.max_delivery is not None:
            mask &= a["delivery"][seqs] <= query.max_delivery
        if excluded:
            pairs = {(int.from_bytes(o.binary[:8], "big"), int.from_bytes(o.binary[8:], "big")) for o in excluded}
            suspects = np.flatnonzero(np.isin(hi, np.array([p[0] for p in pairs], dtype=np.uint64)))
            for at in suspects:
                if (int(hi[at]), int(lo[at])) in pairs:
                    mask[at] = False
        return seqs if mask.all() else seqs[mask]


def same_columns(columns: Columns, seq: int, row: Row) -> bool:
    """Whether the columns at ``seq`` hold ``row``'s gig and values."""
    if seq >= columns.size:
        return False
    stored = columns.row(seq)
    return (stored.oid, stored.price, stored.rating, stored.reviews, stored.created, stored.delivery) == (
        row.oid, row.price, row.rating, row.reviews, row.created, row.delivery)


# -- one daemon's view of the base, validated by version --------------------------

class View:
    """The base docs this process has read, valid for ``epoch`` and ``version``."""

    def __init__(self, epoch: str = "") -> None:
        self.epoch = epoch
        self.version = -1
        self.next_seq = 0
        self.bitmaps: dict[str, BitMap] = {}
        self.columns = Columns()
        self.loaded_columns: set[int] = set()

    def invalidate(self, ids: Iterable[str]) -> None:
        for _id in ids:
            if _id.startswith("col:"):
                self.loaded_columns.discard(int(_id.rsplit(":", 1)[1]))
            else:
                self.bitmaps.pop(_id, None)

    def chunks(self) -> range:
        return range(math.ceil(self.next_seq / BITMAP_CHUNK))

    def missing_bitmaps(self, keys: Iterable[str]) -> list[str]:
        wanted = [bitmap_id(self.epoch, key, c) for key in keys for c in self.chunks()]
        return [_id for _id in wanted if _id not in self.bitmaps]

    def missing_columns(self) -> list[int]:
        return [c for c in range(math.ceil(self.next_seq / COLUMN_CHUNK)) if c not in self.loaded_columns]

    def take(self, docs: Iterable[dict], bitmap_ids: Iterable[str], column_chunks: Iterable[int]) -> None:
        """Store fetched docs; asked-for ids that were not found are empty."""
        found = {doc["_id"]: doc for doc in docs}
        for _id in bitmap_ids:
            doc = found.get(_id)
            self.bitmaps[_id] = BitMap.deserialize(bytes(doc["bits"])) if doc else BitMap()
        for chunk in column_chunks:
            self.columns.load(chunk, found.get(column_id(self.epoch, chunk)))
            self.loaded_columns.add(chunk)

    def bitmap(self, key: str) -> BitMap:
        parts = [self.bitmaps.get(bitmap_id(self.epoch, key, c)) or BitMap() for c in self.chunks()]
        return BitMap.union(*parts) if len(parts) > 1 else (parts[0] if parts else BitMap())

    def candidates(self, query: Query, excluded: Sequence[ObjectId]) -> np.ndarray:
        """The seqs of the base that answer ``query``, minus the ``excluded`` gigs (the marked ones)."""
        bitmaps = sorted((self.bitmap(key) for key in query.keys()), key=len)
        found = bitmaps[0].intersection(*bitmaps[1:]) if len(bitmaps) > 1 else bitmaps[0]
        seqs = np.asarray(found.to_array(), dtype=np.int64)
        return self.columns.keep(seqs, query, excluded)


def _row_or_warn(doc: dict) -> Row:
    """The row of a gig for the index; a malformed one is left out of search, with one warning."""
    try:
        return Row.of(doc)
    except Malformed as e:
        log.warn("gig {gig} is left out of search: {reason} (a document written outside this daemon?)",
                 gig=str(doc["_id"]), reason=str(e))
        return Row.absent(doc["_id"])


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
        embedded database runs with ``--sync-on-commit``: a fold of 100 gigs wrote
        ~400 documents, so ~400 journal flushes, which starved every concurrent
        call (measured; see docs/DECISIONS.md, "Catalogue compaction in
        transactions").  One transaction per part is one commit.  The index stays
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


class Compactor:
    """Every ``interval`` seconds, fold marked gigs into the base (when this daemon gets the lease)."""

    def __init__(self, store: Any, reactor: Any, interval: float = COMPACT_SECONDS) -> None:
        self.catalogue = catalogue_of(store)
        self.store = store
        self.reactor = reactor
        self.interval = interval
        self.loop = task.LoopingCall(self._tick)
        self.loop.clock = reactor
        self.done: defer.Deferred | None = None
        self.checked = False

    def start(self) -> None:
        self.done = self.loop.start(self.interval, now=False)
        self.reactor.addSystemEventTrigger("before", "shutdown", self.stop)

    def stop(self) -> None:
        """No new round; one in progress ends by itself (its errors are logged as warnings)."""
        if self.loop.running:
            self.loop.stop()

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


@dataclass
class Plan:
    """What one compaction changes: seqs to add to and remove from each bitmap doc, and column rows."""

    epoch: str
    bitmaps: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)
    columns: dict[int, Row] = field(default_factory=dict)

    def change(self, seq: int, old_keys: Iterable[str], new_keys: Iterable[str]) -> None:
        chunk = seq // BITMAP_CHUNK
        old, new = set(old_keys), set(new_keys)
        for key in new - old:
            self.bitmaps.setdefault(bitmap_id(self.epoch, key, chunk), ([], []))[0].append(seq)
        for key in old - new:
            self.bitmaps.setdefault(bitmap_id(self.epoch, key, chunk), ([], []))[1].append(seq)


# -- rebuild (pymongo, outside the reactor) --------------------------------------------

def _lease(db: Any, holder: str, until: datetime) -> bool:
    try:
        result = db[LEASES].update_one(
            {"_id": "compaction", "$or": [{"until": {"$lt": datetime.now(UTC)}}, {"holder": holder}]},
            {"$set": {"holder": holder, "until": until}}, upsert=True)
    except DuplicateKeyError:
        return False
    return bool(result.matched_count or result.upserted_id is not None)


def rebuild(db: Any, progress: bool = True, batch: int = 5000) -> dict:
    """Rebuild the whole index of ``db`` (a pymongo Database) from its gigs; returns figures.

    Safe while daemons run: it holds the compaction lease, writes the new
    base under a new epoch (searches keep using the old one until the switch),
    and leaves gigs marked meanwhile marked.
    """
    from tqdm import tqdm

    base = db[BASE]
    holder = f"rebuild:{socket.gethostname()}:{os.getpid()}"
    for _attempt in range(600):
        if _lease(db, holder, datetime.now(UTC) + timedelta(hours=6)):
            break
        time.sleep(0.1)
    else:
        raise ToolError("another process holds the catalogue lease (a rebuild running elsewhere?)")
    began = time.monotonic()
    try:
        position = _stream_position(db)  # before the gigs are read: every later change is replayed from it
        markers = list(db[DIRTY].find({}))
        state = base.find_one({"_id": STATE}) or _empty_state()
        old_epoch = state.get("epoch", "0")
        epoch = str(ObjectId())
        version = int(state["version"]) + 1
        total = db.gigs.estimated_document_count()
        bitmaps: dict[str, BitMap] = {}
        columns = Columns()
        rows: list[dict] = []
        seq = 0
        bar = tqdm(total=total, desc="reading gigs", unit="gig", unit_scale=True, disable=not progress)
        for doc in db.gigs.find({}, projection=GIG_FIELDS, sort=[("_id", 1)], batch_size=batch):
            row = _row_or_warn(doc)
            for key in row.keys:
                bitmaps.setdefault(bitmap_id(epoch, key, seq // BITMAP_CHUNK), BitMap()).add(seq)
            columns.put(seq, row)
            rows.append({"_id": row.oid, "seq": seq, "keys": row.keys})
            seq += 1
            bar.update(1)
        bar.close()
        docs: list[dict] = [{"_id": _id, "bits": Binary(bits.serialize()), "v": version}
                            for _id, bits in bitmaps.items()]
        docs += [{**columns.chunk_doc(epoch, c), "v": version} for c in range(math.ceil(seq / COLUMN_CHUNK))]
        writing = tqdm(total=len(docs) + len(rows), desc="writing index", unit="doc", unit_scale=True,
                       disable=not progress)
        for part in _chunks(docs, 100):
            base.insert_many(list(part), ordered=False)
            writing.update(len(part))
        db[ROWS].delete_many({})
        for part in _chunks(rows, batch):
            db[ROWS].insert_many(list(part), ordered=False)
            writing.update(len(part))
        writing.close()
        base.update_one({"_id": STATE}, {"$set": {"version": version, "nextSeq": seq, "epoch": epoch}}, upsert=True)
        base.delete_many({"_id": {"$regex": f"^(b|col):{old_epoch}:"}})
        for marker in markers:
            db[DIRTY].delete_one({"_id": marker["_id"], "rev": marker.get("rev")})
        if position is not None:
            caught_up = _caught_up(db, position)
            if caught_up is None:  # the history since the start is gone (the rebuild's own writes rolled it)
                caught_up = _compared(db, rows, columns, batch)
            position = caught_up
        if position is not None:
            # a daemon that starts now follows the gigs from here, with no reconciliation to run; one that
            # follows already goes on from its own position (a position saved later wins: $max is not
            # defined on tokens, so only a missing one is set)
            db[LEASES].update_one({"_id": "stream", "resume": None}, {"$set": {"resume": position}}, upsert=False)
            db[LEASES].update_one({"_id": "stream"}, {"$setOnInsert": {"resume": position, "until": datetime.fromtimestamp(0, UTC)}},
                                  upsert=True)
    finally:
        db[LEASES].update_one({"_id": "compaction", "holder": holder},
                              {"$set": {"until": datetime.fromtimestamp(0, UTC)}})
    return {"gigs": seq, "bitmaps": len(bitmaps), "version": version, "seconds": time.monotonic() - began}


def _stream_position(db: Any) -> dict | None:
    """The current position of the gigs' change stream (a resume token), or None without change streams."""
    try:
        reply = db.command({"aggregate": "gigs", "pipeline": [{"$changeStream": {}}], "cursor": {}})
    except pymongo_errors.OperationFailure:
        return None
    cursor = reply["cursor"]
    if cursor.get("id"):
        db.command({"killCursors": "gigs", "cursors": [cursor["id"]]})
    token: dict | None = cursor.get("postBatchResumeToken")
    return token


def _caught_up(db: Any, position: dict) -> dict | None:
    """Mark the gigs changed since ``position`` (while the rebuild read them) and return the stream's position
    after them; None when the history since ``position`` is gone (a daemon then compares every gig)."""
    changed: set[Any] = set()
    try:
        with db.gigs.watch(resume_after=position, max_await_time_ms=200) as stream:
            while (change := stream.try_next()) is not None:
                key = (change.get("documentKey") or {}).get("_id")
                if key is not None:
                    changed.add(key)
            after: dict | None = stream.resume_token
    except pymongo_errors.PyMongoError:
        return None
    moment = datetime.now(UTC)
    for gig_id in changed:
        db[DIRTY].update_one({"_id": gig_id}, {"$inc": {"rev": 1}, "$min": {"at": moment}}, upsert=True)
    return after


def _compared(db: Any, rows: list[dict], columns: Columns, batch: int) -> dict | None:
    """The stream's position now, after marking every gig that differs from what the rebuild indexed
    (read again after the position is taken, so any later change is the daemons' to follow)."""
    position = _stream_position(db)
    if position is None:
        return None
    indexed = {row["_id"]: (frozenset(row["keys"]), row["seq"]) for row in rows}
    moment = datetime.now(UTC)
    differing = []
    for doc in db.gigs.find({}, projection=GIG_FIELDS, batch_size=batch):
        row = Row.readable(doc) or Row.absent(doc["_id"])
        known = indexed.pop(doc["_id"], None)
        if known is None or known[0] != frozenset(row.keys) or not same_columns(columns, known[1], row):
            differing.append(doc["_id"])
    for gig_id in [*differing, *indexed]:
        db[DIRTY].update_one({"_id": gig_id}, {"$inc": {"rev": 1}, "$min": {"at": moment}}, upsert=True)
    return position


class ToolError(Exception):
    """A reason the command-line tool stops, said in one line."""


def _embedded(data_dir: str) -> tuple[Any, str]:
    """Start SecantusDB on the embedded database's directory, through the daemon's own launcher (the
    same lock: a directory a running daemon holds is refused at once, naming the process)."""
    import subprocess

    import pymongo

    from worknet.store import lifeline
    from worknet.store.embedded import find_secantusd, free_port

    executable = find_secantusd()
    if executable is None:
        raise ToolError("secantusd-py not found: install the embedded database with make run (or "
                        ".venv/bin/pip install SecantusDB)")
    if not os.path.isdir(data_dir):
        raise ToolError(f"no embedded database in {data_dir} (give --data-dir, or --uri for another server)")
    port = free_port()
    process = subprocess.Popen(  # noqa: S603 - our own launcher, found beside the interpreter
        [sys.executable, lifeline.__file__, data_dir, "--", executable, "--host", "127.0.0.1", "--port", str(port),
         "--storage-path", data_dir, "--sync-on-commit", "--log-level", "WARNING"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    uri = f"mongodb://127.0.0.1:{port}/"
    probe: pymongo.MongoClient = pymongo.MongoClient(uri, serverSelectionTimeoutMS=500, directConnection=True)
    try:
        for _attempt in range(240):
            if process.poll() is not None:
                said = process.stderr.read().decode(errors="replace") if process.stderr else ""
                if process.returncode == lifeline.HELD:
                    held = said.strip().splitlines()[-1].split(": ", 1)[-1] if said.strip() else data_dir
                    raise ToolError(f"{held}: stop the daemon first (it holds the directory), or rebuild through "
                                    "a running database with --uri")
                last = said.strip().splitlines()[-1] if said.strip() else "no output"
                raise ToolError(f"the embedded database did not start on {data_dir} (exit {process.returncode}): "
                                f"{last}")
            try:
                probe.admin.command("ping")
                return process, uri
            except pymongo.errors.PyMongoError:
                time.sleep(0.25)
    finally:
        probe.close()
    process.terminate()
    raise ToolError(f"the embedded database on {data_dir} did not answer within a minute")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worknet.catalogue",
                                     description="Maintain the catalogue index of the gigs (see worknet/catalogue.py).")
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("rebuild", help="rebuild the index from the gigs collection (safe while daemons run)")
    build.add_argument("--uri", default=None, help="MongoDB URI (default: MONGODB_URI from the environment or .env; "
                       "without one, the embedded database in --data-dir)")
    build.add_argument("--db", default=None, help="database name (default: DB_NAME, else the URI's path, else worknet)")
    build.add_argument("--data-dir", default=None,
                       help="the embedded database's directory (default: DATA_DIR, else var/db); "
                       "stop the daemon first, it holds the directory")
    build.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    import pymongo
    from dotenv import dotenv_values

    from worknet.config import database_names
    from worknet.errors import ConfigError

    env = {**{k: v for k, v in dotenv_values(".env").items() if v is not None}, **os.environ}
    uri = args.uri or env.get("MONGODB_URI")
    embedded = None
    if not uri:
        try:
            embedded, uri = _embedded(args.data_dir or env.get("DATA_DIR") or "var/db")
        except ToolError as e:
            print(f"{parser.prog} {args.command}: {e}", file=sys.stderr)
            return 1
    client: pymongo.MongoClient = pymongo.MongoClient(uri, tz_aware=True)
    try:
        database, _auth = database_names(uri, args.db or env.get("DB_NAME"), env.get("NODE_ENV") or "development")
        figures = rebuild(client[database], progress=not args.quiet)
    except (ToolError, ConfigError, pymongo.errors.PyMongoError) as e:
        print(f"{parser.prog} {args.command}: {e}", file=sys.stderr)
        return 1
    finally:
        client.close()
        if embedded is not None:
            embedded.terminate()
            embedded.wait(timeout=60)
    print(f"catalogue rebuilt: {figures['gigs']} gigs, {figures['bitmaps']} bitmaps, "
          f"version {figures['version']}, {figures['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
