"""Passwords, tokens and the clock they are judged by.

* Passwords: bcrypt with ``BCRYPT_ROUNDS`` (default 12), always computed in a
  thread pool of one thread per core (:class:`CpuPool`) -- the reactor thread
  never hashes.
  A password is 8 to 72 bytes of UTF-8; longer is a validation error, never a
  silent truncation.  A stored hash of a lower cost (bcryptjs's default is 10)
  is checked in as long as one of the configured cost (padded with checks of
  its own cost in the same job), so the time of a wrong answer does not tell
  such accounts apart; :meth:`Passwords.needs_rehash` tells the caller to
  replace it after a successful check.
* Tokens: JWT HS256 signed with ``JWT_SECRET`` (PyJWT), claims ``sub`` (user
  id), ``role``, ``type`` (``access``/``refresh``), ``iat``, ``exp`` and
  ``ver`` (the user's ``tokenVersion``: bumping it revokes every older token);
  refresh tokens also carry a unique ``jti``.  Decoding pins
  ``algorithms=["HS256"]`` (no ``alg: none``, no algorithm confusion); the
  type and the times are checked here, the version and the user's existence
  by the caller (:mod:`worknet.services.users`) against the database.  The
  times are whole seconds between 1970 and 9999: ``exp`` must be later than
  now and than ``iat``; ``iat`` and ``nbf`` (optional) no later than now plus
  :data:`CLOCK_SKEW_SECONDS` (30 s: room for the clocks of two daemons
  sharing ``JWT_SECRET``).  Every token that fails any check, however
  strange its claims, is ``UNAUTHORIZED``.
* Clock: token expiry and login lockouts read the time through a
  :class:`Clock`.  Only when ``NODE_ENV=test`` *and* the environment variable
  ``WORKNET_TEST_CLOCK_FILE`` names a file does the clock add the number of
  seconds written in that file (tests move time forward by writing it); the
  file is read in the thread pool, never on the reactor thread.  Outside
  ``NODE_ENV=test`` the variable is ignored and the clock is the system's.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeGuard, TypeVar

import bcrypt
import jwt
from jwt.warnings import InsecureKeyLengthWarning
from twisted.application import service
from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from worknet.errors import Unauthorized, Unavailable, ValidationError

PASSWORD_MIN_BYTES = 8
PASSWORD_MAX_BYTES = 72
ALGORITHM = "HS256"
T = TypeVar("T")
ACCESS, REFRESH = "access", "refresh"
TEST_CLOCK_VARIABLE = "WORKNET_TEST_CLOCK_FILE"
BUSY = "The server is busy; try again in a moment."
BAD_TOKEN = "The token is invalid or has expired."  # noqa: S105 - an error message, not a secret
CLOCK_SKEW_SECONDS = 30  # how far in the future a token's iat / nbf may be
LAST_SECOND = 253402300799  # 9999-12-31T23:59:59Z: the last moment a datetime holds

# A well-formed bcrypt hash of a random password nobody knows: logins for an
# unknown e-mail are checked against it (with the configured cost) so that
# they take as long as a wrong password for a real account.
_DUMMY_SALT_AND_HASH = "N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy"


# -- the clock --------------------------------------------------------------


def _read_offset(path: str) -> float:
    try:
        raw = Path(path).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return 0.0
    return float(raw) if raw else 0.0


class Clock:
    """The current time (UTC), optionally shifted by a test-only offset file."""

    def __init__(self, offset_file: str | None = None) -> None:
        self.offset_file = offset_file

    @classmethod
    def from_settings(cls, settings: Any, environ: Any = None) -> Clock:
        """The system clock, or a movable one under ``NODE_ENV=test`` with ``WORKNET_TEST_CLOCK_FILE`` set."""
        if settings.node_env != "test":
            return cls()
        environ = os.environ if environ is None else environ
        return cls(environ.get(TEST_CLOCK_VARIABLE) or None)

    async def now(self) -> datetime:
        """The current UTC time, truncated to the millisecond (what BSON dates keep)."""
        moment = datetime.now(UTC)
        if self.offset_file:
            moment += timedelta(seconds=await threads.deferToThread(_read_offset, self.offset_file))
        return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


# -- passwords --------------------------------------------------------------


def _utf8_size(value: str, field: str) -> int:
    try:
        return len(value.encode("utf-8"))
    except UnicodeEncodeError:  # a lone surrogate: not text
        raise ValidationError(field, f"{field} is not valid UTF-8 text") from None


def password(value: Any, field: str = "password") -> str:
    """A password of 8 to 72 bytes of UTF-8 (bcrypt's limit: longer is refused, never truncated)."""
    if not isinstance(value, str):
        raise ValidationError(field, f"{field} must be a string")
    size = _utf8_size(value, field)
    if size < PASSWORD_MIN_BYTES:
        raise ValidationError(field, f"{field} must be at least {PASSWORD_MIN_BYTES} bytes long")
    if size > PASSWORD_MAX_BYTES:
        raise ValidationError(field, f"{field} must be at most {PASSWORD_MAX_BYTES} bytes long (UTF-8)")
    return value


def login_password(value: Any, field: str = "password") -> str:
    """A password as typed at login: a non-empty string of at most 72 bytes."""
    if not isinstance(value, str) or not value:
        raise ValidationError(field, f"{field} must be a non-empty string")
    if _utf8_size(value, field) > PASSWORD_MAX_BYTES:
        raise ValidationError(field, f"{field} must be at most {PASSWORD_MAX_BYTES} bytes long (UTF-8)")
    return value


def _hash(secret: str, rounds: int) -> str:
    return bcrypt.hashpw(secret.encode("utf-8"), bcrypt.gensalt(rounds)).decode("ascii")


def hash_cost(hashed: str | None) -> int | None:
    """The cost (log2 rounds) of a bcrypt hash (``$2a$``/``$2b$``/``$2y$``), None when it is not one."""
    if not isinstance(hashed, str) or len(hashed) != 60 or hashed[:4] not in ("$2a$", "$2b$", "$2y$"):
        return None
    digits = hashed[4:6]
    return int(digits) if digits.isdigit() and hashed[6] == "$" else None


def _check(secret: str, hashed: str, rounds: int) -> bool:
    """``secret`` against ``hashed``, taking as long as a check at cost ``rounds`` when ``hashed`` is cheaper.

    The work of bcrypt at cost c is 2**c: a hash of cost c < rounds is padded
    with 2**(rounds - c) - 1 checks of cost c against a dummy hash.  A
    malformed hash never matches and costs one check at ``rounds``.
    """
    raw = secret.encode("utf-8")
    cost = hash_cost(hashed)
    try:
        matched = bcrypt.checkpw(raw, hashed.encode("ascii"))
    except ValueError:
        matched, cost = False, None
    if cost is None:
        bcrypt.checkpw(raw, f"$2b${rounds:02d}${_DUMMY_SALT_AND_HASH}".encode("ascii"))
    elif cost < rounds:
        padding = f"$2b${cost:02d}${_DUMMY_SALT_AND_HASH}".encode("ascii")
        for _ in range(2 ** (rounds - cost) - 1):
            bcrypt.checkpw(raw, padding)
    return matched


class CpuPool(service.Service):
    """A thread pool for CPU-bound work (bcrypt): one thread per core, never on the reactor thread.

    * Sized to the cores rather than the reactor's default pool (10 threads),
      and its threads lower their own scheduling priority (``SCHED_IDLE`` on
      Linux, else nice 10), so that during a login storm the reactor thread
      and the database get the CPU at once while bcrypt takes whatever is left.
    * Deadlines: a job that a thread picks up too late to finish within
      ``budget`` seconds (the call timeout) of its submission, or whose caller
      already gave up (the call timed out and cancelled its Deferred), is
      skipped and answered ``Unavailable`` (busy): no CPU is spent on answers
      nobody will read, so a storm beyond capacity still completes logins at
      the pool's full rate.  A queue longer than 64 jobs per thread is refused
      at once.

    A service of the daemon's tree (:func:`worknet.app.build_app`): its threads
    run once it is started (jobs submitted before wait), and stopping it waits
    for the jobs already running.
    """

    name = "password-pool"

    NICE = 10
    MAX_QUEUE_PER_THREAD = 64

    def __init__(self, size: int | None = None, budget: float = 5.0, reactor: Any = None) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.size = size or os.cpu_count() or 1
        self.budget = budget
        self.pending = 0  # queued or running jobs (changed on the reactor thread only)
        self.jobs = {"run": 0, "skipped": 0, "refused": 0}  # outcomes so far, for /metrics
        self.job_seconds = 0.0  # moving average of a job's duration
        self.pool = ThreadPool(minthreads=0, maxthreads=self.size, name="worknet-bcrypt")
        self._niced = threading.local()

    def startService(self) -> None:
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        super().stopService()
        self.pool.stop()

    def _lower_priority(self) -> None:
        if getattr(self._niced, "done", False):
            return
        self._niced.done = True
        thread = threading.get_native_id()
        try:  # Linux: run only when no normal task wants the core
            os.sched_setscheduler(thread, os.SCHED_IDLE, os.sched_param(0))
            return
        except (AttributeError, OSError):
            pass
        try:  # elsewhere: a lower priority at least
            os.setpriority(os.PRIO_PROCESS, thread, self.NICE)
        except (AttributeError, OSError):  # not allowed: run at normal priority
            pass

    def run(self, function: Callable[..., T], *args: Any) -> defer.Deferred[T]:
        if self.pending >= self.size * self.MAX_QUEUE_PER_THREAD:
            self.jobs["refused"] += 1
            raise Unavailable(BUSY)
        abandoned = threading.Event()
        result: defer.Deferred[T] = defer.Deferred(canceller=lambda _: abandoned.set())
        enqueued = time.monotonic()
        latest_start = self.budget * 0.9 - self.job_seconds  # later than this, the answer would come too late
        self.pending += 1

        def job() -> tuple[bool, T | None, float]:
            if abandoned.is_set() or time.monotonic() - enqueued > latest_start:
                return False, None, 0.0
            self._lower_priority()
            started = time.perf_counter()
            value = function(*args)
            return True, value, time.perf_counter() - started

        def done(success: bool, outcome: Any) -> None:
            self.pending -= 1
            self.jobs["skipped" if success and not outcome[0] else "run"] += 1
            if success and outcome[2]:
                seconds = outcome[2]
                self.job_seconds = seconds if not self.job_seconds else 0.8 * self.job_seconds + 0.2 * seconds
            if abandoned.is_set():  # already errbacked with CancelledError
                return
            if not success:
                result.errback(outcome)
            elif not outcome[0]:
                result.errback(Unavailable(BUSY))
            else:
                result.callback(outcome[1])

        self.pool.callInThreadWithCallback(lambda ok, outcome: self.reactor.callFromThread(done, ok, outcome), job)
        return result


class Passwords:
    """bcrypt with the configured cost, in a :class:`CpuPool`."""

    def __init__(self, rounds: int, pool: CpuPool) -> None:
        self.rounds = rounds
        self.dummy_hash = f"$2b${rounds:02d}${_DUMMY_SALT_AND_HASH}"
        self.pool = pool

    async def hash(self, secret: str) -> str:
        return await self.pool.run(_hash, secret, self.rounds)

    async def check(self, secret: str, hashed: str | None) -> bool:
        """True when ``secret`` matches ``hashed``; with ``None`` checks against the dummy hash and is False.

        One job in the pool, as long as a check at the configured cost
        whatever the cost of ``hashed`` (when it is not higher).
        """
        if hashed is None:
            await self.pool.run(_check, secret, self.dummy_hash, self.rounds)
            return False
        return await self.pool.run(_check, secret, hashed, self.rounds)

    def needs_rehash(self, hashed: str | None) -> bool:
        """True when ``hashed`` (which just matched) is not a hash of the configured cost."""
        return hash_cost(hashed) != self.rounds


# -- tokens -----------------------------------------------------------------


@contextlib.contextmanager
def _short_key_allowed(quiet: bool) -> Iterator[None]:
    if not quiet:
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InsecureKeyLengthWarning)
        yield


