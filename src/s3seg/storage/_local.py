"""Object storage in a local folder: the default, needs no account.

Each key is a file under the root. Writes go to a temporary file in the destination folder and are
renamed into place (``os.replace``), so a reader never sees half an object and a crash leaves no partial
file under the key's name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import suppress
from pathlib import Path
from typing import BinaryIO

from s3seg.errors import StorageError
from s3seg.storage._keys import Closing, ObjectNotFoundError, safe_key, safe_list_prefix

# Temporary files start with this; list() skips them and keys may not use the name.
TMP_PREFIX = ".s3seg-tmp-"
CHUNK_BYTES = 1024 * 1024


def _missing(key: str, root: Path) -> ObjectNotFoundError:
    return ObjectNotFoundError(
        f"no object {key!r} in local storage {root}", hint="check the key with `list()`; keys are case-sensitive"
    )


def _os_error(action: str, target: object, e: OSError) -> StorageError:
    return StorageError(
        f"cannot {action} {target}: {e.strerror or e}",
        hint="check that the folder exists, is writable and the disk is not full",
    )


def _copy_chunks(src: BinaryIO, dst: BinaryIO, progress: Callable[[int], None] | None) -> None:
    """Copy in fixed-size chunks, reporting each chunk's size (the same increments boto3 reports)."""
    while chunk := src.read(CHUNK_BYTES):
        dst.write(chunk)
        if progress is not None:
            progress(len(chunk))


def write_atomic(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Create ``path``'s parents, let ``write`` fill a temporary file next to it, then rename it into
    place. On any failure (including KeyboardInterrupt) the temporary file is removed and an existing
    ``path`` is left as it was."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            # Without fsync a crash right after the rename can leave an empty file under the new name.
            os.fsync(f.fileno())
        # mkstemp creates 0600; objects are ordinary files, readable like any other the user writes.
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


class LocalStorage(Closing):
    """Objects as files under ``root`` (created on the first write)."""

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root).expanduser()

    def __repr__(self) -> str:
        return f"LocalStorage({str(self.root)!r})"

    # --- paths -----------------------------------------------------------------------------------

    def _root(self) -> Path:
        return self.root.resolve()

    def _path(self, key: str) -> tuple[str, Path]:
        """The validated key and its file, refusing anything that resolves outside the root (a
        symlinked file or folder pointing elsewhere) so a key can never read or write outside it."""
        key = safe_key(key)
        if key.rsplit("/", 1)[-1].startswith(TMP_PREFIX):
            raise StorageError(f"invalid storage key {key!r}: names starting with {TMP_PREFIX!r} are reserved")
        root = self._root()
        path = root / key
        if not path.resolve().is_relative_to(root):
            raise StorageError(
                f"storage key {key!r} resolves outside the local storage folder {root}",
                hint="a symlink under the storage folder points elsewhere; remove it",
            )
        return key, path

    # --- Storage protocol ------------------------------------------------------------------------

    def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        """Write ``data`` under ``key`` (``content_type`` is not kept by a folder). Returns the key."""
        key, path = self._path(key)
        try:
            write_atomic(path, lambda f: f.write(data))
        except OSError as e:
            raise _os_error("write", path, e) from e
        return key

    def put_file(
        self, key: str, path: Path, content_type: str | None = None, progress: Callable[[int], None] | None = None
    ) -> str:
        """Copy the file at ``path`` under ``key`` in chunks, calling ``progress(n_bytes)`` per chunk."""
        key, dest = self._path(key)
        try:
            src = open(path, "rb")  # noqa: SIM115 - closed below; open errors are the caller's file
        except OSError as e:
            raise _os_error("read", path, e) from e
        try:
            with src:
                write_atomic(dest, lambda f: _copy_chunks(src, f, progress))
        except OSError as e:
            raise _os_error("write", dest, e) from e
        return key

    def get(self, key: str) -> bytes:
        """The object's bytes; :class:`StorageError` if there is none."""
        key, path = self._path(key)
        try:
            return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise _missing(key, self.root) from e
        except OSError as e:
            raise _os_error("read", path, e) from e

    def download(self, key: str, path: Path) -> Path:
        """Copy the object to ``path`` (parents created, written atomically). Returns ``path``."""
        key, src_path = self._path(key)
        dest = Path(path)
        try:
            src = open(src_path, "rb")  # noqa: SIM115 - closed below
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as e:
            raise _missing(key, self.root) from e
        except OSError as e:
            raise _os_error("read", src_path, e) from e
        try:
            with src:
                write_atomic(dest, lambda f: shutil.copyfileobj(src, f, CHUNK_BYTES))
        except OSError as e:
            raise _os_error("write", dest, e) from e
        return dest

    def delete(self, key: str) -> None:
        """Remove the object; a missing key is not an error."""
        key, path = self._path(key)
        if path.is_dir():  # a "folder" of other keys is not an object
            return
        try:
            path.unlink(missing_ok=True)
        except NotADirectoryError:  # a parent is a file, so the key cannot exist
            return
        except OSError as e:
            raise _os_error("delete", path, e) from e

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        _, path = self._path(key)
        return path.is_file()

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys that start with ``prefix`` (a plain string prefix, as on S3)."""
        prefix = safe_list_prefix(prefix)
        root = self._root()
        # Walk only the deepest folder the prefix names; a prefix through a symlink lists nothing.
        start = root / prefix.rsplit("/", 1)[0] if "/" in prefix else root
        if not start.resolve().is_relative_to(root):
            return []
        return sorted(key for key in self._walk(root, start) if key.startswith(prefix))

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A ``file://`` URI of the object's absolute path (``expires_s`` does not apply to files)."""
        _, path = self._path(key)
        return path.as_uri()

    # --- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _walk(root: Path, start: Path) -> Iterator[str]:
        """Keys of the regular files under ``start``: symlinks (which could point anywhere) and
        in-progress temporary files are skipped."""
        for dirpath, _dirnames, filenames in os.walk(start, followlinks=False):
            rel = Path(dirpath).relative_to(root).as_posix()
            for name in filenames:
                if name.startswith(TMP_PREFIX) or os.path.islink(os.path.join(dirpath, name)):
                    continue
                key = name if rel == "." else f"{rel}/{name}"
                # Some filesystems (macOS) hand names back decomposed; keys are NFC.
                yield unicodedata.normalize("NFC", key)
