"""Domain errors, each carrying its HTTP status and API error code.

    BatonError
    ├── InvalidRequest          400 invalid_request
    ├── Unauthorized            401 unauthorized
    ├── Forbidden               403 forbidden
    ├── NotFound                404 not_found
    ├── MethodNotAllowed        405 method_not_allowed
    ├── Conflict                409 conflict
    ├── PayloadTooLarge         413 payload_too_large
    ├── UnsupportedMediaType    415 unsupported_media_type
    ├── ValidationFailed        422 validation_error
    ├── RateLimited             429 rate_limited   (Retry-After)
    ├── Overloaded              503 overloaded     (Retry-After)
    ├── Unavailable             503 unavailable    (Retry-After)
    └── ConfigError             raised at load time; never reaches HTTP
"""

from __future__ import annotations

import sys
from typing import Callable


class BatonError(Exception):
    """Base of every error baton raises on purpose."""

    status: int = 500
    code: str = "internal"

    def __init__(self, message: str, retry_after_s: float | None = None, status: int | None = None):
        # Every argument goes to Exception.__init__: an error crosses a Serve handle pickled,
        # and unpickling calls cls(*args); a lost argument would become a 500 (ray#50211).
        super().__init__(message, retry_after_s, status)
        self.message = message
        self.retry_after_s = retry_after_s
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message

    def as_dict(self) -> dict:
        """The error's body in API.md's shape, without the request id."""
        return {"code": self.code, "message": self.message}


class InvalidRequest(BatonError):
    status, code = 400, "invalid_request"


class Unauthorized(BatonError):
    status, code = 401, "unauthorized"


class Forbidden(BatonError):
    status, code = 403, "forbidden"


class NotFound(BatonError):
    status, code = 404, "not_found"


class MethodNotAllowed(BatonError):
    status, code = 405, "method_not_allowed"


class Conflict(BatonError):
    status, code = 409, "conflict"


class PayloadTooLarge(BatonError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(BatonError):
    status, code = 415, "unsupported_media_type"


class ValidationFailed(BatonError):
    status, code = 422, "validation_error"


class RateLimited(BatonError):
    status, code = 429, "rate_limited"


class Overloaded(BatonError):
    status, code = 503, "overloaded"


class Unavailable(BatonError):
    status, code = 503, "unavailable"


ERROR_CLASSES: dict[str, type[BatonError]] = {}


def error_from_code(code: str, message: str, retry_after_s: float | None = None) -> BatonError:
    """The error class an API error code names (for errors that arrive as JSON)."""
    return ERROR_CLASSES.get(code, BatonError)(message, retry_after_s)


class ConfigError(BatonError):
    """An invalid config file or recipe; the message names the field path and value."""

    status, code = 500, "internal"


ERROR_CLASSES.update({cls.code: cls for cls in BatonError.__subclasses__() if cls is not ConfigError})


def exit_code(action: Callable[[], object]) -> int:
    """Run an entry point's work: 0 on success; a BatonError prints 'error: ...' and gives 2."""
    try:
        action()
    except BatonError as error:
        print(f"error: {error.message}", file=sys.stderr)
        return 2
    return 0
