"""Segmentation tasks in the background: the public API's ``POST /api/v1/segment`` returns a task id at
once; a few worker coroutines here run the tasks and record their results.

Tasks live in the results store, not in memory, so none is lost when the server stops: on start-up, and
every ``sweep_s`` after, the runner picks up ``pending`` tasks (also those created by other processes)
and asks the store to requeue tasks left ``processing`` by a worker that died (``task_timeout_s``);
after ``task_attempts`` tries such a task ends ``error``. Two servers sharing a store may both see a
pending task; ``store.start`` lets exactly one of them take it.

A worker that is alive says so: while it runs a task it heartbeats (``store.heartbeat``, every
``heartbeat_s``, a quarter of ``task_timeout_s`` at most) and reports progress as it goes, so a task that
runs longer than ``task_timeout_s`` (a long video) is requeued only once its worker stops heartbeating (the
process died). A task run again starts from the beginning (``frames_done`` back to 0), and is charged
once: only the run that marks it ``done`` charges it. An image task is one step (progress 0/1, then 1/1);
a video task reports its frames (see ``_video_tasks``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.concurrency import run_in_threadpool

from s3seg.errors import Busy, S3SegError, StoreError, UsageError
from s3seg.images import LoadedImage, load_image
from s3seg.records import Recorder
from s3seg.server._fetch import fetch
from s3seg.server._memory import MemoryBudget, video_need
from s3seg.server._schemas import public_result
from s3seg.storage import Storage
from s3seg.store import Store, Task
from s3seg.types import Box, SegmentationResult, SegmentOptions, SegmentRequest

log = logging.getLogger("s3seg.tasks")

# Runs one image through SAM3 (the in-process batcher, or a GPU worker in gateway mode).
Infer = Callable[[LoadedImage, SegmentRequest], Awaitable[SegmentationResult]]
# Runs one video task to its end (``done``, charged) in a thread, reporting progress through the callable:
# ``progress(done, total)`` heartbeats and raises when the task is no longer this worker's to run.
Progress = Callable[[int, int], None]
RunVideo = Callable[[Task, Store, Progress], Task]

_BUSY_RETRIES = 30
_PROGRESS_S = 0.25  # a video task writes its progress at most this often
_BUDGET_WAIT_S = 60.0  # a task waits longer than a request for room in the memory budget


class _NotOurs(Exception):
    """The task is no longer this worker's (requeued and taken elsewhere, ended, or the server stops)."""


@dataclass(frozen=True)
class TaskLimits:
    timeout_s: float
    attempts: int
    max_pixels: int
    max_fetch_bytes: int
    url_timeout_s: float
    allow_private_urls: bool


