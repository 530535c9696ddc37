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
        # usersService.get_all's role and country filters, always with deletedAt: null (live users),
        # newest first; SecantusDB uses a compound index for equalities only when its leading
        # fields are exactly the filter's fields, hence deletedAt second
        ([("role", ASC), ("deletedAt", ASC), ("createdAt", DESC), ("_id", DESC)], {"name": "users_role_newest"}),
        ([("country", ASC), ("deletedAt", ASC), ("createdAt", DESC), ("_id", DESC)],
         {"name": "users_country_newest"}),
    ],
    "gigs": [
        # search and browses are served by the catalogue index (worknet/catalogue/), not by gig
        # indexes: every gig index is rewritten on each gig write, so gigs keep only these three.
        # The live gigs of a seller / a category ({..., deletedAt: null}): all-equality indexes,
        # the only form SecantusDB plans for a two-field filter (else a full scan)
        ([("userId", ASC), ("createdAt", DESC), ("_id", DESC)], {"name": "user_newest"}),
        ([("userId", ASC), ("deletedAt", ASC)], {"name": "user_live"}),
        ([("categoryId", ASC), ("deletedAt", ASC)], {"name": "category_live"}),
    ],
    # the catalogue index: which base docs a compaction wrote since a version
    "catalogue": [
        ([("v", ASC)], {"name": "catalogue_version"}),
    ],
    "reviews": [
        # anonymous reviews (no userId) are outside the one-review-per-user rule
        ([("gigId", ASC), ("userId", ASC)],
         {"unique": True, "partialFilterExpression": {"userId": {"$exists": True}}, "name": "gig_user_unique"}),
        # the rating aggregations by gig (the partial index above cannot serve a query on gigId alone)
        ([("gigId", ASC), ("rating", ASC)], {"name": "gig_rating"}),
        ([("sellerId", ASC)], {"name": "reviews_seller"}),
    ],
    "orders": [
        ([("gigId", ASC), ("status", ASC)], {"name": "gig_status"}),
        ([("buyerId", ASC), ("gigId", ASC)],
         {"unique": True, "partialFilterExpression": {"status": "pending"}, "name": "one_pending_per_buyer_gig"}),
        ([("buyerId", ASC), ("createdAt", DESC), ("_id", DESC)], {"name": "buyer_newest"}),
        ([("sellerId", ASC), ("createdAt", DESC), ("_id", DESC)], {"name": "seller_newest"}),
        ([("sellerId", ASC), ("status", ASC), ("completedAt", ASC)], {"name": "seller_completed"}),
        ([("status", ASC), ("createdAt", DESC), ("_id", DESC)], {"name": "status_newest"}),
        ([("createdAt", DESC), ("_id", DESC)], {"name": "orders_newest"}),
        # categoriesService.get_stats: the orders of one category
        ([("categoryId", ASC), ("status", ASC)], {"name": "category_status"}),
    ],
    "payments": [
        ([("orderId", ASC)], {"name": "payment_order"}),
        ([("liveOrderId", ASC)],
         {"unique": True, "partialFilterExpression": {"liveOrderId": {"$exists": True}}, "name": "one_live_per_order"}),
    ],
    "ledger": [
        ([("key", ASC)], {"unique": True, "name": "ledger_key_unique"}),
        ([("sellerId", ASC), ("kind", ASC)], {"name": "ledger_seller"}),
        # money.post: the seller's entries a stopped attempt left at applied: false (an
        # all-equality index, so SecantusDB serves {sellerId, applied} with it)
        ([("sellerId", ASC), ("applied", ASC)], {"name": "ledger_seller_unapplied"}),
    ],
    "loginThrottle": [
        # one document per (lower-cased e-mail, client address), known account or not; it
        # expires on its own once neither its failures nor its lock matter any more
        ([("expiresAt", ASC)], {"expireAfterSeconds": 0, "name": "login_throttle_ttl"}),
    ],
    "registrations": [
        # usersService.register holds a username and an e-mail here before it hashes the password:
        # concurrent registrations of one name are decided by these, with no bcrypt work
        ([("usernameLower", ASC)], {"unique": True, "name": "registration_username_unique"}),
        ([("email", ASC)], {"unique": True, "name": "registration_email_unique"}),
        ([("expiresAt", ASC)], {"expireAfterSeconds": 0, "name": "registration_ttl"}),
    ],
    "idempotency": [
        ([("createdAt", ASC)], {"expireAfterSeconds": 24 * 3600, "name": "idempotency_ttl"}),
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
