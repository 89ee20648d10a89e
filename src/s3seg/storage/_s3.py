"""Object storage in Cloudflare R2 or any S3-compatible service, through boto3 (the ``cloud`` extra).

boto3 is imported when an :class:`S3Storage` is built, never at ``import s3seg`` time. Every botocore,
boto3 and s3transfer exception is converted once, in :meth:`S3Storage._errors`, into a one-line
:class:`StorageError` with a hint; nothing else in this module catches them.
"""

from __future__ import annotations

import importlib
import io
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

from s3seg.errors import DependencyError, StorageError, UsageError
from s3seg.storage._keys import (
    Closing,
    ObjectNotFoundError,
    guess_content_type,
    join_prefix,
    safe_key,
    safe_list_prefix,
    safe_prefix,
)

MiB = 1024 * 1024
# S3 refuses multipart parts under 5 MiB (except the last one).
MIN_PART_BYTES = 5 * MiB
# S3 presigned URLs (SigV4) are valid for at most 7 days.
MAX_URL_SECONDS = 7 * 24 * 3600

_CREDENTIAL_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "InvalidSecurity",
    "Unauthorized",
    "403",
    "401",
}
_MISSING_KEY_CODES = {"NoSuchKey", "404", "NotFound"}
_UNREACHABLE_ERRORS = {
    "EndpointConnectionError",
    "ConnectTimeoutError",
    "ConnectionClosedError",
    "ReadTimeoutError",
    "ProxyConnectionError",
    "SSLError",
    "ConnectionError",
    "HTTPClientError",
}
_NO_CREDENTIALS_ERRORS = {"NoCredentialsError", "PartialCredentialsError"}


def _import(name: str) -> ModuleType:
    """Import a module of the ``cloud`` extra (typed as a plain module: boto3 ships no type hints)."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise DependencyError("R2/S3 storage needs boto3", hint="pip install 's3seg[cloud]'") from e


_session_lock = threading.Lock()
_session: Any = None


def _new_client(**kwargs: Any) -> Any:
    """A client from one shared boto3 session: the session caches the parsed S3 service model, which
    makes every client after the first ~20x cheaper to build. Sessions are not thread-safe, clients are,
    hence the lock around creation only."""
    global _session
    boto3 = _import("boto3")
    with _session_lock:
        if _session is None:
            _session = boto3.session.Session()
        return _session.client("s3", **kwargs)


def _normalise_endpoint(endpoint_url: str | None) -> str | None:
    """Accept ``abc.r2.cloudflarestorage.com`` as well as ``https://abc.r2.cloudflarestorage.com``."""
    if not endpoint_url:
        return None
    endpoint_url = endpoint_url.strip().rstrip("/")
    return endpoint_url if "://" in endpoint_url else f"https://{endpoint_url}"


def _display_name(endpoint_url: str | None) -> str:
    host = (urlsplit(endpoint_url).hostname or "") if endpoint_url else ""
    return "r2" if host.endswith(".r2.cloudflarestorage.com") else "s3"


def _is_aws_error(e: BaseException) -> bool:
    return type(e).__module__.split(".", 1)[0] in {"botocore", "boto3", "s3transfer"}


def _root_cause(e: BaseException) -> BaseException:
    """The error that carries the server's answer: boto3 wraps a ClientError in S3UploadFailedError
    (as the implicit context) and in RetriesExceededError (as ``last_exception``)."""
    seen: set[int] = set()
    while id(e) not in seen:
        seen.add(id(e))
        if isinstance(getattr(e, "response", None), dict):
            return e
        inner = getattr(e, "last_exception", None) or e.__cause__ or e.__context__
        if not isinstance(inner, BaseException) or not _is_aws_error(inner):
            return e
        e = inner
    return e


def _error_code(e: BaseException) -> tuple[str, str]:
    """(code, message) from a ClientError's parsed response; ("", "") for other errors."""
    response = getattr(e, "response", None)
    if not isinstance(response, dict):
        return "", ""
    error = response.get("Error") or {}
    code = str(error.get("Code") or response.get("ResponseMetadata", {}).get("HTTPStatusCode") or "")
    return code, str(error.get("Message") or "")


