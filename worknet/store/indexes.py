"""Every index the daemon relies on, created idempotently at startup.

Unique indexes are where invariants live (one account per e-mail, one slug per
category, one review per user and gig, ...): they hold across any number of
daemons sharing the database, which no check in process memory could.
"""

from __future__ import annotations

from typing import Any

ASC, DESC = 1, -1

# collection -> list of (keys, options)
INDEXES: dict[str, list[tuple[list[tuple[str, int]], dict[str, Any]]]] = {
    "categories": [
        ([("slug", ASC)], {"unique": True, "name": "slug_unique"}),
        ([("nameLower", ASC)], {"unique": True, "name": "name_unique"}),
        ([("isActive", ASC), ("name", ASC)], {"name": "active_by_name"}),
    ],
    "users": [
        ([("usernameLower", ASC)], {"unique": True, "name": "username_unique"}),
        ([("email", ASC)], {"unique": True, "name": "email_unique"}),
        ([("createdAt", DESC), ("_id", DESC)], {"name": "users_newest"}),
    ],
    "gigs": [
        ([("category", ASC), ("isActive", ASC)], {"name": "category_active"}),
    ],
    "orders": [
        ([("gigId", ASC), ("status", ASC)], {"name": "gig_status"}),
    ],
    "conversations": [
        ([("pairKey", ASC)], {"unique": True, "name": "pair_unique"}),
        ([("participants", ASC), ("lastMessageAt", DESC)], {"name": "participant_recent"}),
    ],
    "messages": [
        ([("recipientId", ASC), ("isRead", ASC), ("conversationId", ASC)], {"name": "recipient_unread"}),
        ([("conversationId", ASC), ("createdAt", DESC), ("_id", DESC)], {"name": "conversation_newest"}),
    ],
    "notifications": [
        ([("userId", ASC), ("isRead", ASC), ("type", ASC)], {"name": "user_unread"}),
        ([("userId", ASC), ("createdAt", DESC)], {"name": "user_newest"}),
    ],
}
