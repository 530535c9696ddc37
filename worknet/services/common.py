"""Helpers every service uses: results, paging, time, idempotent creates."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError
from txmongo import filter as qf

from worknet.errors import Conflict, NotFound

if TYPE_CHECKING:
    from worknet.store.interface import Session, Store
    from worknet.store.pool import Collection

NOT_DELETED: dict[str, Any] = {"deletedAt": None}


def ok(**fields: Any) -> dict:
    """A success envelope: ``{"success": True, **fields}``."""
    return {"success": True, **fields}


def now() -> datetime:
    """The current UTC time, truncated to the millisecond (what BSON dates keep)."""
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


def sort(*keys: tuple[str, int]) -> qf.sort:
    return qf.sort(list(keys))


async def paged(
    collection: Collection,
    query: dict,
    order: Iterable[tuple[str, int]],
    page: int,
    limit: int,
    plural: str,
    projection: dict | None = None,
) -> dict:
    """One page of ``query`` plus ``total``, ``page``, ``limit`` and ``pages``."""
    total = await collection.count_documents(query)
    items = await collection.find(
        query, projection=projection, skip=(page - 1) * limit, limit=limit, sort=sort(*order),
    )
    return ok(**{plural: items}, total=total, page=page, limit=limit, pages=math.ceil(total / limit))


async def get_or_404(collection: Collection, _id: ObjectId, what: str, query: dict | None = None, **kwargs: Any) -> dict:
    """The live (not soft-deleted) document with this id, or NotFound (the store's ``find_by_id``)."""
    doc = await collection.find_by_id(_id, {**NOT_DELETED, **(query or {})}, **kwargs)
    if doc is None:
        raise NotFound(f"{what} not found")
    return doc


async def set_on_live(
    store: Store, collection: str, _id: ObjectId, changes: dict, what: str,
    conflict: Callable[[DuplicateKeyError], Conflict],
) -> dict:
    """``$set`` ``changes`` on a live (not deleted) document of ``collection`` and return it as it is now.

    NOT_FOUND when there is none; ``conflict(error)`` when a unique index refuses the change.
    """
    try:
        doc = await store.update_and_fetch(collection, {"_id": _id, **NOT_DELETED}, {"$set": changes})
    except DuplicateKeyError as e:
        raise conflict(e) from None
    if doc is None:
        raise NotFound(f"{what} not found")
    return dict(doc)


def request_hash(content: dict) -> str:
    """A stable fingerprint of a create request, to tell a retry from a different request."""
    canonical = json.dumps(content, sort_keys=True, default=str, ensure_ascii=False)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def duplicate_key(error: DuplicateKeyError) -> set[str]:
    """The field names of the unique index a DuplicateKeyError hit."""
    details = error.details or {}
    pattern = details.get("keyPattern") or details.get("keyValue") or {}
    if pattern:
        return set(pattern)
    message = str(details.get("errmsg", ""))
    return {"_id"} if "_id_" in message else set()


async def create_once(
    collection: Collection,
    document: dict,
    request: dict,
    what: str,
    session: Session = None,
) -> tuple[dict, bool]:
    """Insert ``document`` (with its client-chosen ``_id``) at most once.

    Returns ``(document, created)``.  A retry of the same request (same id,
    same ``request`` content) returns the stored document with
    ``created=False``; the same id with different content is a CONFLICT.
    Other unique-index violations propagate as DuplicateKeyError for the
    caller to name.
    """
    document["requestHash"] = request_hash(request)
    try:
        await collection.insert_one(document, session=session)
        return document, True
    except DuplicateKeyError as e:
        if "_id" not in duplicate_key(e):
            raise
    existing = await collection.find_one({"_id": document["_id"]}, session=session)
    if existing is None or existing.get("requestHash") != document["requestHash"]:
        raise Conflict(f"a different {what} already exists with this id", "id")
    return existing, False


NOTIFICATION_TYPES = ("order", "message", "review", "payment", "system")


def notification(user_id: ObjectId, kind: str, message: str, link: str = "") -> dict:
    """A new, unread notification document (see docs/DATA_MODEL.md)."""
    return {
        "_id": ObjectId(),
        "userId": user_id,
        "type": kind,
        "message": message[:500],
        "link": link,
        "isRead": False,
        "readAt": None,
        "createdAt": now(),
    }


async def notify(store: Store, user_id: ObjectId, kind: str, message: str, link: str = "", session: Session = None) -> None:
    """Tell a user something happened (new order, payment, review, message)."""
    await store["notifications"].insert_one(notification(user_id, kind, message, link), session=session)


async def notify_once(store: Store, user_id: ObjectId, kind: str, message: str, link: str, about: dict) -> None:
    """Tell a user about ``about`` (a message, a review): the notification takes its ``_id``
    and ``createdAt``, so it is written at most once.

    A retry of a half-done call finds the notification already there and writes
    nothing.  Should a client have reused an id that some other notification
    already has (another user or type), this one gets a fresh id instead.
    """
    note = {**notification(user_id, kind, message, link), "_id": about["_id"], "createdAt": about["createdAt"]}
    notifications = store["notifications"]
    try:
        await notifications.insert_one(note)
    except DuplicateKeyError as e:
        if "_id" not in duplicate_key(e):
            raise
        earlier = await notifications.find_one({"_id": note["_id"]}, projection={"userId": 1, "type": 1})
        if earlier is None or (earlier.get("userId"), earlier.get("type")) != (user_id, kind):
            await notifications.insert_one({**note, "_id": ObjectId()})