class TaskRunner:
    def __init__(
        self,
        store: Store,
        storage: Storage,
        infer: Infer,
        limits: TaskLimits,
        budget: MemoryBudget,
        *,
        workers: int = 2,
        sweep_s: float | None = None,
        video: RunVideo | None = None,
    ) -> None:
        self.store = store
        self.storage = storage
        self.infer = infer
        self.video = video
        self.limits = limits
        self.budget = budget
        self.workers = workers
        self.sweep_s = sweep_s if sweep_s is not None else min(30.0, max(1.0, limits.timeout_s / 4))
        self.heartbeat_s = min(30.0, max(0.05, limits.timeout_s / 4))
        self._queue: asyncio.Queue[Task] = asyncio.Queue()
        self._known: set[str] = set()  # queued or running here
        self._finished: dict[str, asyncio.Event] = {}
        self._jobs: list[asyncio.Task[None]] = []

    # --- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        self._jobs = [asyncio.create_task(self._work(), name=f"s3seg-task-{i}") for i in range(self.workers)]
        self._jobs.append(asyncio.create_task(self._sweep_forever(), name="s3seg-task-sweep"))

    async def stop(self) -> None:
        """Stop taking tasks; a task cut short stays ``processing`` and is requeued by the next sweep."""
        for job in self._jobs:
            job.cancel()
        for job in self._jobs:
            with contextlib.suppress(asyncio.CancelledError):
                await job

    def submit(self, task: Task) -> None:
        if task.id not in self._known:
            self._known.add(task.id)
            self._queue.put_nowait(task)

    async def wait(self, task_id: str, timeout_s: float) -> None:
        """Return when a task run by this process ends, or after ``timeout_s`` (the caller re-reads it)."""
        if task_id not in self._known:  # run elsewhere (or already over): nothing here will signal it
            await asyncio.sleep(timeout_s)
            return
        event = self._finished.setdefault(task_id, asyncio.Event())
        with contextlib.suppress(asyncio.TimeoutError):  # not the builtin TimeoutError before Python 3.11
            await asyncio.wait_for(event.wait(), timeout_s)

    async def sweep(self) -> None:
        """Requeue tasks whose worker died, and queue every pending task this process does not know yet."""
        requeued = await run_in_threadpool(
            self.store.requeue_stale, older_than_s=self.limits.timeout_s, max_attempts=self.limits.attempts
        )
        for task in requeued:
            log.warning("task %s: its worker stopped responding; running it again", task.id)
        for task in await run_in_threadpool(self.store.runnable, 200):
            self.submit(task)

    # --- internals ---------------------------------------------------------------------------
    async def _sweep_forever(self) -> None:
        while True:
            try:
                await self.sweep()
            except S3SegError as e:
                log.error("task sweep failed: %s", e.message)
            await asyncio.sleep(self.sweep_s)

    async def _work(self) -> None:
        while True:
            task = await self._queue.get()
            try:
                await self._run(task)
            except Exception:  # one task's bug must not stop the worker
                log.exception("task %s: unexpected failure", task.id)
            finally:
                self._known.discard(task.id)
                event = self._finished.pop(task.id, None)
                if event is not None:
                    event.set()

    async def _run(self, queued: Task) -> None:
        if queued.user_id is None:
            return
        store = self.store.for_user(queued.user_id)
        try:
            task = await run_in_threadpool(store.start, queued.id)
        except StoreError:
            return  # another worker took it, or it ended meanwhile
        recorder = Recorder(self.storage, store)
        beating = asyncio.create_task(self._heartbeat(store, task.id), name=f"s3seg-heartbeat-{task.id}")
        stopped = threading.Event()
        try:
            if task.metadata.get("kind") == "video":
                await self._run_video(task, store, stopped)
            else:
                data = await run_in_threadpool(self._image_bytes, task)
                async with self.budget.hold([data], max_pixels=self.limits.max_pixels, wait_s=_BUDGET_WAIT_S):
                    image = await run_in_threadpool(self._image, task, data)
                    result = public_result(await self._infer(image, task_request(task)))
                    await run_in_threadpool(store.heartbeat, task.id, done=1, total=1)
                    await run_in_threadpool(recorder.complete, task, image, result)  # marks error itself on failure
        except asyncio.CancelledError:
            stopped.set()  # the server stops: the task stays processing and is requeued after a restart
            raise
        except _NotOurs:
            log.warning("task %s: no longer processing here (requeued or ended elsewhere); stopped", task.id)
        except S3SegError as e:
            await self._fail(recorder, task, e.message)
        except Exception as e:
            await self._fail(recorder, task, f"unexpected {type(e).__name__}")
            raise
        finally:
            beating.cancel()

    async def _run_video(self, task: Task, store: Store, stopped: threading.Event) -> None:
        if self.video is None:
            raise UsageError(
                "this server runs no video tasks", hint="run them on an `s3seg serve` with a model or workers"
            )
        last = [0.0]

        def progress(done: int, total: int) -> None:  # in the video's thread
            if stopped.is_set():
                raise _NotOurs(task.id)
            now = time.monotonic()
            if done < total and now - last[0] < _PROGRESS_S:
                return  # at most a few writes a second; the last frame always
            last[0] = now
            if not store.heartbeat(task.id, done=done, total=total):
                raise _NotOurs(task.id)

        # the video's working set is held from the memory budget while it is tracked (as a task waits for an image)
        width, height = await run_in_threadpool(self._video_size, task)
        objects = int((task.metadata.get("video_options") or {}).get("max_objects", 1))
        name = str(task.metadata.get("video"))
        need = video_need(int(width), int(height), objects, name=name, capacity=self.budget.capacity)
        release = await self.budget.reserve(need, _BUDGET_WAIT_S)
        try:
            await run_in_threadpool(self.video, task, store, progress)
        finally:
            release()

    def _video_size(self, task: Task) -> tuple[int, int]:
        """The video's frame size, from its options (a task created before they had it: the upload's JSON)."""
        size = (task.metadata.get("video_options") or {}).get("size")
        found = (
            {"width": size[0], "height": size[1]}
            if size
            else json.loads(self.storage.get(f"{task.metadata['video_key']}.json"))
        )
        return int(found["width"]), int(found["height"])

    async def _heartbeat(self, store: Store, task_id: str) -> None:
        """Say the task's worker is alive every ``heartbeat_s`` until cancelled."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            try:
                await run_in_threadpool(store.heartbeat, task_id)
            except S3SegError as e:  # the next beat may get through; the sweep decides after timeout_s
                log.warning("task %s: heartbeat failed: %s", task_id, e.message)

    async def _infer(self, image: LoadedImage, request: SegmentRequest) -> SegmentationResult:
        for _ in range(_BUSY_RETRIES):  # queue full with direct /predict traffic: wait, a task is not in a hurry
            try:
                return await self.infer(image, request)
            except Busy:
                await asyncio.sleep(1.0)
        return await self.infer(image, request)

    async def _fail(self, recorder: Recorder, task: Task, reason: str) -> None:
        with contextlib.suppress(StoreError):  # already failed by the recorder, or requeued elsewhere
            await run_in_threadpool(recorder.abort, task, reason)

    def _image_bytes(self, task: Task) -> bytes:
        meta = task.metadata
        if meta.get("image_key"):
            return self.storage.get(str(meta["image_key"]))
        return fetch(
            str(meta["image_url"]),
            max_bytes=self.limits.max_fetch_bytes,
            timeout_s=self.limits.url_timeout_s,
            allow_private=self.limits.allow_private_urls,
        )

    def _image(self, task: Task, data: bytes) -> LoadedImage:
        return load_image(data, max_pixels=self.limits.max_pixels, name=str(task.metadata.get("image") or "image"))


def task_metadata(request: SegmentRequest) -> dict[str, Any]:
    """A request as a task's metadata keeps it (the prompts are the task's own column)."""
    return {"options": request.options.to_dict(), "boxes": [b.to_dict() for b in request.boxes]}


def task_request(task: Task) -> SegmentRequest:
    """The request a task was created with (see :func:`task_metadata`)."""
    meta = task.metadata
    boxes = [Box.from_dict(b) for b in meta.get("boxes", [])]
    return SegmentRequest(tuple(task.prompts), tuple(boxes), SegmentOptions(**meta.get("options", {})))
