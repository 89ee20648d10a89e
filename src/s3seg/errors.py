"""One error tree for everything s3seg raises on purpose.

Every error carries a one-line ``message`` and an optional ``hint`` that says what to do next, and three
numbers that travel with it: the CLI's ``exit_code``, the server's ``http_status`` and a stable ``code``
(the ``error.code`` of the server's envelope). The server answers an error with its status and code;
clients turn an answer back into an error with :func:`error_from_response`, so both directions read
the same table. Third-party exceptions are converted at the edge where they happen (``raise ... from e``)
so a user sees one line, not a traceback; ``S3SEG_DEBUG=1`` shows the chained cause.

* S3SegError                      exit 1   500 INTERNAL_ERROR
  * UsageError                    exit 2   422 INVALID_REQUEST
    * PayloadTooLarge                      413 PAYLOAD_TOO_LARGE
    * InvalidText                          422 INVALID_TEXT (lone surrogates, control characters, bad UTF-8)
    * DuplicateField                       422 DUPLICATE_FIELD
    * URLNotAllowed                        400 URL_NOT_ALLOWED
  * ImageError                    exit 3   415 UNSUPPORTED_IMAGE
    * ImageTooLargeError                   413 IMAGE_TOO_LARGE
    * FileTooLarge                         413 FILE_TOO_LARGE
    * URLFetchFailed                       400 URL_FETCH_FAILED
  * ModelError                    exit 4
  * DependencyError               exit 5
  * ResultFormatError             exit 6
  * DeviceError                   exit 7   503 OUT_OF_MEMORY
  * ServerError                   exit 8   502 SERVER_ERROR (or the status and code the server answered)
    * Busy                                 503 BUSY
    * RateLimited                          429 RATE_LIMITED
  * StorageError                  exit 9   503 STORAGE_UNAVAILABLE
  * StoreError                    exit 10  503 STORE_UNAVAILABLE
    * NotFound                             404 NOT_FOUND
      * TaskNotFound
      * ProjectNotFound
      * UploadNotFound
    * AccountNotFound                      403 NO_PROFILE
  * AuthError                     exit 11  401 UNAUTHORIZED
    * Unauthorized                         (a missing or wrong API key)
  * CreditsError                  exit 12  402 INSUFFICIENT_CREDITS
"""

from __future__ import annotations


class S3SegError(Exception):
    """Base class: a failure the user can act on.

    ``exit_code`` is what the CLI exits with when this error ends a command; ``http_status`` and ``code``
    are what the server answers (an error built from a server's answer keeps the answer's). An answer
    with status 429 or 503 says ``Retry-After: retry_after_s``.
    """

    exit_code: int = 1
    http_status: int = 500
    code: str = "INTERNAL_ERROR"
    retry_after_s: int | None = None  # the Retry-After of a 429 or 503 answer (1 when unset)

    def __init__(
        self, message: str, hint: str | None = None, *, status: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        if status is not None:
            self.http_status = status
        if code is not None:
            self.code = code

    @property
    def status(self) -> int:
        """The HTTP status (``http_status``)."""
        return self.http_status

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class UsageError(S3SegError):
    """The call itself is wrong: bad option, bad value, conflicting arguments."""

    exit_code = 2
    http_status = 422
    code = "INVALID_REQUEST"


class PayloadTooLarge(UsageError):
    """A request body over the server's limit."""

    http_status = 413
    code = "PAYLOAD_TOO_LARGE"


class InvalidText(UsageError):
    """Text that is not proper Unicode (a lone surrogate, bytes that are not UTF-8) or holds control
    characters (NUL included)."""

    code = "INVALID_TEXT"


class DuplicateField(UsageError):
    """A request field that may appear once was given several times."""

    code = "DUPLICATE_FIELD"


class URLNotAllowed(UsageError):
    """An image URL whose scheme or address is not allowed."""

    http_status = 400
    code = "URL_NOT_ALLOWED"


class ImageError(S3SegError):
    """An input image is missing, unreadable, corrupt, too large or not an image."""

    exit_code = 3
    http_status = 415
    code = "UNSUPPORTED_IMAGE"


class ImageTooLargeError(ImageError):
    """An image has more pixels than the configured limit (decompression-bomb guard)."""

    http_status = 413
    code = "IMAGE_TOO_LARGE"


class FileTooLarge(ImageError):
    """An uploaded file over the upload limit."""

    http_status = 413
    code = "FILE_TOO_LARGE"


class URLFetchFailed(ImageError):
    """An image URL could not be fetched (error status, timeout, too large, unreachable)."""

    http_status = 400
    code = "URL_FETCH_FAILED"


class ModelError(S3SegError):
    """The model cannot be found, downloaded, read or converted."""

    exit_code = 4


class DependencyError(S3SegError):
    """An optional dependency (an extra) is not installed."""

    exit_code = 5


class ResultFormatError(S3SegError):
    """A serialised result (COCO JSON, RLE) is malformed."""

    exit_code = 6


class DeviceError(S3SegError):
    """The requested device is not available, or ran out of memory."""

    exit_code = 7
    http_status = 503
    code = "OUT_OF_MEMORY"


class ServerError(S3SegError):
    """A remote s3seg server refused or failed a request (auth, limits, overload, unreachable)."""

    exit_code = 8
    http_status = 502
    code = "SERVER_ERROR"

    def __init__(
        self, message: str, hint: str | None = None, *, status: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, hint, status=status, code=code)
        if status == 503 and self.retry_after_s is None:  # an overloaded upstream: give it a few seconds
            self.retry_after_s = 5


class Busy(ServerError):
    """The server's queue is full."""

    http_status = 503
    code = "BUSY"


class RateLimited(ServerError):
    """Too many requests from one user for their tier."""

    http_status = 429
    code = "RATE_LIMITED"

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        retry_after_s: int = 1,
        status: int | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message, hint, status=status, code=code)
        self.retry_after_s = retry_after_s


