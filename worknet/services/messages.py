"""messagesService: conversations between two users and the messages in them.

A conversation joins two distinct, live users; it is identified by the
ordered pair of their ids (``pairKey``, unique), so starting it again -- in
either order, from any number of daemons at once -- finds the same one.

A message has a client-chosen id (a retry returns the first result; the same
id with a different content is a CONFLICT).  It stores its ``recipientId`` so
that a user's unread messages are one indexed query
(``recipientId, isRead, conversationId``).  Sending a message moves the
conversation's ``lastMessageAt`` forward only (``$max``) and tells the other
participant with a ``message`` notification whose id is the message's id, so
that a retry after a crash between the steps completes them without writing a
second notification.

Only the recipient may mark a message read: ``reader_id`` is optional in the
signature (API.md) but a call without it is a VALIDATION_ERROR rather than an
unchecked write (see docs/DECISIONS.md).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from bson import ObjectId
from pymongo.errors import DuplicateKeyError

from worknet import validators as v
from worknet.errors import Conflict, Forbidden, InvalidState, NotFound, ValidationError
from worknet.rpc.dispatch import ServiceResource, signature
from worknet.services.common import (
    NOT_DELETED,
    create_once,
    duplicate_key,
    get_or_404,
    notify_once,
    now,
    ok,
    paged,
    request_hash,
)

if TYPE_CHECKING:
    from worknet.store.pool import Collection

TEXT_MAX = 5000
ATTACHMENTS_MAX = 10
PREVIEW = 80

EXTRA = {
    "text": lambda value, field: v.text(value, "extra.text", 1, TEXT_MAX, strip=False),
    "attachments": lambda value, field: v.string_list(value, "extra.attachments", ATTACHMENTS_MAX, v.url),
}


def pair_key(a: ObjectId, b: ObjectId) -> str:
    """``"<smaller id>:<larger id>"``: the same for (a, b) and (b, a)."""
    low, high = sorted((str(a), str(b)))
    return f"{low}:{high}"


class MessagesService(ServiceResource):
    """messagesService.*"""

    @property
    def conversations(self) -> Collection:
        return self.store["conversations"]

    @property
    def messages(self) -> Collection:
        return self.store["messages"]

    async def _live_users(self, ids: list[ObjectId]) -> dict[ObjectId, dict]:
        found = await self.store.find_by_ids("users", ids, NOT_DELETED, projection={"_id": 1, "username": 1})
        return {doc["_id"]: doc for doc in found}

    @signature("struct", "string", "string", returns={"conversation_id": "string", "created": "boolean"})
    async def xmlrpc_start_conversation(self, user_a: Any, user_b: Any) -> dict:
        """Start (or find) the conversation between two distinct, existing users. The same pair in either order always gives the same conversation, also under concurrent calls. Returns conversation_id and created (true only for the call that made it)."""
        a = v.object_id(user_a, "user_a")
        b = v.object_id(user_b, "user_b")
        if a == b:
            raise ValidationError("user_b", "a conversation needs two different users")
        live = await self._live_users([a, b])
        for _id, field in ((a, "user_a"), (b, "user_b")):
            if _id not in live:
                raise NotFound("user not found", field)
        key = pair_key(a, b)
        existing = await self.conversations.find_one({"pairKey": key}, projection={"_id": 1})
        if existing is not None:
            return ok(conversation_id=str(existing["_id"]), created=False)
        doc = {
            "_id": ObjectId(),
            "participants": sorted((a, b), key=str),
            "pairKey": key,
            "lastMessageAt": None,
            "createdAt": now(),
        }
        try:
            await self.conversations.insert_one(doc)
        except DuplicateKeyError as e:
            if "pairKey" not in duplicate_key(e):
                raise
            existing = await self.conversations.find_one({"pairKey": key}, projection={"_id": 1})
            if existing is None:  # pragma: no cover - the unique index said it exists
                raise
            return ok(conversation_id=str(existing["_id"]), created=False)
        return ok(conversation_id=str(doc["_id"]), created=True)

    @signature("struct", "string", "string", "string", "struct", returns={"message_id": "string", "message": "struct", "created": "boolean"})
    async def xmlrpc_create(self, message_id: Any, conversation_id: Any, sender_id: Any, extra: Any = None) -> dict:
        """Send a message. message_id is client-chosen ("" lets the server choose; a retry with the same id and content returns the first result with created false, different content is a CONFLICT); the sender must be a live participant of the conversation (FORBIDDEN otherwise); extra: text 1-5000 characters, attachments up to 10 http(s) URLs; at least one of them. Moves the conversation's lastMessageAt forward and notifies the other participant. Returns message_id, message, created."""
        chosen = v.client_id(message_id, "message_id")
        _id = chosen or ObjectId()
        conv_id = v.object_id(conversation_id, "conversation_id")
        sender = v.object_id(sender_id, "sender_id")
        content = v.struct(extra, "extra", EXTRA)
        text = content.get("text", "")
        attachments = content.get("attachments", [])
        if "text" in content and not text.strip():
            raise ValidationError("extra.text", "extra.text must not be blank")
        if not text and not attachments:
            raise ValidationError("extra.text", "a message needs a text or at least one attachment")
        request = {"conversationId": conv_id, "senderId": sender, "text": text, "attachments": attachments}
        if chosen is not None:  # a repeat answers the first result before anything is checked again
            first = await self.messages.find_one({"_id": chosen})
            if first is not None:
                if first.get("requestHash") != request_hash(request):
                    raise Conflict("a different message already exists with this id", "id")
                sender_doc = await self.store["users"].find_one({"_id": sender}, projection={"username": 1})
                await self._delivered(first, (sender_doc or {}).get("username"))
                return ok(message_id=str(first["_id"]), message=first, created=False)
        conversation = await get_or_404(self.conversations, conv_id, "conversation")
        participants = conversation["participants"]
        if sender not in participants:
            raise Forbidden("only a participant of the conversation may write to it", "sender_id")
        recipient = next(p for p in participants if p != sender)
        live = await self._live_users([sender, recipient])
        if sender not in live:
            raise NotFound("user not found", "sender_id")
        if recipient not in live:
            raise InvalidState("the other participant's account no longer exists")
        doc = {
            "_id": _id,
            "conversationId": conv_id,
            "senderId": sender,
            "recipientId": recipient,
            "text": text,
            "attachments": attachments,
            "isRead": False,
            "readAt": None,
            "createdAt": now(),
        }
        stored, created = await create_once(self.messages, doc, request, "message")
        await self._delivered(stored, live[sender].get("username"))
        return ok(message_id=str(stored["_id"]), message=stored, created=created)

    async def _delivered(self, message: dict, sender_name: str | None) -> None:
        """The conversation's ``lastMessageAt`` and the recipient's notification of ``message``.

        Both steps are idempotent, so a retry (or a replay) completes a half-done send.
        """
        conv_id = message["conversationId"]
        await self.conversations.update_one({"_id": conv_id}, {"$max": {"lastMessageAt": message["createdAt"]}})
        text = message.get("text", "")
        preview = text if len(text) <= PREVIEW else text[: PREVIEW - 1] + "…"
        await notify_once(
            self.store, message["recipientId"], "message",
            f"New message from {sender_name or 'a user'}: {preview or '(attachment)'}",
            f"/conversations/{conv_id}", about=message,
        )

    @signature("struct", "string", "string", returns={"updated": "boolean"})
    async def xmlrpc_mark_as_read(self, message_id: Any, reader_id: Any = None) -> dict:
        """Mark a message read. reader_id must be the message's recipient (FORBIDDEN for anyone else, the sender included); it is required even though the signature lets it be omitted, so that no caller marks someone else's message without the check. Idempotent. Returns updated: true when this call changed it, false when it was already read."""
        _id = v.object_id(message_id, "message_id")
        if reader_id is None:
            raise ValidationError("reader_id", "reader_id is required: only the recipient may mark a message read")
        reader = v.object_id(reader_id, "reader_id")
        result = await self.messages.update_one(
            {"_id": _id, "recipientId": reader, "isRead": False},
            {"$set": {"isRead": True, "readAt": now()}},
        )
        if result.modified_count:
            return ok(updated=True)
        message = await self.messages.find_one({"_id": _id}, projection={"recipientId": 1, "isRead": 1})
        if message is None:
            raise NotFound("message not found", "message_id")
        if message["recipientId"] != reader:
            raise Forbidden("only the recipient may mark a message read", "reader_id")
        return ok(updated=False)

    @signature("struct", "string", returns={"count": "int", "by_conversation": "struct"})
    async def xmlrpc_get_unread_count(self, user_id: Any) -> dict:
        """Unread messages sent to a live user: count, and by_conversation (conversation id -> count, only conversations with unread messages). One indexed query."""
        user = v.object_id(user_id, "user_id")
        await get_or_404(self.store["users"], user, "user", projection={"_id": 1})
        groups = await self.messages.aggregate([
            {"$match": {"recipientId": user, "isRead": False}},
            {"$group": {"_id": "$conversationId", "n": {"$sum": 1}}},
        ])
        by_conversation = {str(g["_id"]): g["n"] for g in groups}
        return ok(count=sum(by_conversation.values()), by_conversation=by_conversation)

    @signature("struct", "string", "int", "int", returns={"messages": "array", "total": "int", "page": "int", "limit": "int", "pages": "int"})
    async def xmlrpc_get_conversation(self, conversation_id: Any, page: Any = None, limit: Any = None) -> dict:
        """The messages of a conversation, newest first, paged (page >= 1, limit 1-100, default 20). Returns messages, total, page, limit, pages."""
        conv_id = v.object_id(conversation_id, "conversation_id")
        page, limit = v.paging(page, limit)
        await get_or_404(self.conversations, conv_id, "conversation", projection={"_id": 1})
        return await paged(
            self.messages, {"conversationId": conv_id}, [("createdAt", -1), ("_id", -1)], page, limit, "messages",
        )
