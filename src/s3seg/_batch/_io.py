"""Where batch images come from and where results go: local paths and ``s3://bucket/key`` URLs, through
``pyarrow.fs`` (``S3FileSystem(endpoint_override=…)`` with s3seg's R2/S3 settings).

An image is named by its *id*: ``s3://bucket/key`` or an absolute local path. Ids are what the results and
the resume manifests record, so the same image always has the same id whatever form the source took.
Every ``pyarrow`` error is converted here into a one-line :class:`StorageError` or :class:`ImageError`.
"""

from __future__ import annotations

import glob
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3seg.errors import DependencyError, ImageError, StorageError, UsageError
from s3seg.images import IMAGE_SUFFIXES

if TYPE_CHECKING:
    import pyarrow.fs as pafs

    from s3seg.config import Settings

S3 = "s3://"
MANIFEST_SUFFIXES = (".txt", ".parquet")
_KEYS_HINT = (
    "check S3SEG_R2_ACCESS_KEY_ID and S3SEG_R2_SECRET_ACCESS_KEY (or R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY) "
    "and that they may read and write the bucket"
)


def require_pyarrow() -> None:
    try:
        import pyarrow
        import pyarrow.fs  # noqa: F401
    except ImportError as e:
        raise DependencyError("s3seg batch needs pyarrow and Ray Data", hint="pip install 's3seg[ray]'") from e


@dataclass(frozen=True)
class S3Spec:
    """How to reach R2/S3: built from Settings in the driver, sent to the workers, turned into a filesystem
    there (a small picklable value rather than a live connection)."""

    endpoint: str | None
    region: str
    access_key: str | None
    secret_key: str | None
    path_style: bool

    @classmethod
    def from_settings(cls, s: Settings) -> S3Spec:
        return cls(
            endpoint=s.r2_endpoint,
            region=s.r2_region,
            access_key=s.r2_access_key_id,
            secret_key=s.r2_secret_access_key.get_secret_value() if s.r2_secret_access_key else None,
            path_style=s.r2_path_style,
        )

    def filesystem(self) -> pafs.S3FileSystem:
        import pyarrow.fs as pafs

        kwargs: dict[str, Any] = {"region": self.region, "force_virtual_addressing": not self.path_style}
        if self.endpoint:
            endpoint = self.endpoint.strip().rstrip("/")
            scheme, _, host = endpoint.rpartition("://")
            kwargs["endpoint_override"] = host
            kwargs["scheme"] = scheme or "https"
        if self.access_key and self.secret_key:
            kwargs["access_key"], kwargs["secret_key"] = self.access_key, self.secret_key
        elif self.access_key or self.secret_key:
            raise UsageError("only one of the R2/S3 access key id and secret access key is set", hint=_KEYS_HINT)
        return pafs.S3FileSystem(**kwargs)


