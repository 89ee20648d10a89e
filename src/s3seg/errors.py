"""One error tree for everything s3seg raises on purpose.

Every error carries a one-line ``message`` and an optional ``hint`` that says what to do next.
Third-party exceptions are converted at the edge where they happen (``raise ... from e``) so a user
sees one line, not a traceback; ``S3SEG_DEBUG=1`` shows the chained cause.
"""

from __future__ import annotations


class S3SegError(Exception):
    """Base class: a failure the user can act on.

    ``exit_code`` is what the CLI exits with when this error ends a command.
    """

    exit_code: int = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class UsageError(S3SegError):
    """The call itself is wrong: bad option, bad value, conflicting arguments."""

    exit_code = 2


class ImageError(S3SegError):
    """An input image is missing, unreadable, corrupt, too large or not an image."""

    exit_code = 3


class ImageTooLargeError(ImageError):
    """An image has more pixels than the configured limit (decompression-bomb guard)."""


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


class StorageError(S3SegError):
    """Object storage (local folder, R2 or S3) refused or failed an operation."""

    exit_code = 9


class StoreError(S3SegError):
    """The results store (SQLite or Supabase) refused or failed an operation."""

    exit_code = 10


class TaskNotFound(StoreError):
    """No task with that id (or not visible to this user)."""


class AuthError(S3SegError):
    """Not signed in, a token that is invalid or expired, or a key that is wrong."""

    exit_code = 11


class CreditsError(S3SegError):
    """The user has too few credits for the operation."""

    exit_code = 12


class AccountNotFound(StoreError):
    """The user has no profile (``users_profile`` row), so no credits or tier."""


class ServerError(S3SegError):
    """A remote s3seg server refused or failed a request (auth, limits, overload, unreachable)."""

    exit_code = 8

    def __init__(
        self, message: str, hint: str | None = None, *, status: int | None = None, code: str | None = None
    ) -> None:
        super().__init__(message, hint)
        self.status = status
        self.code = code


__all__ = [
    "AccountNotFound",
    "AuthError",
    "CreditsError",
    "DependencyError",
    "DeviceError",
    "ImageError",
    "ImageTooLargeError",
    "ModelError",
    "ResultFormatError",
    "S3SegError",
    "ServerError",
    "StorageError",
    "StoreError",
    "TaskNotFound",
    "UsageError",
]
