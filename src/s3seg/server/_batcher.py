"""Inference off the event loop: one worker thread owns the device and batches concurrent requests.

Requests queue up while the device is busy; the worker then takes everything waiting (up to
``max_batch`` images) as one backbone batch. A lone request is never delayed (unless ``wait_s`` asks
for it), and under load batches form by themselves. The queue is bounded: when it is full the caller
gets :class:`Busy` at once (the server answers 503 with Retry-After).

The device is taken in :class:`Turns` (first come, first served): one turn per image batch here, one
per frame for a video (``Sam3VideoEngine.share_device``). A video therefore never holds the device for
more than one frame while images wait: a batch that queues up during a frame runs before the next frame.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from s3seg.errors import Busy, DeviceError
from s3seg.types import SegmentationResult

if TYPE_CHECKING:  # the engine package imports torch; the server module must not at import time
    from s3seg.engine import Request


class Engine(Protocol):
    def run(self, requests: Sequence[Request]) -> list[SegmentationResult]: ...


@dataclass
class Stats:
    batches: int = 0
    images: int = 0
    largest_batch: int = 0
    queued: int = 0


@dataclass
class _Job:
    requests: list[Request]
    future: asyncio.Future[list[SegmentationResult]]
    loop: asyncio.AbstractEventLoop
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.requests)


class Turns:
    """A lock granted in the order it was asked for (a ticket lock), so that two users of the device
    alternate instead of one taking it again and again. ``served`` counts the turns taken."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._next = 0  # the next ticket handed out
        self._serving = 0  # the ticket whose turn it is
        self.served = 0

    def __enter__(self) -> Turns:
        with self._cond:
            ticket = self._next
            self._next += 1
            while ticket != self._serving:
                self._cond.wait()
        return self

    def __exit__(self, *exc: object) -> None:
        with self._cond:
            self._serving += 1
            self.served += 1
            self._cond.notify_all()


class Batcher:
    def __init__(self, engine: Engine, *, max_batch: int, max_queue: int, wait_s: float = 0.0) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self._wait_s = wait_s
        self._queue: queue.Queue[_Job | None] = queue.Queue()
        self._capacity = threading.BoundedSemaphore(max_queue)
        self.stats = Stats()
        self.turns = Turns()  # the device: image batches and video frames take turns
        self._stats_lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="s3seg-inference", daemon=True)
        self._thread.start()

    async def run(self, requests: list[Request]) -> list[SegmentationResult]:
        """Queue ``requests`` (one client call) and wait for their results."""
        for taken in range(len(requests)):
            if not self._capacity.acquire(blocking=False):
                for _ in range(taken):
                    self._capacity.release()
                raise Busy("the server is busy: its queue is full", hint="retry after a moment")
        loop = asyncio.get_running_loop()
        job = _Job(requests, loop.create_future(), loop)
        with self._stats_lock:  # the worker thread updates the same counters
            self.stats.queued += job.size
        self._queue.put(job)
        return await job.future

    def close(self) -> None:
        """Finish everything queued, then stop the worker (graceful shutdown)."""
        self._queue.put(None)
        self._thread.join()

    def _loop(self) -> None:
        carry: _Job | None = None
        while True:
            job = carry if carry is not None else self._queue.get()
            carry = None
            if job is None:
                return
            jobs, size = [job], job.size
            deadline = time.monotonic() + self._wait_s
            while size < self._max_batch:
                timeout = deadline - time.monotonic()
                try:
                    nxt = self._queue.get(timeout=timeout) if timeout > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:  # shutting down: finish this batch first
                    self._queue.put(None)
                    break
                if size + nxt.size > self._max_batch:
                    carry = nxt
                    break
                jobs.append(nxt)
                size += nxt.size
            self._run(jobs)

    def _run(self, jobs: list[_Job]) -> None:
        requests = [r for j in jobs for r in j.requests]
        try:
            with self.turns:
                results = self._engine.run(requests)
        except DeviceError as e:
            if len(jobs) > 1:  # out of memory together: retry apart, so only a job too big on its own fails
                for j in jobs:
                    self._run([j])
            else:
                self._fail(jobs, e)
            return
        except Exception as e:  # the callers' requests fail; the worker keeps serving
            self._fail(jobs, e)
            return
        with self._stats_lock:
            self.stats.batches += 1
            self.stats.images += len(requests)
            self.stats.largest_batch = max(self.stats.largest_batch, len(requests))
        start = 0
        for j in jobs:
            self._settle(j, results[start : start + j.size], None)
            start += j.size

    def _fail(self, jobs: list[_Job], error: BaseException) -> None:
        for j in jobs:
            self._settle(j, None, error)

    def _settle(self, job: _Job, results: list[SegmentationResult] | None, error: BaseException | None) -> None:
        job.requests = []  # their images are the caller's again: this thread keeps no pixels until its next batch
        for _ in range(job.size):
            self._capacity.release()
        with self._stats_lock:
            self.stats.queued -= job.size

        def done() -> None:
            if job.future.done():  # the client went away
                return
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(results or [])

        job.loop.call_soon_threadsafe(done)
