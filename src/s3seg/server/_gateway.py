"""Gateway role: run inference on GPU workers (other ``s3seg serve`` processes) instead of in this process.

Each task goes to the worker with the fewest requests in flight from here; a worker that cannot be
reached, times out or answers 5xx is skipped and the next one is tried, so one dead GPU box does not
fail tasks while another is up. Errors about the request itself (a bad image, 4xx) are final.
"""

from __future__ import annotations

import itertools
import threading

from starlette.concurrency import run_in_threadpool

from s3seg._http import HTTP, Hints, Waits, predict
from s3seg.errors import ServerError
from s3seg.images import LoadedImage
from s3seg.types import SegmentationResult, SegmentRequest

_BUSY = Waits(statuses=(503,), retries=3, max_wait_s=10.0)  # a busy worker: its Retry-After, then the next one
_HINTS = Hints(
    timeout="raise S3SEG_REQUEST_TIMEOUT_S on the gateway", unreachable="check S3SEG_WORKERS and that the worker runs"
)


def _worker(url: str, api_key: str | None, timeout_s: float) -> HTTP:
    headers = {"X-API-Key": api_key} if api_key else {}
    return HTTP(
        url, where=f"the GPU worker at {url}", hints=_HINTS, timeout_s=timeout_s, headers=lambda: headers, waits=_BUSY
    )


class WorkerPool:
    def __init__(self, urls: list[str], *, api_key: str | None, timeout_s: float) -> None:
        if not urls:
            raise ValueError("a worker pool needs at least one worker URL")
        self.urls = [u.rstrip("/") for u in urls]
        self._workers = [_worker(u, api_key, timeout_s) for u in self.urls]
        self._in_flight = [0] * len(urls)
        self._turn = itertools.count()  # breaks ties round-robin
        self._lock = threading.Lock()

    def close(self) -> None:
        for worker in self._workers:
            worker.close()

    async def __call__(self, image: LoadedImage, request: SegmentRequest) -> SegmentationResult:
        return await run_in_threadpool(self.segment, image, request)

    def segment(self, image: LoadedImage, request: SegmentRequest) -> SegmentationResult:
        failures: list[str] = []
        for i in self._order():
            with self._lock:
                self._in_flight[i] += 1
            try:
                return predict(self._workers[i], image, request, all_options=True)  # the gateway's defaults
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
        n = len(self._workers)
        with self._lock:
            return sorted(range(n), key=lambda i: (self._in_flight[i], (i - turn) % n))
