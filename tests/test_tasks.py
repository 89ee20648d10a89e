"""The task runner's heartbeat (s3seg.server._tasks): a task that runs longer than ``task_timeout_s`` is not
requeued while its worker is alive; one whose worker died is. The tiny model through the server's own
batcher, a real SQLite store and a local storage folder; the runner's inference is the in-process one with
a pause in front, standing for a long job."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from s3seg.engine import Sam3Engine
from s3seg.images import LoadedImage
from s3seg.server._app import _in_process
from s3seg.server._batcher import Batcher
from s3seg.server._memory import MemoryBudget
from s3seg.server._tasks import TaskLimits, TaskRunner
from s3seg.storage._local import LocalStorage
from s3seg.store import Task
from s3seg.store._sqlite import SQLiteStore
from s3seg.types import SegmentationResult, SegmentRequest

TIMEOUT_S = 1.0
LIMITS = TaskLimits(
    timeout_s=TIMEOUT_S,
    attempts=3,
    max_pixels=10**8,
    max_fetch_bytes=10**7,
    url_timeout_s=5,
    allow_private_urls=False,
)


async def run_until_ended(runner: TaskRunner, store: SQLiteStore, task_id: str, limit_s: float = 60) -> Task:
    await runner.start()
    try:
        deadline = time.monotonic() + limit_s
        while (task := store.get(task_id)).status in ("pending", "processing") and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        return task
    finally:
        await runner.stop()


def test_a_live_task_past_the_timeout_is_not_requeued_a_dead_one_is(
    engine: Sam3Engine, photo_path: Path, tmp_path: Path
) -> None:
    storage = LocalStorage(tmp_path / "files")
    storage.put("uploads/local/photo.jpg", photo_path.read_bytes())
    batcher = Batcher(engine, max_batch=1, max_queue=4)
    real = _in_process(batcher)
    seen: list[int] = []

    async def slow(image: LoadedImage, request: SegmentRequest) -> SegmentationResult:
        await asyncio.sleep(4 * TIMEOUT_S)  # a job running well past task_timeout_s, its worker alive
        seen.append(store.get(task.id).metadata["attempts"])
        return await real(image, request)

    meta = {"image": "photo.jpg", "image_key": "uploads/local/photo.jpg", "options": {"threshold": 0.0}}
    with SQLiteStore(tmp_path / "r.db") as store:
        task = store.create_task(["person"], metadata=meta, queue=True, frames_total=1)
        runner = TaskRunner(store, storage, slow, LIMITS, MemoryBudget(1 << 30, wait_s=1), workers=1, sweep_s=0.2)
        assert runner.heartbeat_s < TIMEOUT_S
        ended = asyncio.run(run_until_ended(runner, store, task.id))
        assert (ended.status, ended.metadata["attempts"], seen) == ("done", 1, [1]), ended
        assert (ended.frames_done, ended.frames_total) == (1, 1)

        # a worker that took a task and died (no heartbeat): requeued after the timeout and run again
        dead = store.create_task(["person"], metadata=meta, queue=True, frames_total=1)
        store.start(dead.id)
        runner = TaskRunner(store, storage, real, LIMITS, MemoryBudget(1 << 30, wait_s=1), workers=1, sweep_s=0.2)
        ended = asyncio.run(run_until_ended(runner, store, dead.id))
        assert (ended.status, ended.metadata["attempts"]) == ("done", 2), ended
    batcher.close()
