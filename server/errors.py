"""Domain errors raised by services and dependencies, turned into JSON (or pages) in one place."""

from __future__ import annotations

from datetime import datetime
from typing import Any


class DomainError(Exception):
    """An error whose message is safe to show to the user who caused it."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.details = details


class BadRequest(DomainError):
    status_code = 400


class NotAuthenticated(DomainError):
    status_code = 401
    code = "not_authenticated"


class Forbidden(DomainError):
    status_code = 403
    code = "forbidden"


class NotFound(DomainError):
    status_code = 404
    code = "not_found"


class Conflict(DomainError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(DomainError):
    status_code = 413
    code = "too_large"


class Unprocessable(DomainError):
    status_code = 422
    code = "invalid"


class TooManyRequests(DomainError):
    """Fair use: the caller must wait. ``retry_at`` is the instant the next request is allowed, when known."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, message: str, *, code: str | None = None, retry_at: datetime | None = None) -> None:
        super().__init__(message, code=code)
        self.retry_at = retry_at
