"""usersService: accounts, passwords and tokens.

* Uniqueness of usernames and e-mails lives in unique indexes on
  ``usernameLower`` and ``email`` (stored lower-cased): it holds across any
  number of daemons.  A soft-deleted account keeps its username and e-mail
  reserved.  Concurrent registrations of one username or e-mail are decided
  before any bcrypt work, by a reservation in ``registrations``
  (:meth:`UsersService._reserve`): a loser answers CONFLICT at no CPU cost.
* Passwords are bcrypt hashes computed in the thread pool
  (:mod:`worknet.security`).  Login gives one error for an unknown e-mail and a
  wrong password and costs one bcrypt check in both cases; a hash of another
  cost (bcryptjs makes cost 10) is checked in the same time as one of the
  configured cost, and replaced by one of the configured cost at the next
  successful login.
* Lockout, per (lower-cased e-mail, client address), whether an account has
  that e-mail or not, so a lockout tells nothing about which e-mails exist:
  the ``loginThrottle`` collection holds one small document per pair with the
  times of its attempts that failed or are being checked.  An attempt takes
  its place there (compare-and-set, so several daemons and concurrent calls
  agree) before any bcrypt work, and is refused ``RATE_LIMITED`` while five
  fall within 15 minutes: concurrent guesses get five checks, not one each.
  When a failure leaves five within 15 minutes, ``lockedUntil`` is set 15
  minutes ahead and the attempts are cleared; a success deletes the document.
  While locked, ``login`` (and ``change_password``) answer ``RATE_LIMITED``
  without checking the password.  The failing attempt that triggers the lock
  still answers ``UNAUTHORIZED``.  Keyed by the client address too, so that nobody can keep
  an account locked from elsewhere: the victim's own address keeps its own
  five attempts.  A TTL index removes documents nobody needs any more.
* Tokens carry the user's ``tokenVersion``; a password change or a deletion
  bumps it, so older tokens stop verifying.  The user keeps one current
  refresh token (``refreshJti``): login, register, change_password and
  refresh replace it, so a refresh token works once and only the newest one
  works.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from bson import Decimal128, ObjectId
from pymongo.errors import DuplicateKeyError

from worknet import validators as v
from worknet.errors import Conflict, InvalidState, NotFound, RateLimited, Unauthorized, ValidationError
from worknet.money import as_decimal, average_rating
from worknet.rpc.dispatch import ServiceResource, caller_address, signature
from worknet.security import ACCESS, BAD_TOKEN, REFRESH, Clock, CpuPool, Passwords, Tokens, login_password, password
from worknet.services.common import NOT_DELETED, duplicate_key, get_or_404, ok, paged, set_on_live
from worknet.services.gigs import withdraw_gigs

if TYPE_CHECKING:
    from worknet.store.interface import Store
    from worknet.store.pool import Collection

ROLES = ("client", "freelancer")
ALL_ROLES = ("client", "freelancer", "admin")
MAX_FAILURES = 5
RESERVATION_TIME = timedelta(minutes=1)  # a registration's hold on its username and e-mail, beyond the call timeout
ATTEMPT_TRIES = 16  # compare-and-set rounds for one attempt's reservation (each round, one contender wins)
FAILURE_WINDOW = timedelta(minutes=15)
LOCK_TIME = timedelta(minutes=15)
BAD_CREDENTIALS = "Invalid email or password."
ACTIVE_ORDER_STATUSES = ["pending", "in_progress"]
OPEN_ORDER_STATUSES = ["pending", "in_progress", "disputed"]

_USERNAME = re.compile(r"^[A-Za-z0-9_]+$")
_PHONE = re.compile(r"^\+?[0-9 ().-]{0,30}$")


def _username(value: Any, field: str = "username") -> str:
    return v.text(value, field, 3, 30, pattern=_USERNAME, pattern_hint="may contain only letters, digits and _")


def _picture(value: Any, field: str) -> str:
    return "" if value == "" else v.url(value, field)


UPDATES = {
    "username": _username,
    "email": v.email,
    "phone": lambda value, field: v.text(value, field, 0, 30, pattern=_PHONE, pattern_hint="is not a phone number"),
    "country": lambda value, field: v.text(value, field, 0, 60),
    "bio": lambda value, field: v.text(value, field, 0, 2000),
    "profilePicture": _picture,
    "skills": lambda value, field: v.string_list(value, field, 30, lambda s, f: v.text(s, f, 1, 50)),
    "isSeller": v.boolean,
}

FILTERS = {
    "role": lambda value, field: v.choice(value, field, ALL_ROLES),
    "country": lambda value, field: v.text(value, field, 1, 60),
    "is_seller": v.boolean,
    "search": lambda value, field: v.text(value, field, 1, 100),
}


def _conflict(error: DuplicateKeyError) -> Conflict:
    if "usernameLower" in duplicate_key(error):
        return Conflict("this username is already taken", "username")
    return Conflict("an account with this email already exists", "email")


def _token_string(value: Any, field: str) -> str:
    return v.text(value, field, 1, 4096)


class UsersService(ServiceResource):
    """usersService.*"""

    def __init__(self, store: Store, settings: Any) -> None:
        super().__init__(store, settings)
        self.clock = Clock.from_settings(settings)
        self.passwords = Passwords(settings.bcrypt_rounds, CpuPool(budget=settings.db_timeout_seconds))
        self.tokens = Tokens(settings.jwt_secret, settings.jwt_expires_in_days, settings.jwt_refresh_expires_in_days)

    @property
    def users(self) -> Collection:
        return self.store["users"]

    # -- helpers ----------------------------------------------------------------

    def _token_pair(self, user: dict, moment: datetime, jti: str) -> dict:
        user_id, role, version = str(user["_id"]), user["role"], user.get("tokenVersion", 0)
        return {
            "token": self.tokens.issue(user_id, role, ACCESS, version, moment),
            "refresh_token": self.tokens.issue(user_id, role, REFRESH, version, moment, jti),
        }

    @property
    def throttle(self) -> Collection:
        return self.store["loginThrottle"]

    @staticmethod
    def _refuse_if_locked(doc: dict | None, moment: datetime) -> None:
        locked_until = (doc or {}).get("lockedUntil")
        if locked_until is not None and _aware(locked_until) > moment:
            minutes = max(1, int((_aware(locked_until) - moment).total_seconds() // 60) + 1)
            raise RateLimited(f"Too many failed logins; try again in {minutes} minutes.")

    async def _check_not_locked(self, key: str, moment: datetime) -> None:
        """RATE_LIMITED while the (e-mail, address) pair ``key`` is locked."""
        self._refuse_if_locked(await self.throttle.find_one({"_id": key}, projection={"lockedUntil": 1}), moment)

    async def _take_attempt(self, key: str, moment: datetime) -> None:
        """Reserve one of the pair's five attempts per 15 minutes, before any bcrypt check.

        RATE_LIMITED while the pair is locked, and while five attempts (failed,
        or still being checked) fall within 15 minutes: concurrent guesses get
        five checks, not one each.  A compare-and-set on ``seq`` makes the
        reservation exact on any server; a success deletes the document, a
        failure leaves its attempt in place (:meth:`_record_failure`).
        """
        for _ in range(ATTEMPT_TRIES):
            doc = await self.throttle.find_one({"_id": key})
            if doc is None:
                try:
                    await self.throttle.insert_one({"_id": key, "attempts": [moment], "lockedUntil": None,
                                                    "seq": 0, "expiresAt": moment + FAILURE_WINDOW})
                    return
                except DuplicateKeyError:  # a concurrent attempt created it: take a place in it
                    continue
            self._refuse_if_locked(doc, moment)
            recent = [a for a in doc.get("attempts") or [] if _aware(a) > moment - FAILURE_WINDOW]
            if len(recent) >= MAX_FAILURES:
                raise RateLimited("Too many failed logins; try again in a few minutes.")
            taken = await self.throttle.update_one(
                {"_id": key, "seq": doc.get("seq")},
                {"$set": {"attempts": [*recent, moment], "lockedUntil": None}, "$inc": {"seq": 1},
                 "$max": {"expiresAt": moment + FAILURE_WINDOW}},  # never before a lock it races ends
            )
            if taken.modified_count:
                return
        raise RateLimited("Too many logins at once; try again in a moment.")

    async def _record_failure(self, key: str, moment: datetime) -> None:
        """The attempt reserved for ``key`` failed: when five attempts fall within 15 minutes, lock the pair."""
        doc = await self.throttle.find_one({"_id": key}, projection={"attempts": 1, "lockedUntil": 1})
        if doc is None or (doc.get("lockedUntil") is not None and _aware(doc["lockedUntil"]) > moment):
            return
        recent = [a for a in doc.get("attempts") or [] if _aware(a) > moment - FAILURE_WINDOW]
        if len(recent) >= MAX_FAILURES:
            until = moment + LOCK_TIME
            await self.throttle.update_one(
                {"_id": key},
                {"$set": {"lockedUntil": until, "attempts": []}, "$inc": {"seq": 1}, "$max": {"expiresAt": until}},
            )

    async def _clear_attempts(self, key: str) -> None:
        """A success forgets the pair's failures (never a lock set meanwhile)."""
        await self.throttle.delete_one({"_id": key, "lockedUntil": None})

    @property
    def registrations(self) -> Collection:
        return self.store["registrations"]

    async def _refuse_taken(self, username_lower: str, email: str) -> None:
        """CONFLICT when an account (deleted ones too) has this username or e-mail (the username first)."""
        taken = await self.store.find_first("users", [{"usernameLower": username_lower}, {"email": email}],
                                            projection={"_id": 1})
        if taken is not None and taken[0] == 0:
            raise Conflict("this username is already taken", "username")
        if taken is not None:
            raise Conflict("an account with this email already exists", "email")

    async def _reserve(self, username_lower: str, email: str, moment: datetime) -> ObjectId:
        """Hold the username and e-mail for one registration, before any bcrypt work; its id.

        The ``registrations`` collection's unique indexes decide between concurrent
        registrations of one name or e-mail: one holds them, the others are CONFLICT at the
        cost of one failed insert (no password hash).  The holder deletes its reservation
        when it is done, whatever the outcome; one left by a daemon that stopped half-way
        lapses at ``expiresAt`` (longer than any call may run): the next registration takes
        it over at once, and the TTL index removes it meanwhile.  No account exists before the
        user document is inserted, hash included, so a stop in between leaves nothing to log
        in to and holds the name and e-mail for about a minute (CONFLICT meanwhile).
        """
        expires = moment + RESERVATION_TIME + timedelta(seconds=self.settings.db_timeout_seconds)
        for _ in range(3):  # each round, at most one lapsed reservation (of the name, or of the e-mail) goes
            reservation = ObjectId()
            try:
                await self.registrations.insert_one({"_id": reservation, "usernameLower": username_lower,
                                                     "email": email, "expiresAt": expires})
                return reservation
            except DuplicateKeyError as e:
                conflict = _conflict(e)
            if conflict.field == "email":  # perhaps no account yet: one is being created
                conflict = Conflict("an account with this email already exists or is being created", "email")
            held = {"usernameLower": username_lower} if conflict.field == "username" else {"email": email}
            lapsed = await self.registrations.delete_one({**held, "expiresAt": {"$lte": moment}})
            if not lapsed.deleted_count:
                raise conflict
        raise Conflict("this username or email is being registered right now")

    async def _user_for_token(self, token: str, kind: str) -> tuple[dict, Any]:
        claims = self.tokens.verify(token, kind, await self.clock.now())
        user = await self.users.find_one({"_id": ObjectId(claims.user_id), **NOT_DELETED}) \
            if _is_hex24(claims.user_id) else None
        if user is None or user.get("tokenVersion", 0) != claims.version:
            raise Unauthorized(BAD_TOKEN)
        return user, claims

    # -- methods ----------------------------------------------------------------

    @signature("struct", "string", "string", "string", "string", returns={"user_id": "string", "user": "struct", "token": "string", "refresh_token": "string"})
    async def xmlrpc_register(self, username: Any, email: Any, password_: Any, role: Any) -> dict:
        """Create an account. username 3-30 letters, digits or _ (unique, case-insensitively); email valid and unique (stored lower-case); password 8-72 bytes of UTF-8; role client or freelancer (a freelancer is a seller; admin cannot be registered). Returns user_id, user, token (access JWT), refresh_token. A taken username or email is CONFLICT (field username or email)."""
        clean_username = _username(username)
        clean_email = v.email(email)
        secret = password(password_)
        clean_role = v.choice(role, "role", ROLES)
        username_lower = clean_username.lower()
        await self._refuse_taken(username_lower, clean_email)  # existing accounts: two index lookups, no write
        moment = await self.clock.now()
        reservation = await self._reserve(username_lower, clean_email, moment)
        try:
            # an account made since the lookups above, by a registration whose reservation is already gone
            await self._refuse_taken(username_lower, clean_email)
            hashed = await self.passwords.hash(secret)
            jti = self.tokens.new_jti()
            doc: dict[str, Any] = {
                "_id": ObjectId(),
                "username": clean_username,
                "usernameLower": username_lower,
                "email": clean_email,
                "passwordHash": hashed,
                "role": clean_role,
                "isSeller": clean_role == "freelancer",
                "phone": "",
                "country": "",
                "bio": "",
                "profilePicture": "",
                "skills": [],
                "rating": 0.0,
                "reviewCount": 0,
                "totalEarnings": Decimal128("0.00"),
                "tokenVersion": 0,
                "refreshJti": jti,
                "createdAt": moment,
                "updatedAt": moment,
            }
            try:
                await self.users.insert_one(doc)
            except DuplicateKeyError as e:  # an update_profile took the name meanwhile: still decided here
                raise _conflict(e) from None
        finally:
            await self.registrations.delete_one({"_id": reservation})
        return ok(user_id=str(doc["_id"]), user=doc, **self._token_pair(doc, moment, jti))

    @signature("struct", "string", "string", returns={"user": "struct", "token": "string", "refresh_token": "string"})
    async def xmlrpc_login(self, email: Any, password_: Any) -> dict:
        """Log in with email and password. An unknown email and a wrong password give the same UNAUTHORIZED answer (and cost the same bcrypt check); 5 failures within 15 minutes from one client address lock that email for that address for 15 minutes (RATE_LIMITED), whether an account has that email or not. Deleted accounts cannot log in. Returns token (access JWT), refresh_token (replaces the previous one), user."""
        clean_email = v.email(email)
        secret = login_password(password_)
        moment = await self.clock.now()
        key = _throttle_key(clean_email, caller_address())
        await self._take_attempt(key, moment)
        user = await self.users.find_one({"email": clean_email, **NOT_DELETED})
        hashed = user.get("passwordHash") if user else None
        matched = await self.passwords.check(secret, hashed)  # the dummy hash when there is no account
        if user is None or not matched:
            await self._record_failure(key, moment)
            raise Unauthorized(BAD_CREDENTIALS)
        await self._check_not_locked(key, moment)  # locked by failures that raced this check
        if self.passwords.needs_rehash(hashed):
            # the configured cost from now on; compare-and-set, so a concurrent change_password wins
            await self.users.update_one({"_id": user["_id"], "passwordHash": hashed},
                                        {"$set": {"passwordHash": await self.passwords.hash(secret)}})
        jti = self.tokens.new_jti()
        fresh = await self.store.update_and_fetch(
            "users", {"_id": user["_id"], **NOT_DELETED, "tokenVersion": user.get("tokenVersion", 0)},
            {"$set": {"refreshJti": jti}},
        )
        if fresh is None:  # deleted or password changed meanwhile
            raise Unauthorized(BAD_CREDENTIALS)
        await self._clear_attempts(key)  # a success clears this address's failures
        return ok(user=fresh, **self._token_pair(fresh, moment, jti))

    @signature("struct", "string", returns={"user": "struct"})
    async def xmlrpc_get_by_id(self, user_id: Any) -> dict:
        """One user by id (deleted users are NOT_FOUND). Returns user."""
        _id = v.object_id(user_id, "user_id")
        return ok(user=await get_or_404(self.users, _id, "user"))

    @signature("struct", "int", "int", "struct", returns={"users": "array", "total": "int", "page": "int", "limit": "int", "pages": "int"})
    async def xmlrpc_get_all(self, page: Any = None, limit: Any = None, filters: Any = None) -> dict:
        """Users, newest first, paged (page >= 1, limit 1-100, default 20). filters (all optional): role (client, freelancer, admin), country (exact), is_seller (boolean), search (prefix of the username or the email, case-insensitive, taken literally). Deleted users are left out. Returns users, total, page, limit, pages."""
        page, limit = v.paging(page, limit)
        clean = v.struct(filters, "filters", FILTERS)
        query: dict[str, Any] = {**NOT_DELETED}
        if "role" in clean:
            query["role"] = clean["role"]
        if "country" in clean:
            query["country"] = clean["country"]
        if "is_seller" in clean:
            query["isSeller"] = clean["is_seller"]
        if "search" in clean:
            prefix = v.escape_prefix(clean["search"].lower())
            query["$or"] = [{"usernameLower": {"$regex": prefix}}, {"email": {"$regex": prefix}}]
        return await paged(self.users, query, [("createdAt", -1), ("_id", -1)], page, limit, "users")

    @signature("struct", "string", "struct", returns={"user": "struct"})
    async def xmlrpc_update_profile(self, user_id: Any, updates: Any) -> dict:
        """Update a profile. updates may hold only username, email (both stay unique: CONFLICT), phone, country, bio (<= 2000), profilePicture (http(s) URL or ""), skills (<= 30 strings), isSeller (a freelancer is always a seller); password, role, rating, earnings and any other key are refused (VALIDATION_ERROR). Returns user."""
        _id = v.object_id(user_id, "user_id")
        changes = v.struct(updates, "updates", UPDATES, allow_empty=False)
        user = await get_or_404(self.users, _id, "user", projection={"role": 1})
        if changes.get("isSeller") is False and user.get("role") == "freelancer":
            raise ValidationError("isSeller", "a freelancer is always a seller")
        if "username" in changes:
            changes["usernameLower"] = changes["username"].lower()
        changes["updatedAt"] = await self.clock.now()
        return ok(user=await set_on_live(self.store, "users", _id, changes, "user", _conflict))

    @signature("struct", "string", "string", "string", returns={"token": "string", "refresh_token": "string"})
    async def xmlrpc_change_password(self, user_id: Any, old_password: Any, new_password: Any) -> dict:
        """Change a password: old_password must match (UNAUTHORIZED otherwise, counted like a failed login of the account's email from the caller's address; RATE_LIMITED while that is locked); new_password 8-72 bytes of UTF-8 and different from the old one. Every token issued before stops verifying. Returns token, refresh_token (new ones)."""
        _id = v.object_id(user_id, "user_id")
        old = login_password(old_password, "old_password")
        new = password(new_password, "new_password")
        if new == old:
            raise ValidationError("new_password", "the new password must differ from the old one")
        user = await get_or_404(self.users, _id, "user")
        moment = await self.clock.now()
        key = _throttle_key(str(user.get("email", "")), caller_address())
        await self._take_attempt(key, moment)
        if not await self.passwords.check(old, user.get("passwordHash")):
            await self._record_failure(key, moment)
            raise Unauthorized("The current password is wrong.", "old_password")
        await self._clear_attempts(key)
        hashed = await self.passwords.hash(new)
        jti = self.tokens.new_jti()
        fresh = await self.store.update_and_fetch(
            "users", {"_id": _id, **NOT_DELETED, "passwordHash": user.get("passwordHash")},
            {"$set": {"passwordHash": hashed, "refreshJti": jti, "updatedAt": moment},
             "$inc": {"tokenVersion": 1}},
        )
        if fresh is None:
            raise Conflict("the password was changed at the same time; try again")
        return ok(**self._token_pair(fresh, moment, jti))

    @signature("struct", "string", returns={"deleted": "boolean"})
    async def xmlrpc_delete_user(self, user_id: Any) -> dict:
        """Soft-delete a user (deletedAt): refused (INVALID_STATE) while the user has pending or in-progress orders as buyer or seller. Afterwards the user is NOT_FOUND everywhere, cannot log in and its tokens fail, and its gigs are deleted (gone from search); the username and email stay reserved. Returns deleted: true."""
        _id = v.object_id(user_id, "user_id")
        moment = await self.clock.now()
        # Mark first, then look for open orders: placing an order touches its buyer and
        # seller, so an order placed at the same time either finds this user gone or is
        # seen here, and then the mark is taken back.
        marked = await self.users.update_one({"_id": _id, **NOT_DELETED}, {"$set": {"deletedAt": moment}})
        if marked.modified_count == 0:
            raise NotFound("user not found")
        open_orders = {"status": {"$in": ACTIVE_ORDER_STATUSES}}
        if await self.store.matches_any("orders", [{"buyerId": _id, **open_orders}, {"sellerId": _id, **open_orders}]):
            await self.users.update_one({"_id": _id, "deletedAt": moment}, {"$set": {"deletedAt": None}})
            raise InvalidState("the user has pending or in-progress orders")
        # marked deleted, its tokens already fail; these make that permanent
        await self.users.update_one(
            {"_id": _id}, {"$set": {"updatedAt": moment, "refreshJti": None}, "$inc": {"tokenVersion": 1}},
        )
        await withdraw_gigs(self.store, _id, moment)
        return ok(deleted=True)

    @signature("struct", "string", returns={"stats": "struct"})
    async def xmlrpc_get_stats(self, user_id: Any) -> dict:
        """Figures of a user. stats: totalOrders, completedOrders, activeOrders (ints, buyer and seller sides added; active = pending, in_progress or disputed), asBuyer and asSeller (structs with totalOrders, completedOrders, activeOrders for each side), totalGigs and activeGigs (live gigs, active ones), totalReviews and averageRating (reviews received as seller, 2 decimals, 0 when none), totalEarnings (the user's credited earnings), totalSpent (completed orders as buyer). Returns stats."""
        _id = v.object_id(user_id, "user_id")
        user = await get_or_404(self.users, _id, "user", projection={"totalEarnings": 1})
        per_side = await self.store.aggregate_each("orders", [[
            {"$match": {field: _id}},
            {"$group": {
                "_id": name,
                "total": {"$sum": 1},
                "completed": {"$sum": {"$cond": [{"$eq": ["$status", "completed"]}, 1, 0]}},
                "active": {"$sum": {"$cond": [{"$in": ["$status", OPEN_ORDER_STATUSES]}, 1, 0]}},
                "spent": {"$sum": {"$cond": [{"$eq": ["$status", "completed"]}, "$totalPrice", 0]}},
            }},
        ] for name, field in (("buyer", "buyerId"), ("seller", "sellerId"))])
        orders = [row for rows in per_side for row in rows]
        gigs = await self.store["gigs"].aggregate([
            {"$match": {"userId": _id, **NOT_DELETED}},
            {"$group": {
                "_id": None,
                "total": {"$sum": 1},
                "active": {"$sum": {"$cond": [{"$eq": ["$isActive", True]}, 1, 0]}},
            }},
        ])
        reviews = await self.store["reviews"].aggregate([
            {"$match": {"sellerId": _id}},
            {"$group": {"_id": None, "count": {"$sum": 1}, "sum": {"$sum": "$rating"}}},
        ])
        sides = {row["_id"]: row for row in orders}

        def side(name: str) -> dict:
            row = sides.get(name, {})
            return {"totalOrders": row.get("total", 0), "completedOrders": row.get("completed", 0),
                    "activeOrders": row.get("active", 0)}

        buyer, seller = side("buyer"), side("seller")
        g = gigs[0] if gigs else {}
        r = reviews[0] if reviews else {}
        count = r.get("count", 0)
        return ok(stats={
            "totalOrders": buyer["totalOrders"] + seller["totalOrders"],
            "completedOrders": buyer["completedOrders"] + seller["completedOrders"],
            "activeOrders": buyer["activeOrders"] + seller["activeOrders"],
            "asBuyer": buyer,
            "asSeller": seller,
            "totalGigs": g.get("total", 0),
            "activeGigs": g.get("active", 0),
            "totalReviews": count,
            "averageRating": average_rating(r.get("sum", 0), count),
            "totalEarnings": as_decimal(user.get("totalEarnings")),
            "totalSpent": as_decimal(sides.get("buyer", {}).get("spent", 0)),
        })

    @signature("struct", "string", returns={"user_id": "string", "role": "string", "expires_at": "string"})
    async def xmlrpc_verify_token(self, token: Any) -> dict:
        """Check an access token (HS256 signature, type access, not expired, user not deleted, issued after the last password change). Returns user_id, role, expires_at; UNAUTHORIZED otherwise (refresh tokens are refused)."""
        user, claims = await self._user_for_token(_token_string(token, "token"), ACCESS)
        return ok(user_id=str(user["_id"]), role=user["role"], expires_at=claims.expires_at)

    @signature("struct", "string", returns={"token": "string", "refresh_token": "string"})
    async def xmlrpc_refresh_token(self, refresh_token: Any) -> dict:
        """Exchange a refresh token for a new access token and a new refresh token (rotation: each refresh token works once, and only the newest one issued to the user). Access tokens are refused. Returns token, refresh_token; UNAUTHORIZED otherwise."""
        user, claims = await self._user_for_token(_token_string(refresh_token, "refresh_token"), REFRESH)
        jti = self.tokens.new_jti()
        fresh = await self.store.update_and_fetch(
            "users", {"_id": user["_id"], **NOT_DELETED, "tokenVersion": claims.version, "refreshJti": claims.jti},
            {"$set": {"refreshJti": jti}},
        )
        if fresh is None:
            raise Unauthorized(BAD_TOKEN)
        return ok(**self._token_pair(fresh, await self.clock.now(), jti))


def _throttle_key(email: str, address: str) -> str:
    """The ``loginThrottle`` id of a lower-cased e-mail tried from a client address."""
    return f"{address} {email}"


def _is_hex24(value: str) -> bool:
    return bool(re.fullmatch(r"[0-9a-f]{24}", value))


def _aware(moment: datetime) -> datetime:
    """BSON dates come back naive (UTC) from txmongo: make them comparable with the clock."""
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
