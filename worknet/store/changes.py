"""A collection's change stream, over txmongo (which has no ``watch()``).

The two commands of the change-stream protocol are enough: ``aggregate`` with
a ``$changeStream`` stage opens the cursor (resuming after a token when one is
given), ``getMore`` with ``maxTimeMS`` waits for the next events.  They go
over a connection of their own (the store's ``waiting_pool``: a waiting
``getMore`` would hold up every call sent behind it on a shared connection),
in one explicit session (MongoDB ties a cursor to the session that opened it;
txmongo would otherwise give each command an implicit session of its own).
The resume token to keep is the cursor's ``postBatchResumeToken`` after each
batch (the change-stream specification's rule), else the last event's ``_id``.

Errors are sorted the way the specification sorts them, into what the caller
must do:

* :class:`HistoryLost`: the server no longer holds the history after the
  token (the oplog rolled past it, a token of another server): start afresh
  and reconcile.
* :class:`Unsupported`: the server has no change streams (a standalone
  ``mongod``).
* anything else (a dropped connection, a restart, a killed cursor): resume
  from the last token.

Works the same on MongoDB (replica sets, Atlas) and SecantusDB, which both
serve ``$changeStream`` (checked: docs/DECISIONS.md, "Search follows every
writer").
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pymongo.errors import OperationFailure

if TYPE_CHECKING:
    from worknet.store.pool import MongoStore

# ChangeStreamHistoryLost, ChangeStreamFatalError, InvalidResumeToken, CappedPositionLost, and the
# FailedToParse a server gives for a token it cannot read (another server's, or a damaged one)
HISTORY_LOST_CODES = frozenset({286, 280, 260, 136, 9})
# "$changeStream stage is only supported on replica sets", CommandNotSupported, unknown stage
UNSUPPORTED_CODES = frozenset({40573, 115, 40324})
AWAIT_SECONDS = 0.5  # how long one getMore waits on the server for new events


class HistoryLost(Exception):
    """The events after the resume token are gone: start a new stream and catch up another way."""


class Unsupported(Exception):
    """The server has no change streams (a standalone server)."""


def _sorted(error: OperationFailure, resuming: bool) -> Exception:
    if error.code in UNSUPPORTED_CODES:
        return Unsupported(str(error.details.get("errmsg") if error.details else error))
    if resuming and error.code in HISTORY_LOST_CODES:
        return HistoryLost(f"{(error.details or {}).get('errmsg') or error} (code {error.code})")
    return error


class ChangeStream:
    """One open change stream on ``collection`` of the store's database."""

    def __init__(self, store: MongoStore, collection: str, resume_after: dict | None = None) -> None:
        self.store = store
        self.collection = collection
        self.token = resume_after
        self.cursor_id = 0
        self.session: Any = None

    async def open(self) -> list[dict]:
        """Open the cursor (after ``self.token`` when there is one); returns the first events."""
        stage: dict[str, Any] = {}
        if self.token is not None:
            stage["resumeAfter"] = self.token
        self.session = self.store.waiting_pool.start_session()
        try:
            reply = await self._command({"aggregate": self.collection, "pipeline": [{"$changeStream": stage}],
                                         "cursor": {}})
        except OperationFailure as e:
            await self.close()
            raise _sorted(e, resuming=self.token is not None) from e
        except BaseException:
            await self.close()
            raise
        return self._take(reply["cursor"], "firstBatch")

    async def next(self) -> list[dict]:
        """The next events (an empty list after ``AWAIT_SECONDS`` without any)."""
        try:
            reply = await self._command({"getMore": self.cursor_id, "collection": self.collection,
                                         "maxTimeMS": int(AWAIT_SECONDS * 1000)}, AWAIT_SECONDS)
        except OperationFailure as e:
            raise _sorted(e, resuming=True) from e
        return self._take(reply["cursor"], "nextBatch")

    async def close(self) -> None:
        """Kill the cursor and end the session (never raises: the server may be gone)."""
        session, self.session = self.session, None
        cursor_id, self.cursor_id = self.cursor_id, 0
        if session is None:
            return
        try:
            if cursor_id:
                await self.store.command({"killCursors": self.collection, "cursors": [cursor_id]}, session=session,
                                         waits=True)
        except Exception:  # noqa: S110 - the cursor dies with its session or the server anyway
            pass
        try:
            await session.end_session()
        except Exception:  # noqa: S110
            pass

    async def _command(self, command: dict, waits: float = 0.0) -> dict:
        timeout = self.store.db_timeout_seconds + waits
        reply: dict = await self.store.command(command, timeout=timeout, session=self.session, waits=True)
        return reply

    def _take(self, cursor: dict, batch: str) -> list[dict]:
        events: list[dict] = cursor.get(batch) or []
        self.cursor_id = cursor.get("id", 0)
        token = cursor.get("postBatchResumeToken") or (events[-1]["_id"] if events else None)
        if token is not None:
            self.token = token
        if self.cursor_id == 0:
            raise ConnectionError("the server closed the change stream")
        return events
