"""Where source images, mask PNGs and overlays are kept: a local folder (the default, no account
needed) or Cloudflare R2 / any S3-compatible service (the ``cloud`` extra, boto3).

>>> from s3seg.storage import storage_from_settings
>>> store = storage_from_settings(settings)                     # doctest: +SKIP
>>> key = store.put("masks/photo/0.png", png_bytes)             # doctest: +SKIP
>>> store.url(key)                                              # doctest: +SKIP

Keys are relative, ``/``-separated and validated the same way on every backend (:func:`safe_key`).
boto3 is imported only when an R2/S3 storage is built.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from s3seg.errors import StorageError
from s3seg.storage._keys import ObjectNotFoundError, guess_content_type, safe_key
from s3seg.storage._local import LocalStorage
from s3seg.storage._s3 import S3Storage  # imports boto3 only when an S3Storage is built

if TYPE_CHECKING:
    from s3seg.config import Settings


@runtime_checkable
class Storage(Protocol):
    """An object store. Keys are relative to the storage's own prefix (or folder)."""

    name: str
    """``"local"``, ``"r2"`` or ``"s3"``, for display."""

    def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        """Store ``data`` under ``key`` (content type guessed from the key when not given). Returns the
        validated key, which ``get``/``url``/``delete`` accept as is."""
        ...

    def put_file(
        self, key: str, path: Path, content_type: str | None = None, progress: Callable[[int], None] | None = None
    ) -> str:
        """Stream a file under ``key`` (multipart on S3 above the threshold); ``progress`` receives the
        byte count of each chunk sent (on S3 from boto3's worker threads). Returns the validated key."""
        ...

    def get(self, key: str) -> bytes:
        """The object's bytes; :class:`ObjectNotFoundError` if there is none."""
        ...

    def download(self, key: str, path: Path) -> Path:
        """Write the object to ``path`` (parents created). Returns ``path``."""
        ...

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys starting with ``prefix`` (plain string prefix, as on S3)."""
        ...

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A presigned GET URL (S3/R2) or a ``file://`` URI (local)."""
        ...

    def close(self) -> None:
        """Release connections (S3/R2); a no-op for a local folder."""
        ...


def storage_from_settings(settings: Settings) -> Storage:
    """:class:`S3Storage` when ``r2_bucket`` and both keys are set (``r2_endpoint`` may be left out for
    AWS S3), else :class:`LocalStorage` in ``data_dir/storage``.

    A bucket without keys (or keys without a bucket) is refused rather than silently stored locally:
    the user meant the cloud.
    """
    key_id = settings.r2_access_key_id or None
    secret = settings.r2_secret_access_key.get_secret_value() if settings.r2_secret_access_key else None
    if settings.r2_bucket and key_id and secret:
        return S3Storage(
            settings.r2_bucket,
            endpoint_url=settings.r2_endpoint,
            access_key_id=key_id,
            secret_access_key=secret,
            region=settings.r2_region,
            path_style=settings.r2_path_style,
            prefix=settings.r2_prefix,
        )
    if settings.r2_bucket or key_id or secret:
        missing = [
            name
            for name, value in (
                ("R2_BUCKET", settings.r2_bucket),
                ("R2_ACCESS_KEY_ID", key_id),
                ("R2_SECRET_ACCESS_KEY", secret),
            )
            if not value
        ]
        raise StorageError(
            f"R2/S3 storage is half configured: {', '.join(missing)} not set",
            hint="set all of R2_BUCKET, R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY (and R2_ENDPOINT "
            "for R2), or none of them for local storage",
        )
    return LocalStorage(Path(settings.data_dir) / "storage")


__all__ = [
    "LocalStorage",
    "ObjectNotFoundError",
    "S3Storage",
    "Storage",
    "StorageError",
    "guess_content_type",
    "safe_key",
    "storage_from_settings",
]
