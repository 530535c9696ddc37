"""The catalogue index: roaring bitmaps and sort columns over a dense gig number, kept in the database.

Why: SecantusDB plans one index per query, decodes every candidate in full
and sorts in Python (see docs/DECISIONS.md, "The catalogue index"), so a search
or a category browse over 100,000 gigs cannot be a query on the gigs
collection.  This package answers ``gigsService.search`` from a compact index
instead, on every server (MongoDB too), the same way.

The index (a base, written only by compaction and by a rebuild) -- collection ``catalogue``:

* ``{_id: "state", version, nextSeq, epoch}``: every indexed gig has a dense
  sequence number ``seq``; ``version`` grows by one per compaction; ``epoch``
  names the base's documents (a rebuild writes a new base under a new epoch
  and switches ``state`` to it at the end; ``"0"`` before the first rebuild).
* bitmaps ``b:<epoch>:<key>:<chunk>`` (``bits``: a serialized ``pyroaring.BitMap`` of
  the seqs in ``[chunk * 65536, (chunk + 1) * 65536)``), keys: ``live``
  (active, not deleted), ``t:<word>`` (search terms), ``c:<categoryId>``,
  ``u:<sellerId>``;
* columns ``col:<epoch>:<chunk>`` (4,096 seqs each, little-endian arrays): price in
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

The modules:

* :mod:`~worknet.catalogue.index` -- the index itself, pure: rows, queries, columns, views, fold plans;
* :mod:`~worknet.catalogue.storage` -- its database I/O (txmongo): marks, leases, searches, compaction;
* :mod:`~worknet.catalogue.compactor` -- the compaction loop, a service of the daemon's tree;
* :mod:`~worknet.catalogue.tool` -- ``python -m worknet.catalogue rebuild`` (pymongo, outside the reactor).
"""

from worknet.catalogue.compactor import COMPACT_SECONDS, Compactor
from worknet.catalogue.index import (
    BASE,
    BITMAP_CHUNK,
    COLUMN_CHUNK,
    COLUMNS,
    DIRTY,
    GIG_FIELDS,
    LEASES,
    ROWS,
    SORT_KEYS,
    STATE,
    Columns,
    Malformed,
    Plan,
    Query,
    Row,
    View,
    bitmap_id,
    cents,
    column_id,
    millis,
    same_columns,
)
from worknet.catalogue.storage import (
    BATCH,
    FOLD_AFTER,
    FOLD_AT,
    LEASE_SECONDS,
    Catalogue,
    LeaseLost,
    catalogue_of,
    mark,
    mark_many,
    take_lease,
    update_marked,
    write_marked,
)
from worknet.catalogue.tool import ToolError, main, rebuild

__all__ = [
    "BASE", "BATCH", "BITMAP_CHUNK", "COLUMNS", "COLUMN_CHUNK", "COMPACT_SECONDS", "DIRTY", "FOLD_AFTER", "FOLD_AT",
    "GIG_FIELDS", "LEASES", "LEASE_SECONDS", "ROWS", "SORT_KEYS", "STATE", "Catalogue", "Columns", "Compactor",
    "LeaseLost", "Malformed", "Plan", "Query", "Row", "ToolError", "View", "bitmap_id", "catalogue_of", "cents",
    "column_id", "main", "mark", "mark_many", "millis", "rebuild", "same_columns", "take_lease", "update_marked",
    "write_marked",
]
