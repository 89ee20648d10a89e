"""Gateway role: run inference on GPU workers (other ``s3seg serve`` processes) instead of in this process.

Each task goes to the worker with the fewest requests in flight from here; a worker that cannot be
reached, times out or answers 5xx is skipped and the next one is tried, so one dead GPU box does not
fail tasks while another is up. Errors about the request itself (a bad image, 4xx) are final.

A video task goes to a worker's ``POST /api/v1/predict/video`` (the NDJSON stream: progress as the worker's
model takes frames in, then the frames); the worker counts as busy until the video is done. A worker is
skipped as above until it has started the video (its ``start`` line); an error after that is final (the
task ends ``error``).
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from starlette.concurrency import run_in_threadpool

from s3seg._http import HTTP, Hints, Waits, predict
from s3seg._remote import remote_video
from s3seg.errors import ServerError
from s3seg.images import LoadedImage
from s3seg.types import SegmentationResult, SegmentRequest

if TYPE_CHECKING:
    from s3seg.config import Settings
    from s3seg.video import VideoOptions, VideoResult

_T = TypeVar("_T")

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
            with self._busy(i):
                try:
                    return predict(self._workers[i], image, request, all_options=True)  # the gateway's defaults
                except ServerError as e:
                    self._skip(i, e, failures)
        raise _unavailable(failures)

    def track(
        self,
        path: Path,
        prompts: Sequence[str],
        options: VideoOptions,
        settings: Settings,
        then: Callable[[VideoResult], _T],
    ) -> _T:
        """Track ``path`` on a worker (``options`` as a local run's; unset ones: the worker's defaults) and
        return ``then(video)``, run while that worker counts as busy. Blocks: call it off the event loop."""
        failures: list[str] = []
        for i in self._order():
            with self._busy(i):
                try:
                    video = remote_video(self._workers[i], path, prompts, options, settings)  # its header checked
                except ServerError as e:
                    self._skip(i, e, failures)
                    continue
                return then(video)
        raise _unavailable(failures)

    @contextmanager
    def _busy(self, i: int) -> Iterator[None]:
        with self._lock:
            self._in_flight[i] += 1
        try:
            yield
        finally:
            with self._lock:
                self._in_flight[i] -= 1

    def _skip(self, i: int, error: ServerError, failures: list[str]) -> None:
        """A worker that is down or failing (5xx, unreachable) is skipped; any other error is final."""
        if error.status is not None and error.status < 500:
            raise error
        failures.append(f"{self.urls[i]}: {error.message}")

    def _order(self) -> list[int]:
        turn = next(self._turn)
        n = len(self._workers)
        with self._lock:
            return sorted(range(n), key=lambda i: (self._in_flight[i], (i - turn) % n))


def _unavailable(failures: list[str]) -> ServerError:
    return ServerError(
        f"no GPU worker could run the task ({'; '.join(failures)})",
        hint="check that the workers in S3SEG_WORKERS run `s3seg serve` and accept the key",
        status=503,
        code="WORKERS_UNAVAILABLE",
    )
