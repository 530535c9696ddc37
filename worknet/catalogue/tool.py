"""``python -m worknet.catalogue rebuild``: the whole index rebuilt from the gigs (pymongo, outside the reactor)."""

from __future__ import annotations

import argparse
import math
import os
import socket
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import Binary, ObjectId
from pymongo import errors as pymongo_errors
from pymongo.errors import DuplicateKeyError
from pyroaring import BitMap

from worknet.catalogue.index import (
    BASE,
    BITMAP_CHUNK,
    COLUMN_CHUNK,
    DIRTY,
    GIG_FIELDS,
    LEASES,
    ROWS,
    STATE,
    Columns,
    Row,
    _row_or_warn,
    bitmap_id,
    same_columns,
)
from worknet.catalogue.storage import _chunks, _empty_state

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


def _embedded(data_dir: str) -> Any:
    """Start SecantusDB on the embedded database's directory, through the daemon's own launcher (the
    same lock: a directory a running daemon holds is refused at once, naming the process)."""
    from worknet.store import lifeline
    from worknet.store.embedded import NotStarted, Secantusd

    database = Secantusd(data_dir)
    if database.executable is None:
        raise ToolError("secantusd-py not found: install the embedded database with make run (or "
                        ".venv/bin/pip install SecantusDB)")
    if not os.path.isdir(data_dir):
        raise ToolError(f"no embedded database in {data_dir} (give --data-dir, or --uri for another server)")
    try:
        database.start(timeout=60.0)
    except NotStarted as e:
        if e.code == lifeline.HELD:
            held = e.said.split(": ", 1)[-1] if e.said else data_dir
            raise ToolError(f"{held}: stop the daemon first (it holds the directory), or rebuild through "
                            "a running database with --uri") from None
        if e.code is None:
            raise ToolError(f"the embedded database on {data_dir} did not answer within a minute") from None
        raise ToolError(f"the embedded database did not start on {data_dir} (exit {e.code}): "
                        f"{e.said or 'no output'}") from None
    return database


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m worknet.catalogue",
                                     description="Maintain the catalogue index of the gigs (see worknet/catalogue/).")
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
            embedded = _embedded(args.data_dir or env.get("DATA_DIR") or "var/db")
            uri = embedded.uri
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
            embedded.stop(timeout=60)
    print(f"catalogue rebuilt: {figures['gigs']} gigs, {figures['bitmaps']} bitmaps, "
          f"version {figures['version']}, {figures['seconds']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
