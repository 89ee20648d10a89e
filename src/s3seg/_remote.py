"""Segmenting on an ``s3seg serve`` server over HTTP: the same results as local inference.

Images travel as their original encoded bytes (or lossless PNG for in-memory images), so the server
decodes exactly what a local run decodes. Connection failures are retried; 503 (busy) is retried after
its Retry-After; every error becomes one of s3seg's own errors with a hint.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from s3seg._http import HTTP, Hints, Waits, in_flight, predict
from s3seg.errors import UsageError
from s3seg.images import LoadedImage
from s3seg.types import SegmentationResult, SegmentRequest

_BUSY = Waits(statuses=(503,), retries=3, max_wait_s=10.0)
_HINTS = Hints(
    timeout="raise S3SEG_REQUEST_TIMEOUT_S, or send smaller images",
    unreachable="check --server / S3SEG_SERVER_URL and that `s3seg serve` runs there",
)


class RemoteBackend:
    """The GPU server as a :class:`s3seg.client.Backend` (it keeps nothing: no task ids)."""

    keeps_results = False

    def __init__(self, url: str, *, api_key: str | None, timeout_s: float) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"server URL must start with http:// or https://, got {url!r}")
        headers = {"X-API-Key": api_key} if api_key else {}
        self.url = url.rstrip("/")
        self.http = HTTP(
            self.url,
            where=f"the s3seg server at {self.url}",
            hints=_HINTS,
            timeout_s=timeout_s,
            headers=lambda: headers,
            waits=_BUSY,
        )

    def close(self) -> None:
        self.http.close()

    def check(self) -> dict[str, Any]:
        """The server's model info (also proves the URL and the key work)."""
        data: dict[str, Any] = self.http.call("GET", "/api/v1/model/info")
        return data

    def segment(
        self, images: Sequence[LoadedImage], request: SegmentRequest, *, project: str | None = None
    ) -> list[tuple[SegmentationResult, str | None]]:
        """One request per image, several in flight; the server batches concurrent requests onto its device."""

        return in_flight(lambda image: (predict(self.http, image, request), None), images)