class Filesystems:
    """The local filesystem and, when an ``s3://`` id is used, R2/S3 (created on first use)."""

    def __init__(self, spec: S3Spec) -> None:
        import pyarrow.fs as pafs

        self.spec = spec
        self.local = pafs.LocalFileSystem()
        self._s3: pafs.S3FileSystem | None = None

    def resolve(self, ident: str) -> tuple[pafs.FileSystem, str]:
        """An id (``s3://bucket/key`` or a local path) → (filesystem, path on it)."""
        if ident.startswith(S3):
            if self._s3 is None:
                self._s3 = self.spec.filesystem()
            return self._s3, ident[len(S3) :]
        return self.local, ident

    # --- reads and writes, every error converted -----------------------------------------------------
    def read(self, ident: str) -> bytes:
        fs, path = self.resolve(ident)
        with converted("read", ident), fs.open_input_stream(path) as f:
            data: bytes = f.read()
        return data

    def read_image(self, ident: str) -> bytes:
        """Like :meth:`read`, but a missing or unreadable image is an :class:`ImageError` (a row's error)."""
        try:
            return self.read(ident)
        except StorageError as e:
            raise ImageError(f"cannot read image {ident}: {e.message}", hint=e.hint) from e

    def put(self, ident: str, data: bytes) -> None:
        """Write a whole object atomically: an S3 object appears only once complete; a local file is
        written beside its place and renamed over it."""
        fs, path = self.resolve(ident)
        with converted("write", ident):
            if fs is self.local:
                Path(path).parent.mkdir(parents=True, exist_ok=True)
                tmp = f"{Path(path).parent}/.{Path(path).name}.{secrets.token_hex(4)}.tmp"
                try:
                    with open(tmp, "wb") as f:
                        f.write(data)
                    os.replace(tmp, path)
                finally:
                    if os.path.exists(tmp):
                        os.remove(tmp)
            else:
                with fs.open_output_stream(path) as out:
                    out.write(data)

    def delete(self, ident: str) -> None:
        fs, path = self.resolve(ident)
        with converted("delete", ident):
            fs.delete_file(path)

    def exists(self, ident: str) -> bool:
        import pyarrow.fs as pafs

        fs, path = self.resolve(ident)
        with converted("check", ident):
            return bool(fs.get_file_info(path).type == pafs.FileType.File)

    def check_bucket(self, ident: str) -> None:
        """A StorageError when the bucket of an ``s3://`` id does not exist (listings just come back empty)."""
        import pyarrow.fs as pafs

        fs, path = self.resolve(ident)
        bucket = path.split("/", 1)[0]
        with converted("list", ident):
            missing = fs.get_file_info(bucket).type == pafs.FileType.NotFound
        if missing:
            raise StorageError(
                f"cannot list {ident}: bucket {bucket!r} does not exist", hint="create it or check the URL"
            )

    def list_files(self, ident: str) -> list[str]:
        """Every file under a folder or prefix (recursive), as ids, sorted; none when it does not exist."""
        import pyarrow.fs as pafs

        fs, path = self.resolve(ident)
        prefix = S3 if fs is not self.local else ""
        with converted("list", ident):
            infos = fs.get_file_info(pafs.FileSelector(path.rstrip("/"), recursive=True, allow_not_found=True))
        return sorted(prefix + i.path for i in infos if i.type == pafs.FileType.File)


@contextmanager
def converted(action: str, ident: str) -> Iterator[None]:
    """pyarrow's OSErrors → one-line StorageErrors with a hint."""
    try:
        yield
    except FileNotFoundError as e:
        raise StorageError(f"cannot {action} {ident}: not found", hint="check the path or key") from e
    except PermissionError as e:
        raise StorageError(f"cannot {action} {ident}: permission denied", hint="check the permissions") from e
    except OSError as e:
        raise _storage_error(e, action, ident) from e


def _storage_error(e: OSError, action: str, ident: str) -> StorageError:
    text = str(e)
    what = f"cannot {action} {ident}"
    if "NO_SUCH_BUCKET" in text:
        bucket = ident[len(S3) :].split("/", 1)[0]
        return StorageError(f"{what}: bucket {bucket!r} does not exist", hint="create it or check the URL")
    if any(code in text for code in ("ACCESS_DENIED", "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY", "403")):
        return StorageError(f"{what}: access denied (wrong or missing credentials)", hint=_KEYS_HINT)
    if "NETWORK_CONNECTION" in text or "curlCode" in text:
        return StorageError(
            f"{what}: cannot connect to the S3 endpoint",
            hint="check S3SEG_R2_ENDPOINT (or R2_ENDPOINT) and the network",
        )
    if ident.startswith(S3):
        detail = text.split(": ", 1)[-1].split(" (Request ID")[0]
        return StorageError(f"{what}: {detail}", hint="check the S3 URL, endpoint and credentials")
    return StorageError(f"{what}: {e.strerror or text}", hint="check the path and its permissions")


# --- sources ---------------------------------------------------------------------------------------


