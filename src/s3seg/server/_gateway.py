"""Gateway role: run inference on GPU workers (other ``s3seg serve`` processes) instead of in this process.

Each task goes to the worker with the fewest requests in flight from here; a worker that cannot be
reached, times out or answers 5xx is skipped and the next one is tried, so one dead GPU box does not
fail tasks while another is up. Errors about the request itself (a bad image, 4xx) are final.
"""

from __future__ import annotations

import itertools
import threading

from starlette.concurrency import run_in_threadpool

from s3seg._remote import RemoteBackend
from s3seg.errors import ServerError
from s3seg.images import LoadedImage
from s3seg.types import SegmentationResult, SegmentRequest


class WorkerPool:
    def __init__(self, urls: list[str], *, api_key: str | None, timeout_s: float) -> None:
        if not urls:
            raise ValueError("a worker pool needs at least one worker URL")
        self.urls = [u.rstrip("/") for u in urls]
        self._backends = [RemoteBackend(u, api_key=api_key, timeout_s=timeout_s) for u in self.urls]
        self._in_flight = [0] * len(urls)
        self._turn = itertools.count()  # breaks ties round-robin
        self._lock = threading.Lock()

    def close(self) -> None:
        for backend in self._backends:
            backend.close()

    async def __call__(self, image: LoadedImage, request: SegmentRequest) -> SegmentationResult:
        return await run_in_threadpool(self.segment, image, request)

    def segment(self, image: LoadedImage, request: SegmentRequest) -> SegmentationResult:
        failures: list[str] = []
        for i in self._order():
            with self._lock:
                self._in_flight[i] += 1
            try:
                [result] = self._backends[i].segment([image], request)
                return result
            except ServerError as e:
                if e.status is not None and e.status < 500:
                    raise
                failures.append(f"{self.urls[i]}: {e.message}")
            finally:
                with self._lock:
                    self._in_flight[i] -= 1
        raise ServerError(
            f"no GPU worker could run the task ({'; '.join(failures)})",
            hint="check that the workers in S3SEG_WORKERS run `s3seg serve` and accept the key",
            status=503,
            code="WORKERS_UNAVAILABLE",
        )

    def _order(self) -> list[int]:
        turn = next(self._turn)
        n = len(self._backends)
        with self._lock:
            return sorted(range(n), key=lambda i: (self._in_flight[i], (i - turn) % n))
