"""Domain errors.

Raised anywhere in the domain code; turned into the
``{"success": false, "error": ..., "code": ...}`` envelope in one place
(:mod:`worknet.rpc.dispatch`).  Messages are human sentences meant for the
caller: never a stack trace, a type name, a database message or a secret.

``ConfigError`` is the one error that is not a call's: a setting the daemon
cannot start with (it stops with that one line).  It lives here, beside the
others, so that the settings (:mod:`worknet.config`) and the connection
string's reader (:mod:`worknet.store.connect`) both import it from a module
that imports neither.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A setting has a value the daemon cannot run with."""


class DomainError(Exception):
    code = "INTERNAL"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def envelope(self) -> dict:
        result = {"success": False, "error": self.message, "code": self.code}
        if self.field:
            result["field"] = self.field
        return result


class ValidationError(DomainError):
    code = "VALIDATION_ERROR"

    def __init__(self, field: str | None, message: str) -> None:
        super().__init__(message, field)


class NotFound(DomainError):
    code = "NOT_FOUND"


class Conflict(DomainError):
    code = "CONFLICT"


class InvalidState(DomainError):
    code = "INVALID_STATE"


class Unauthorized(DomainError):
    code = "UNAUTHORIZED"


class Forbidden(DomainError):
    code = "FORBIDDEN"


class RateLimited(DomainError):
    code = "RATE_LIMITED"


class Unavailable(DomainError):
    code = "UNAVAILABLE"