class S3Storage(Closing):
    """Objects in an R2/S3 bucket, optionally under a key prefix (``prefix/key``)."""

    def __init__(
        self,
        bucket: str,
        *,
        endpoint_url: str | None,
        access_key_id: str | None,
        secret_access_key: str | None,
        region: str = "auto",
        path_style: bool = True,
        prefix: str = "",
        multipart_threshold: int = 8 * MiB,
        client: Any = None,
    ) -> None:
        if not bucket:
            raise StorageError("no bucket given", hint="set R2_BUCKET")
        if multipart_threshold < 1:
            raise UsageError(f"multipart_threshold must be at least 1 byte, not {multipart_threshold}")
        self.bucket = bucket
        self.endpoint_url = _normalise_endpoint(endpoint_url)
        self.prefix = safe_prefix(prefix)
        self.multipart_threshold = multipart_threshold
        self.name = _display_name(self.endpoint_url)
        self._label = self.name.upper()
        self._transfer_config = self._make_transfer_config()
        self._client = (
            client if client is not None else self._make_client(access_key_id, secret_access_key, region, path_style)
        )

    def __repr__(self) -> str:
        where = f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket
        return f"S3Storage({where!r}, endpoint_url={self.endpoint_url!r})"

    def close(self) -> None:
        """Close the client's connection pool (open sockets would otherwise outlive the storage)."""
        self._client.close()

    # --- construction ----------------------------------------------------------------------------

    def _make_client(
        self, access_key_id: str | None, secret_access_key: str | None, region: str, path_style: bool
    ) -> Any:
        if self.endpoint_url is None and region == "auto":
            # "auto" is R2's region; against AWS it would build the endpoint s3.auto.amazonaws.com.
            raise StorageError(
                "region 'auto' needs an endpoint (it is Cloudflare R2's region)",
                hint="set R2_ENDPOINT for R2, or S3SEG_R2_REGION to the bucket's AWS region",
            )
        config = _import("botocore.config").Config(
            signature_version="s3v4",
            s3={"addressing_style": "path" if path_style else "virtual"},
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            # boto3 >= 1.36 adds CRC checksums to every upload by default; several S3-compatible
            # services reject or mishandle them, and S3 itself only needs them where it asks.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        try:
            with self._errors("connect to"):
                return _new_client(
                    endpoint_url=self.endpoint_url,
                    region_name=region,
                    config=config,
                    aws_access_key_id=access_key_id,
                    aws_secret_access_key=secret_access_key,
                )
        except ValueError as e:  # botocore refuses a malformed endpoint with a plain ValueError
            raise StorageError(
                f"invalid R2_ENDPOINT {self.endpoint_url!r}: {e}",
                hint="use https://<account_id>.r2.cloudflarestorage.com",
            ) from e

    def _make_transfer_config(self) -> Any:
        # Parts as large as the threshold, so a small threshold (tests) also gives small parts, but never
        # under S3's 5 MiB minimum.
        return _import("boto3.s3.transfer").TransferConfig(
            multipart_threshold=self.multipart_threshold,
            multipart_chunksize=max(self.multipart_threshold, MIN_PART_BYTES),
            max_concurrency=4,
        )

    # --- errors ----------------------------------------------------------------------------------

    @contextmanager
    def _errors(self, action: str, key: str | None = None) -> Iterator[None]:
        """Convert boto3/botocore errors raised inside into one :class:`StorageError`."""
        try:
            yield
        except Exception as e:
            if not _is_aws_error(e):
                raise
            raise self._convert(_root_cause(e), action, key) from e

    def _convert(self, e: BaseException, action: str, key: str | None) -> StorageError:
        kind = type(e).__name__
        code, message = _error_code(e)
        what = f"{key!r} in bucket {self.bucket!r}" if key is not None else f"bucket {self.bucket!r}"
        if code == "NoSuchBucket" or (code in _MISSING_KEY_CODES and key is None):
            return StorageError(
                f"{self._label} bucket {self.bucket!r} does not exist",
                hint="create it (Cloudflare dashboard, `wrangler r2 bucket create`, `aws s3 mb`) or fix R2_BUCKET",
            )
        if code in _MISSING_KEY_CODES:
            return ObjectNotFoundError(
                f"no object {key!r} in {self._label} bucket {self.bucket!r}",
                hint="check the key with `list()`; keys are case-sensitive",
            )
        if code in _CREDENTIAL_CODES:
            return StorageError(
                f"{self._label} refused to {action} {what}: {code}",
                hint=f"check R2_ACCESS_KEY_ID / R2_SECRET_ACCESS_KEY and that the token may use bucket {self.bucket!r}",
            )
        if kind in _NO_CREDENTIALS_ERRORS:
            return StorageError(
                f"no {self._label} credentials to {action} {what}", hint="set R2_ACCESS_KEY_ID and R2_SECRET_ACCESS_KEY"
            )
        if kind in _UNREACHABLE_ERRORS:
            return StorageError(
                f"cannot reach {self._label} at {self.endpoint_url or 'the AWS endpoint'}",
                hint="check R2_ENDPOINT and the network",
            )
        detail = f"{code}: {message}" if code else str(e)
        return StorageError(
            f"{self._label} failed to {action} {what}: {detail}", hint="retry; S3SEG_DEBUG=1 shows the underlying error"
        )

    # --- keys ------------------------------------------------------------------------------------

    def _full(self, key: str) -> tuple[str, str]:
        """(validated key, key inside the bucket)."""
        key = safe_key(key)
        return key, join_prefix(self.prefix, key)

    # --- Storage protocol ------------------------------------------------------------------------

    def put(self, key: str, data: bytes, content_type: str | None = None) -> str:
        """Upload ``data`` (multipart above the threshold). Returns the key."""
        key, full = self._full(key)
        extra = {"ContentType": content_type or guess_content_type(key)}
        with self._errors("upload", key):
            if len(data) >= self.multipart_threshold:
                self._client.upload_fileobj(
                    io.BytesIO(data), self.bucket, full, ExtraArgs=extra, Config=self._transfer_config
                )
            else:
                self._client.put_object(Bucket=self.bucket, Key=full, Body=data, **extra)
        return key

    def put_file(
        self, key: str, path: Path, content_type: str | None = None, progress: Callable[[int], None] | None = None
    ) -> str:
        """Stream the file at ``path`` (multipart above the threshold); ``progress(n_bytes)`` is called
        as parts go out. Returns the key."""
        key, full = self._full(key)
        if not os.path.isfile(path):
            raise StorageError(f"cannot read {path}: not a file")
        extra = {"ContentType": content_type or guess_content_type(key)}
        with self._errors("upload", key):
            self._client.upload_file(
                os.fspath(path), self.bucket, full, ExtraArgs=extra, Callback=progress, Config=self._transfer_config
            )
        return key

    def get(self, key: str) -> bytes:
        """The object's bytes; :class:`StorageError` if there is none."""
        key, full = self._full(key)
        with self._errors("read", key):
            response = self._client.get_object(Bucket=self.bucket, Key=full)
            with closing(response["Body"]) as body:
                data: bytes = body.read()
        return data

    def download(self, key: str, path: Path) -> Path:
        """Download the object to ``path`` (parents created; boto3 writes a temporary file and renames
        it). Returns ``path``."""
        key, full = self._full(key)
        dest = Path(path)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise StorageError(f"cannot create {dest.parent}: {e.strerror or e}") from e
        with self._errors("download", key):
            self._client.download_file(self.bucket, full, os.fspath(dest), Config=self._transfer_config)
        return dest

    def delete(self, key: str) -> None:
        """Remove the object; S3 answers a missing key with success, so this is idempotent."""
        key, full = self._full(key)
        with self._errors("delete", key):
            self._client.delete_object(Bucket=self.bucket, Key=full)

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key`` (HEAD; a 404 is ``False``)."""
        key, full = self._full(key)
        try:
            with self._errors("check", key):
                self._client.head_object(Bucket=self.bucket, Key=full)
        except ObjectNotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        """Sorted keys (relative to this storage's prefix) that start with ``prefix``."""
        prefix = safe_list_prefix(prefix)
        # With a storage prefix, list "prefix/" so that prefix "a" never sees keys of prefix "ab".
        base = f"{self.prefix}/" if self.prefix else ""
        keys: list[str] = []
        with self._errors("list"):
            pages = self._client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=base + prefix)
            for page in pages:
                keys.extend(item["Key"][len(base) :] for item in page.get("Contents", []))
        return sorted(keys)

    def url(self, key: str, expires_s: int = 3600) -> str:
        """A presigned GET URL valid for ``expires_s`` seconds (1 s to 7 days)."""
        key, full = self._full(key)
        if not 1 <= expires_s <= MAX_URL_SECONDS:
            raise UsageError(f"expires_s must be between 1 and {MAX_URL_SECONDS} seconds, not {expires_s}")
        with self._errors("sign a URL for", key):
            url: str = self._client.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": full}, ExpiresIn=expires_s
            )
        return url
