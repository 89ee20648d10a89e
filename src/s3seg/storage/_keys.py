"""Object keys: one validation shared by every backend, so a key that works locally works on R2 too.

Keys are ``/``-separated, relative, and may not step out of the prefix they are joined to. They are
refused rather than "cleaned" because silently rewriting ``a//b`` or ``../x`` would make two different
inputs address the same object (or an object outside the storage).
"""

from __future__ import annotations

import unicodedata
from typing import TypeVar

from s3seg.errors import StorageError

_C = TypeVar("_C", bound="Closing")

# S3 (and R2) limit a key to 1024 bytes of UTF-8; refusing longer keys here gives the same answer on
# every backend instead of a server error on one of them.
MAX_KEY_BYTES = 1024


class ObjectNotFoundError(StorageError):
    """No object is stored under the key (a missing bucket is a plain :class:`StorageError`)."""


def _refuse(key: str, why: str) -> StorageError:
    return StorageError(
        f"invalid storage key {key!r}: {why}",
        hint="use a relative key made of '/'-separated names, e.g. 'masks/photo/0.png'",
    )


def _check_chars(key: str) -> None:
    """Refuse characters that backends treat differently (``\\`` is a separator on Windows, control
    characters break HTTP headers, XML listings and terminals)."""
    if "\\" in key:
        raise _refuse(key, "backslashes are not allowed")
    if any(unicodedata.category(ch) == "Cc" for ch in key):
        raise _refuse(key, "control characters (NUL, newline, …) are not allowed")


def _check_segments(key: str, *, allow_trailing_slash: bool) -> None:
    """Refuse absolute keys and ``.``/``..``/empty segments, which could escape a prefix or a folder."""
    if key.startswith("/"):
        raise _refuse(key, "absolute keys are not allowed")
    body = key[:-1] if allow_trailing_slash and key.endswith("/") else key
    for segment in body.split("/"):
        if segment == "":
            raise _refuse(key, "empty segments ('//' or a trailing '/') are not allowed")
        if segment in {".", ".."}:
            raise _refuse(key, f"'{segment}' segments are not allowed")


def _normalise(key: str) -> str:
    # NFC, so that "é" typed on macOS (decomposed) and on Linux (composed) is the same object.
    return unicodedata.normalize("NFC", key)


def safe_key(key: str) -> str:
    """Return ``key`` normalised (Unicode NFC), or raise :class:`StorageError` if it is empty, absolute,
    contains ``.``/``..``/empty segments, backslashes or control characters, or is too long."""
    if not isinstance(key, str) or key == "":
        raise _refuse(str(key), "the key is empty")
    key = _normalise(key)
    _check_chars(key)
    _check_segments(key, allow_trailing_slash=False)
    if len(key.encode("utf-8")) > MAX_KEY_BYTES:
        raise _refuse(key, f"longer than {MAX_KEY_BYTES} bytes")
    return key


def safe_list_prefix(prefix: str) -> str:
    """Validate a ``list()`` prefix: empty, or a key-like string that may end with ``/``.

    Listing uses plain string-prefix semantics (as S3 does): ``"a/b"`` matches ``a/b/c`` and ``a/bc``.
    """
    if prefix == "":
        return ""
    prefix = _normalise(prefix)
    _check_chars(prefix)
    _check_segments(prefix, allow_trailing_slash=True)
    return prefix


def safe_prefix(prefix: str) -> str:
    """Normalise a configured storage prefix: ``""``, ``"prod"``, ``"prod/"`` and ``"/prod/"`` all mean
    the folder ``prod``. Returns ``""`` or the prefix without surrounding slashes."""
    stripped = prefix.strip("/")
    return "" if stripped == "" else safe_key(stripped)


def join_prefix(prefix: str, key: str) -> str:
    """``prefix/key`` (``prefix`` already normalised by :func:`safe_prefix`)."""
    return f"{prefix}/{key}" if prefix else key


# A fixed table rather than the mimetypes module: mimetypes reads /etc/mime.types, so the answer would
# depend on the machine the upload ran on.
_CONTENT_TYPES = {
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".png": "image/png",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".svg": "image/svg+xml",
    ".json": "application/json",
    ".jsonl": "application/x-ndjson",
    ".txt": "text/plain; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".pdf": "application/pdf",
    ".zip": "application/zip",
    ".gz": "application/gzip",
    ".mp4": "video/mp4",
    ".mov": "video/quicktime",
    ".webm": "video/webm",
    ".mkv": "video/x-matroska",
    ".avi": "video/x-msvideo",
    ".ogv": "video/ogg",
    ".ts": "video/mp2t",
    ".mpg": "video/mpeg",
}


def guess_content_type(key: str) -> str:
    """The Content-Type for ``key`` from its extension (case-insensitive); ``application/octet-stream``
    when unknown."""
    name = key.rsplit("/", 1)[-1]
    dot = name.rfind(".")
    if dot <= 0:  # no extension, or a dot-file such as ".env"
        return "application/octet-stream"
    return _CONTENT_TYPES.get(name[dot:].lower(), "application/octet-stream")


class Closing:
    """``with storage: ...`` closes it; every backend has ``close`` (a no-op where nothing is held)."""

    def close(self) -> None:
        """Nothing to release by default."""

    def __enter__(self: _C) -> _C:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
