"""The catalogue index itself, pure (no I/O): a gig's row, a search query, the columns, one daemon's
view of the base, and the plan of a fold.  The documents' layout: :mod:`worknet.catalogue`."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import numpy as np
from bson import Binary, Decimal128, ObjectId
from pyroaring import BitMap

from worknet.logs import logger
from worknet.search import search_terms

log = logger("worknet.catalogue")

BASE = "catalogue"
ROWS = "catalogueRows"
DIRTY = "catalogueDirty"
STATE = "state"
LEASES = "catalogueLease"  # its own tiny collection: the lease update has an $or
BITMAP_CHUNK = 1 << 16
COLUMN_CHUNK = 4096
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
