"""notificationsService: what a user is told (new order, payment, review, message).

``create`` takes a client-chosen id (a retry returns the first result; the
same id with a different content is a CONFLICT).  A ``link`` is either an
absolute http(s) URL or a path inside the site starting with a single ``/``
(``/orders/123``); protocol-relative ``//host`` links, other schemes
(``javascript:``) and spaces are refused, so a link can never send a user
off-site unnoticed.  ``send_bulk`` writes one notification per distinct live
user in one ``insert_many`` batch; unreadable, unknown and deleted ids are
reported back in ``invalid_ids`` instead of failing the whole call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bson import ObjectId

from worknet import validators as v
from worknet.errors import NotFound, ValidationError
from worknet.rpc.dispatch import ServiceResource, signature
from worknet.services.common import NOT_DELETED, NOTIFICATION_TYPES, create_once, get_or_404, notification, now, ok

if TYPE_CHECKING:
    from worknet.store.pool import Collection

MESSAGE = (1, 500)
LINK_MAX = 2048
BULK_MAX = 1000


def link(value: Any, field: str = "link") -> str:
    """``""`` (no link), an http(s) URL, or a site path starting with one ``/``."""
    if value is None or value == "":
        return ""
    raw = v.text(value, field, 1, LINK_MAX)
    if raw.startswith("/"):
        if raw.startswith("//") or "\\" in raw or any(c.isspace() for c in raw):
            raise ValidationError(field, f"{field} must be an http(s) URL or a path starting with /")
        return raw
    try:
        return v.url(raw, field)
    except ValidationError:
        raise ValidationError(field, f"{field} must be an http(s) URL or a path starting with /") from None


def _message(value: Any, field: str) -> str:
    return v.text(value, field, *MESSAGE)


EXTRA = {
    "message": lambda value, field: _message(value, "extra.message"),
    "link": lambda value, field: link(value, "extra.link"),
}


class NotificationsService(ServiceResource):
    """notificationsService.*"""

    @property
    def notifications(self) -> Collection:
        return self.store["notifications"]

    async def _live_users(self, ids: list[ObjectId]) -> set[ObjectId]:
        """The ids among ``ids`` that name live users (up to ``BULK_MAX`` ids: the store reads them in chunks)."""
        found = await self.store.find_by_ids("users", ids, NOT_DELETED, projection={"_id": 1})
        return {doc["_id"] for doc in found}

    @signature("struct", "string", "string", "string", "struct", returns={"notification_id": "string", "notification": "struct", "created": "boolean"})
    async def xmlrpc_create(self, notification_id: Any, user_id: Any, notification_type: Any, extra: Any = None) -> dict:
        """Create a notification for a live user. notification_id is client-chosen ("" lets the server choose; a retry with the same id and content returns the first result with created false, different content is a CONFLICT); type one of order, message, review, payment, system; extra: message 1-500 characters (required), link an http(s) URL or a path starting with / (optional). Returns notification_id, notification, created."""
        _id = v.client_id(notification_id, "notification_id") or ObjectId()
        user = v.object_id(user_id, "user_id")
        kind = v.choice(notification_type, "type", NOTIFICATION_TYPES)
        content = v.struct(extra, "extra", EXTRA)
        if "message" not in content:
            raise ValidationError("extra.message", "extra.message is required")
        await get_or_404(self.store["users"], user, "user", projection={"_id": 1})
        doc = notification(user, kind, content["message"], content.get("link", ""))
        doc["_id"] = _id
        request = {"userId": user, "type": kind, "message": doc["message"], "link": doc["link"]}
        stored, created = await create_once(self.notifications, doc, request, "notification")
        return ok(notification_id=str(stored["_id"]), notification=stored, created=created)

    @signature("struct", "string", returns={"updated": "boolean"})
    async def xmlrpc_mark_as_read(self, notification_id: Any) -> dict:
        """Mark a notification read. Idempotent. Returns updated: true when this call changed it, false when it was already read."""
        _id = v.object_id(notification_id, "notification_id")
        result = await self.notifications.update_one(
            {"_id": _id, "isRead": False}, {"$set": {"isRead": True, "readAt": now()}},
        )
        if result.modified_count:
            return ok(updated=True)
        if await self.notifications.find_one({"_id": _id}, projection={"_id": 1}) is None:
            raise NotFound("notification not found", "notification_id")
        return ok(updated=False)

    @signature("struct", "string", returns={"count": "int", "by_type": "struct"})
    async def xmlrpc_get_unread_count(self, user_id: Any) -> dict:
        """Unread notifications of a live user: count, and by_type (every type, 0 when none). One indexed query."""
        user = v.object_id(user_id, "user_id")
        await get_or_404(self.store["users"], user, "user", projection={"_id": 1})
        groups = await self.notifications.aggregate([
            {"$match": {"userId": user, "isRead": False}},
            {"$group": {"_id": "$type", "n": {"$sum": 1}}},
        ])
        by_type = dict.fromkeys(NOTIFICATION_TYPES, 0)
        for g in groups:
            by_type[str(g["_id"])] = g["n"]
        return ok(count=sum(by_type.values()), by_type=by_type)

    @signature("struct", "array", "string", "string", "string", returns={"notifications_sent": "int", "users_targeted": "int", "invalid_ids": "array"})
    async def xmlrpc_send_bulk(self, user_ids: Any, notification_type: Any, message: Any, link_: Any = None) -> dict:
        """Send the same notification to up to 1000 users (more is a VALIDATION_ERROR and nothing is written). user_ids: array of id strings; duplicates are collapsed; malformed, unknown and deleted ids are returned in invalid_ids (each once, as sent) and skipped. type one of order, message, review, payment, system; message 1-500 characters; link "" or an http(s) URL or a path starting with /. One batched insert. Returns notifications_sent (documents written), users_targeted (distinct valid users), invalid_ids."""
        if not isinstance(user_ids, list):
            raise ValidationError("user_ids", "user_ids must be an array")
        if len(user_ids) > BULK_MAX:
            raise ValidationError("user_ids", f"user_ids must have at most {BULK_MAX} items")
        if not user_ids:
            raise ValidationError("user_ids", "user_ids must name at least one user")
        kind = v.choice(notification_type, "type", NOTIFICATION_TYPES)
        text = _message(message, "message")
        target = link(link_, "link")
        wanted: dict[ObjectId, str] = {}
        invalid: list[str] = []
        for i, raw in enumerate(user_ids):
            if not isinstance(raw, str):
                raise ValidationError(f"user_ids[{i}]", "user_ids must hold id strings")
            try:
                _id = v.object_id(raw, "user_ids")
            except ValidationError:
                if raw not in invalid:
                    invalid.append(raw)
                continue
            wanted.setdefault(_id, raw)
        live = await self._live_users(list(wanted))
        invalid.extend(raw for _id, raw in wanted.items() if _id not in live)
        docs = [notification(_id, kind, text, target) for _id in wanted if _id in live]
        sent = 0
        if docs:
            result = await self.notifications.insert_many(docs, ordered=False)
            sent = len(result.inserted_ids)
        return ok(notifications_sent=sent, users_targeted=len(docs), invalid_ids=invalid)