def is_image_name(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return not base.startswith(".") and os.path.splitext(base)[1].lower() in IMAGE_SUFFIXES


def canonical(location: str) -> str:
    """A location as given → its id form: ``s3://bucket/key`` (no trailing slash) or an absolute path."""
    location = location.strip()
    if location.startswith(S3):
        rest = location[len(S3) :].strip("/")
        if not rest:
            raise UsageError(f"{location!r} names no bucket", hint="use s3://bucket/prefix")
        return S3 + rest
    if "://" in location:
        raise UsageError(f"unsupported URL {location!r}", hint="use a local path or s3://bucket/prefix")
    return os.path.abspath(os.path.expanduser(location))


def list_source(source: str, fss: Filesystems) -> list[str]:
    """Image ids of a source, sorted and without duplicates.

    A source is a local folder or ``s3://bucket/prefix`` (every image file under it, recursively; hidden
    files skipped), a local glob pattern (``**`` recursive), one image file, or a manifest: a ``.txt``
    file (one path or ``s3://`` URL per line; ``#`` comments) or a ``.parquet`` file with a ``path``
    column. Relative manifest entries are relative to the manifest's folder.
    """
    if not source.strip():
        raise UsageError("the source is empty", hint="give a folder, a glob, s3://bucket/prefix or a manifest")
    ident = canonical(source)
    if ident.lower().endswith(MANIFEST_SUFFIXES) and (ident.startswith(S3) or os.path.isfile(ident)):
        ids = _read_manifest(ident, fss)
    elif ident.startswith(S3):
        ids = [i for i in fss.list_files(ident) if is_image_name(i)] or (
            [ident] if fss.exists(ident) and is_image_name(ident) else []
        )
        if not ids:
            fss.check_bucket(ident)
            raise ImageError(f"no image files under {ident}", hint=_suffix_hint())
    elif os.path.isdir(ident):
        ids = [i for i in fss.list_files(ident) if is_image_name(i) and "/." not in i[len(ident) :]]
        if not ids:
            raise ImageError(f"no image files in folder {source}", hint=_suffix_hint())
    elif os.path.isfile(ident):
        ids = [ident]
    else:
        matches = sorted(glob.glob(os.path.expanduser(source), recursive=True))
        if not matches:
            raise ImageError(f"no such file or folder: {source}", hint="check the path or quote the glob pattern")
        ids = [os.path.abspath(m) for m in matches if os.path.isfile(m) and is_image_name(m)]
        if not ids:
            raise ImageError(f"no image files match {source}", hint=_suffix_hint())
    return sorted(dict.fromkeys(ids))


def _suffix_hint() -> str:
    return f"supported suffixes: {' '.join(sorted(IMAGE_SUFFIXES))}"


def _read_manifest(ident: str, fss: Filesystems) -> list[str]:
    data = fss.read(ident)
    if ident.lower().endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            table = pq.read_table(pa.BufferReader(data))
        except (pa.ArrowException, OSError) as e:
            raise UsageError(f"cannot read manifest {ident}: {e}", hint="a Parquet file with a 'path' column") from e
        if "path" not in table.column_names:
            raise UsageError(
                f"manifest {ident} has no 'path' column (columns: {', '.join(table.column_names)})",
                hint="name the column of image paths or s3:// URLs 'path'",
            )
        entries = [str(p) for p in table.column("path").to_pylist() if p]
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"manifest {ident} is not UTF-8 text", hint="one path or s3:// URL per line") from e
        entries = [line.strip() for line in text.splitlines()]
        entries = [e for e in entries if e and not e.startswith("#")]
    if not entries:
        raise ImageError(f"manifest {ident} lists no images", hint="one path or s3:// URL per line")
    base = ident.rsplit("/", 1)[0]
    return [canonical(e) if e.startswith(S3) or os.path.isabs(e) else _join(base, e) for e in entries]


def _join(base: str, relative: str) -> str:
    if base.startswith(S3):
        return S3 + os.path.normpath(f"{base[len(S3) :]}/{relative}")
    return os.path.normpath(os.path.join(base, relative))
