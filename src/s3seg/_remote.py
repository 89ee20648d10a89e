"""Talking to an ``s3seg serve`` server over HTTP: the same results as local inference.

Images travel as their original encoded bytes (or lossless PNG for in-memory images), so the server
decodes exactly what a local run decodes. Connection failures are retried; 503 (busy) is retried after
its Retry-After; every error becomes one of s3seg's own errors with a hint.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

from s3seg.errors import ServerError, UsageError, error_from_response
from s3seg.images import LoadedImage
from s3seg.types import SegmentationResult, SegmentRequest, from_coco

_BUSY_RETRIES = 3
_CONCURRENT_REQUESTS = 4
_MAX_RETRY_AFTER_S = 10.0


class RemoteBackend:
    def __init__(self, url: str, *, api_key: str | None, timeout_s: float) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"server URL must start with http:// or https://, got {url!r}")
        self.url = url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx.Client(
            base_url=self.url, headers=headers, timeout=timeout_s, transport=httpx.HTTPTransport(retries=3)
        )  # retries connection failures

    def close(self) -> None:
        self._http.close()

    def check(self) -> dict[str, Any]:
        """The server's model info (also proves the URL and the key work)."""
        data: dict[str, Any] = self._call("GET", "/api/v1/model/info")
        return data

    def segment(self, images: Sequence[LoadedImage], request: SegmentRequest) -> list[SegmentationResult]:
        """One request per image, several in flight; the server batches concurrent requests onto its device."""
        options = request.options
        fields: dict[str, Any] = {
            "prompts": list(request.prompts),
            "boxes": [str(b) for b in request.boxes],
            "threshold": repr(options.threshold),
            "mask_threshold": repr(options.mask_threshold),
        }
        if options.max_instances is not None:
            fields["max_instances"] = str(options.max_instances)
        if options.nms_iou is not None:
            fields["nms_iou"] = repr(options.nms_iou)

        def one(image: LoadedImage) -> SegmentationResult:
            files = {"image": (image.name or "image.png", encoded(image), "application/octet-stream")}
            [result] = from_coco(self._call("POST", "/api/v1/predict", data=fields, files=files))
            return dataclasses.replace(result, image=image.name)

        if len(images) == 1:
            return [one(images[0])]
        # In flight together, so the server can put them in one device batch; results keep input order.
        with ThreadPoolExecutor(min(len(images), _CONCURRENT_REQUESTS)) as pool:
            return list(pool.map(one, images))

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        for attempt in range(_BUSY_RETRIES + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except httpx.TimeoutException as e:
                raise ServerError(
                    f"the s3seg server at {self.url} did not answer in time",
                    hint="raise S3SEG_REQUEST_TIMEOUT_S, or send smaller images",
                ) from e
            except httpx.TransportError as e:
                raise ServerError(
                    f"cannot reach the s3seg server at {self.url} ({type(e).__name__})",
                    hint="check --server / S3SEG_SERVER_URL and that `s3seg serve` runs there",
                ) from e
            if response.status_code == 503 and attempt < _BUSY_RETRIES:
                time.sleep(min(float(response.headers.get("retry-after", "1") or 1), _MAX_RETRY_AFTER_S))
                continue
            return self._data(response)
        raise AssertionError("unreachable")

    def _data(self, response: httpx.Response) -> Any:
        return envelope_data(response, f"the s3seg server at {self.url}")


def envelope_data(response: httpx.Response, where: str) -> Any:
    """``data`` of an s3seg envelope; otherwise raise the error it answers (``where``: the server's name)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and body.get("ok") is True:
        return body.get("data")
    details = body.get("error", {}) if isinstance(body, dict) else {}
    code = str(details.get("code", "HTTP_ERROR"))
    message = str(details.get("message") or f"HTTP {response.status_code}")
    raise error_from_response(response.status_code, code, message, details.get("hint"), where=where)


def encoded(image: LoadedImage) -> bytes:
    if image.encoded is not None:
        return image.encoded
    from s3seg.render import encode_png

    return encode_png(image.array)  # lossless: the server decodes the same pixels