class StorageError(S3SegError):
    """Object storage (local folder, R2 or S3) refused or failed an operation."""

    exit_code = 9
    http_status = 503
    code = "STORAGE_UNAVAILABLE"


class StoreError(S3SegError):
    """The results store (SQLite, PostgreSQL or Supabase) refused or failed an operation."""

    exit_code = 10
    http_status = 503
    code = "STORE_UNAVAILABLE"


class NotFound(StoreError):
    """No such task, project or upload (or not visible to this user)."""

    http_status = 404
    code = "NOT_FOUND"


class TaskNotFound(NotFound):
    """No task with that id (or not visible to this user)."""


class ProjectNotFound(NotFound):
    """No project with that id (or not one of this user's)."""


class UploadNotFound(NotFound):
    """No uploaded image with that id for this user."""


class AccountNotFound(StoreError):
    """The user has no profile (``users_profile`` row), so no credits or tier."""

    http_status = 403
    code = "NO_PROFILE"


class AuthError(S3SegError):
    """Not signed in, a token that is invalid or expired, or a key that is wrong.

    ``auth_scheme`` is what the server's ``WWW-Authenticate`` header names."""

    exit_code = 11
    http_status = 401
    code = "UNAUTHORIZED"
    auth_scheme = "Bearer"


class Unauthorized(AuthError):
    """A missing or wrong API key (``X-API-Key``)."""

    auth_scheme = "X-API-Key"


class CreditsError(S3SegError):
    """The user has too few credits for the operation."""

    exit_code = 12
    http_status = 402
    code = "INSUFFICIENT_CREDITS"


# The errors a client rebuilds from an answer's code (the most general class of each code).
_BY_CODE: dict[str, type[S3SegError]] = {
    kind.code: kind
    for kind in (
        UsageError,
        PayloadTooLarge,
        InvalidText,
        DuplicateField,
        URLNotAllowed,
        ImageError,
        ImageTooLargeError,
        FileTooLarge,
        URLFetchFailed,
        DeviceError,
        Busy,
        RateLimited,
        NotFound,
        AccountNotFound,
        AuthError,
        CreditsError,
    )
}
_BY_CODE["VALIDATION_ERROR"] = UsageError  # FastAPI's own request validation
# Answers without a known code (a proxy, an older server): by status.
_BY_STATUS: dict[int, type[S3SegError]] = {
    400: UsageError,
    401: AuthError,
    402: CreditsError,
    403: AuthError,
    404: NotFound,
    413: PayloadTooLarge,
    415: ImageError,
    422: UsageError,
    429: RateLimited,
}


def error_from_response(status: int, code: str, message: str, hint: str | None, *, where: str) -> S3SegError:
    """The error a client raises for an error answer of an s3seg server (``where`` names the server).

    A refusal of the request (4xx) becomes the error of its code (``AuthError`` for 401, ``UsageError``
    for 422, ...); the server's own failures (5xx) stay a :class:`ServerError` with that status and code,
    since the client's store or device did not fail. The status and code are kept either way."""
    kind = _BY_CODE.get(code) or _BY_STATUS.get(status)
    if kind is None or (status >= 500 and not issubclass(kind, ServerError)):
        kind = ServerError
    if status >= 500:
        text = f"{where} failed ({status} {code}): {message}"
    else:
        text = f"{where} refused the request: {message}"
    return kind(text, hint, status=status, code=code)


__all__ = [
    "AccountNotFound",
    "AuthError",
    "Busy",
    "CreditsError",
    "DependencyError",
    "DeviceError",
    "DuplicateField",
    "FileTooLarge",
    "ImageError",
    "ImageTooLargeError",
    "InvalidText",
    "ModelError",
    "NotFound",
    "PayloadTooLarge",
    "ProjectNotFound",
    "RateLimited",
    "ResultFormatError",
    "S3SegError",
    "ServerError",
    "StorageError",
    "StoreError",
    "TaskNotFound",
    "URLFetchFailed",
    "URLNotAllowed",
    "Unauthorized",
    "UploadNotFound",
    "UsageError",
]
