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
    * VideoError                           415 UNSUPPORTED_VIDEO
      * VideoTooLarge                      413 VIDEO_TOO_LARGE (upload size, duration, frames, frame size)
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
  * Cancelled                     exit 13  499 CANCELLED (the client went away; nobody reads the answer)
"""

from __future__ import annotations

# The errors a client rebuilds from an answer's code: filled as the classes below are defined.
_BY_CODE: dict[str, type[S3SegError]] = {}


class S3SegError(Exception):
    """Base class: a failure the user can act on.

    ``hint`` is phrased for Python callers (``model=...``); ``cli_hint``, when set, is the same advice
    for the command line (``--model ...``), which the CLI shows instead.

    ``exit_code`` is what the CLI exits with when this error ends a command; ``http_status`` and ``code``
    are what the server answers (an error built from a server's answer keeps the answer's). An answer
    with status 429 or 503 says ``Retry-After: retry_after_s``.
    """

    exit_code: int = 1
    http_status: int = 500
    code: str = "INTERNAL_ERROR"
    retry_after_s: int | None = None  # the Retry-After of a 429 or 503 answer (1 when unset)

    def __init_subclass__(cls, *, exit_code: int = 0, status: int = 0, code: str = "") -> None:
        """``class X(Parent, exit_code=..., status=..., code=...)``: what differs from the parent."""
        super().__init_subclass__()
        cls.exit_code = exit_code or cls.exit_code
        cls.http_status = status or cls.http_status
        cls.code = code or cls.code
        _BY_CODE.setdefault(cls.code, cls)  # parents come first: a code names its most general class

    def __init__(
        self,
        message: str,
        hint: str | None = None,
        *,
        status: int | None = None,
        code: str | None = None,
        cli_hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        # The hint phrased for the command line (``--model``) when ``hint`` is phrased for Python
        # (``model=``); the CLI shows this one.
        self.cli_hint = cli_hint
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


_BY_CODE[S3SegError.code] = S3SegError


class UsageError(S3SegError, exit_code=2, status=422, code="INVALID_REQUEST"):
    """The call itself is wrong: bad option, bad value, conflicting arguments."""


class PayloadTooLarge(UsageError, status=413, code="PAYLOAD_TOO_LARGE"):
    """A request body over the server's limit."""


class InvalidText(UsageError, code="INVALID_TEXT"):
    """Text that is not proper Unicode (a lone surrogate, bytes that are not UTF-8) or holds control
    characters (NUL included)."""


class BadRange(UsageError, code="BAD_RANGE"):
    """A video selection (start/end) that is not a time or frame number, is empty or reversed, or reaches past
    the end of the clip."""


class DuplicateField(UsageError, code="DUPLICATE_FIELD"):
    """A request field that may appear once was given several times."""


class URLNotAllowed(UsageError, status=400, code="URL_NOT_ALLOWED"):
    """An image URL whose scheme or address is not allowed."""


class ImageError(S3SegError, exit_code=3, status=415, code="UNSUPPORTED_IMAGE"):
    """An input image is missing, unreadable, corrupt, too large or not an image."""


class ImageTooLargeError(ImageError, status=413, code="IMAGE_TOO_LARGE"):
    """An image has more pixels than the configured limit (decompression-bomb guard)."""


class FileTooLarge(ImageError, status=413, code="FILE_TOO_LARGE"):
    """An uploaded file over the upload limit."""


class URLFetchFailed(ImageError, status=400, code="URL_FETCH_FAILED"):
    """An image URL could not be fetched (error status, timeout, too large, unreachable)."""


class VideoError(ImageError, code="UNSUPPORTED_VIDEO"):
    """A video that cannot be used: not a video, corrupt, no video stream, no frames."""


class VideoTooLarge(VideoError, status=413, code="VIDEO_TOO_LARGE"):
    """A video over a limit: upload size, duration, processed frames or pixels per frame."""


class ModelError(S3SegError, exit_code=4):
    """The model cannot be found, downloaded, read or converted."""


class DependencyError(S3SegError, exit_code=5):
    """An optional dependency (an extra) is not installed."""


class ResultFormatError(S3SegError, exit_code=6):
    """A serialised result (COCO JSON, RLE) is malformed."""


class DeviceError(S3SegError, exit_code=7, status=503, code="OUT_OF_MEMORY"):
    """The requested device is not available, or ran out of memory."""


class ServerError(S3SegError, exit_code=8, status=502, code="SERVER_ERROR"):
    """A remote s3seg server refused or failed a request (auth, limits, overload, unreachable)."""

    retry_after_s = 5  # answered 503: an overloaded upstream, give it a few seconds


class Busy(ServerError, status=503, code="BUSY"):
    """The server's queue is full."""

    retry_after_s = 1


class RateLimited(ServerError, status=429, code="RATE_LIMITED"):
    """Too many requests from one user for their tier."""

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


class StorageError(S3SegError, exit_code=9, status=503, code="STORAGE_UNAVAILABLE"):
    """Object storage (local folder, R2 or S3) refused or failed an operation."""


class StoreError(S3SegError, exit_code=10, status=503, code="STORE_UNAVAILABLE"):
    """The results store (SQLite, PostgreSQL or Supabase) refused or failed an operation."""


class NotFound(StoreError, status=404, code="NOT_FOUND"):
    """No such task, project or upload (or not visible to this user)."""


class TaskNotFound(NotFound):
    """No task with that id (or not visible to this user)."""


class ProjectNotFound(NotFound):
    """No project with that id (or not one of this user's)."""


class UploadNotFound(NotFound):
    """No uploaded image with that id for this user."""


class AccountNotFound(StoreError, status=403, code="NO_PROFILE"):
    """The user has no profile (``users_profile`` row), so no credits or tier."""


class AuthError(S3SegError, exit_code=11, status=401, code="UNAUTHORIZED"):
    """Not signed in, a token that is invalid or expired, or a key that is wrong.

    ``auth_scheme`` is what the server's ``WWW-Authenticate`` header names."""

    auth_scheme = "Bearer"


class Unauthorized(AuthError):
    """A missing or wrong API key (``X-API-Key``)."""

    auth_scheme = "X-API-Key"


class CreditsError(S3SegError, exit_code=12, status=402, code="INSUFFICIENT_CREDITS"):
    """The user has too few credits for the operation."""


class Cancelled(S3SegError, exit_code=13, status=499, code="CANCELLED"):
    """Work stopped because whoever asked for it went away (a server's client disconnected)."""


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
    "VideoError",
]