@dataclass(frozen=True)
class Claims:
    user_id: str
    role: str
    kind: str
    version: int
    issued_at: datetime
    expires_at: datetime
    jti: str | None


class Tokens:
    """JWT HS256 issue and verify."""

    def __init__(self, secret: str, access_days: int, refresh_days: int) -> None:
        self._secret = secret
        # Only a development daemon runs with a short secret (config refuses it elsewhere) and
        # says so loudly at startup; PyJWT would repeat that warning on every token.
        self._quiet = len(secret.encode("utf-8")) < 32
        self.lifetimes = {ACCESS: timedelta(days=access_days), REFRESH: timedelta(days=refresh_days)}

    @staticmethod
    def new_jti() -> str:
        return secrets.token_urlsafe(16)

    def issue(self, user_id: str, role: str, kind: str, version: int, moment: datetime, jti: str | None = None) -> str:
        issued = int(moment.timestamp())
        claims: dict[str, Any] = {
            "sub": user_id,
            "role": role,
            "type": kind,
            "iat": issued,
            "exp": issued + int(self.lifetimes[kind].total_seconds()),
            "ver": version,
        }
        if jti is not None:
            claims["jti"] = jti
        with _short_key_allowed(self._quiet):
            return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str, kind: str, moment: datetime) -> Claims:
        """The claims of a well-signed, unexpired token of type ``kind``, or Unauthorized."""
        required = ["sub", "role", "type", "iat", "exp", "ver"] + (["jti"] if kind == REFRESH else [])
        try:
            with _short_key_allowed(self._quiet):
                claims = jwt.decode(
                    token, self._secret, algorithms=[ALGORITHM],
                    # expiry is judged by our clock (below), not PyJWT's
                    options={"require": required, "verify_exp": False, "verify_iat": False, "verify_nbf": False},
                )
        except jwt.InvalidTokenError:
            raise Unauthorized(BAD_TOKEN) from None
        sub, role, version, exp, iat = (claims.get(k) for k in ("sub", "role", "ver", "exp", "iat"))
        jti = claims.get("jti")
        now = moment.timestamp()
        if (
            claims.get("type") != kind
            or not isinstance(sub, str) or len(sub) != 24
            or not isinstance(role, str)
            or isinstance(version, bool) or not isinstance(version, int)
            or not _seconds(exp) or not _seconds(iat)
            or (kind == REFRESH and not isinstance(jti, str))
            or exp <= now or exp <= iat
            or iat > now + CLOCK_SKEW_SECONDS
            or ("nbf" in claims and not (_seconds(claims["nbf"]) and claims["nbf"] <= now + CLOCK_SKEW_SECONDS))
        ):
            raise Unauthorized(BAD_TOKEN)
        return Claims(sub, role, kind, version, datetime.fromtimestamp(iat, UTC),
                      datetime.fromtimestamp(exp, UTC), jti)


def _seconds(value: Any) -> TypeGuard[int]:
    """True for a time claim as tokens carry it: whole seconds from 1970 to the end of year 9999."""
    return type(value) is int and 0 <= value <= LAST_SECOND
