"""Keeping segmentations: task rows in the results store, images and masks in object storage; and reading
them back (:func:`results_from_settings`: this machine's store, or the signed-in user's on a public API).

``Recorder.begin`` creates the task (``pending``) and marks it ``processing``; ``complete`` uploads the
source image, the mask PNG, the overlay and the COCO JSON, then marks it ``done`` with labels, scores
and timings; any failure marks it ``error`` with the reason and removes what was uploaded, so nothing
half-written claims success.
"""

from __future__ import annotations

import builtins
import contextlib
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from s3seg import render
from s3seg.errors import UsageError
from s3seg.images import LoadedImage
from s3seg.types import SegmentationResult

if TYPE_CHECKING:
    from s3seg._public import PublicClient
    from s3seg.config import Settings
    from s3seg.models import Status, Task
    from s3seg.storage import Storage
    from s3seg.store import Store


class Recorder:
    def __init__(self, storage: Storage, store: Store) -> None:
        self.storage = storage
        self.store = store

    @classmethod
    def from_settings(cls, settings: Settings) -> Recorder:
        from s3seg.storage import storage_from_settings
        from s3seg.store import store_from_settings

        return cls(storage_from_settings(settings), store_from_settings(settings))

    def close(self) -> None:
        """Close the storage and the store (a PostgreSQL store's connection pool)."""
        try:
            self.storage.close()
        finally:
            self.store.close()

    def __enter__(self) -> Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def begin(self, prompts: list[str], *, image: str | None, project: str | None = None) -> Task:
        task = self.store.create_task(prompts, project=project, metadata={"image": image})
        return self.store.start(task.id)

    def complete(
        self, task: Task, image: LoadedImage, result: SegmentationResult, files: render.Outputs | None = None
    ) -> Task:
        """Upload everything and mark the task done (``files``: already rendered outputs, if any)."""
        prefix = f"results/{task.id}"
        written: list[str] = []
        try:
            files = files or render.outputs(image.array, result)
            suffix = Path(image.name or "").suffix.lower() if image.encoded is not None else ".png"
            source = image.file_bytes()
            for name, data in (
                (f"source{suffix or '.png'}", source),
                ("mask.png", files.mask_png),
                ("overlay.jpg", files.overlay_jpeg),
                ("result.json", files.coco_json),
            ):
                written.append(self.storage.put(f"{prefix}/{name}", data))
            return self.store.finish(
                task.id,
                source=written[0],
                mask=written[1],
                overlay=written[2],
                labels=_labels(result),
                metadata=_metadata(result, written[3]),
            )
        except Exception as e:
            for key in written:  # best effort: the row says error either way, and the first error matters
                with contextlib.suppress(Exception):
                    self.storage.delete(key)
            self.abort(task, f"saving failed: {e}")
            raise

    def abort(self, task: Task, reason: str) -> Task:
        return self.store.fail(task.id, reason)


def result_files(task: Task) -> dict[str, str]:
    """The storage keys of a task's files by name: ``source``, ``mask``, ``overlay``, ``result`` (the
    COCO JSON, whose key the task's metadata keeps under ``coco``; a video task's tracks JSON, under
    ``tracks``; a video has no mask) and ``poster`` (a video task's poster JPEG, under ``poster``; none for an
    image or a video task done before posters were kept); only those it has."""
    keys = {
        "source": task.source_image_url,
        "mask": task.mask_image_url,
        "overlay": task.overlay_image_url,
        "result": task.metadata.get("coco") or task.metadata.get("tracks"),
        "poster": task.metadata.get("poster"),
    }
    return {name: str(key) for name, key in keys.items() if key}


def _labels(result: SegmentationResult) -> list[dict[str, Any]]:
    return [
        {"label": i.prompt, "score": round(i.score, 6), "box": [round(c, 2) for c in i.box], "area": i.area}
        for i in result.instances
    ]


def _metadata(result: SegmentationResult, coco_key: str) -> dict[str, Any]:
    return {
        "width": result.width,
        "height": result.height,
        "model": result.model,
        "instances": len(result),
        "counts": {p: len(result.for_prompt(p)) for p in result.prompts},
        "timings": result.timings.to_dict(),
        "coco": coco_key,
    }


class Results(Protocol):
    """Stored tasks and results, to list, show and download (``s3seg tasks`` and ``s3seg results``)."""

    def get(self, task_id: str, wait_s: float = 0) -> Task: ...

    def list(
        self, *, project: str | None = None, status: str | None = None, limit: int = 20, offset: int = 0
    ) -> builtins.list[Task]: ...

    def watch(self, task_id: str, on_progress: Callable[[str, int, int], None]) -> Task:
        """Wait for a task to end, telling ``on_progress(status, frames_done, frames_total)`` each change."""
        ...

    def result(self, task_id: str) -> tuple[Task, dict[str, str]]:
        """A task and the URLs of its files by name (source, mask, overlay, result)."""
        ...

    def download(self, task: Task, folder: Path) -> builtins.list[Path]:
        """Save a done task's files in ``folder``; the paths written."""
        ...

    def close(self) -> None: ...


def resolve_id(records: Results, given: str) -> str:
    """The full id of the task ``given`` names: the id itself, or a unique prefix of one (as git and docker
    accept: ``s3seg results 0d9aca61``).

    Raises:
        NotFound: no task has this id or an id starting with it.
        UsageError: the prefix starts more than one task's id.
    """
    from s3seg.errors import NotFound, UsageError

    try:
        return records.get(given).id
    except NotFound as e:
        missing = e
    matches: builtins.list[str] = []
    offset, page_size = 0, 100
    while len(matches) < 2:
        page = records.list(limit=page_size, offset=offset)
        matches += [t.id for t in page if t.id.startswith(given)]
        if len(page) < page_size:
            break
        offset += page_size
    if len(matches) == 1:
        return matches[0]
    if matches:
        raise UsageError(
            f"{given} is ambiguous: more than one task id starts with it ({', '.join(matches)}, …)",
            hint="type more of the id",
        )
    if missing.hint is None:
        missing.hint = "see the ids with: s3seg tasks"
    raise missing


def results_from_settings(settings: Settings) -> Results:
    """The signed-in user's results on the public API when ``api_url`` is set, else this machine's."""
    if settings.api_url:
        from s3seg._public import PublicClient

        return ApiResults(PublicClient.from_settings(settings))
    return LocalResults(settings)


class LocalResults:
    """Tasks and results in this machine's store and storage (SQLite / Supabase, local folder / R2)."""

    def __init__(self, settings: Settings) -> None:
        from s3seg.store import store_from_settings

        self.settings = settings
        self.store = store_from_settings(settings)

    def close(self) -> None:
        self.store.close()

    def get(self, task_id: str, wait_s: float = 0) -> Task:
        return self.store.get(task_id)

    def list(
        self, *, project: str | None = None, status: str | None = None, limit: int = 20, offset: int = 0
    ) -> builtins.list[Task]:
        wanted = cast("Status | None", status)  # checked by the store
        return self.store.list(project=project, status=wanted, limit=limit, offset=offset)

    def watch(self, task_id: str, on_progress: Callable[[str, int, int], None]) -> Task:
        seen = None
        while True:
            task = self.store.get(task_id)
            if (task.status, task.frames_done, task.frames_total) != seen:
                seen = (task.status, task.frames_done, task.frames_total)
                on_progress(*seen)
            if task.status in ("done", "error"):
                return task
            time.sleep(0.5)

    def result(self, task_id: str) -> tuple[Task, dict[str, str]]:
        from s3seg.storage import storage_from_settings

        task = self.store.get(task_id)
        with closing(storage_from_settings(self.settings)) as storage:
            return task, {name: storage.url(key) for name, key in result_files(task).items()}

    def download(self, task: Task, folder: Path) -> builtins.list[Path]:
        from s3seg.storage import storage_from_settings

        folder = _download_folder(task, folder)
        with closing(storage_from_settings(self.settings)) as storage:
            return [storage.download(key, folder / key.rsplit("/", 1)[-1]) for key in result_files(task).values()]


class ApiResults:
    """Tasks and results of the signed-in user on a public s3seg API."""

    def __init__(self, api: PublicClient) -> None:
        self.api = api

    def close(self) -> None:
        self.api.close()

    def get(self, task_id: str, wait_s: float = 0) -> Task:
        return self.api.task(task_id, wait_s)

    def list(
        self, *, project: str | None = None, status: str | None = None, limit: int = 20, offset: int = 0
    ) -> builtins.list[Task]:
        return self.api.results(project=project, status=status, limit=limit, offset=offset)

    def watch(self, task_id: str, on_progress: Callable[[str, int, int], None]) -> Task:
        return self.api.wait(task_id, on_progress)  # live events, or the long-poll

    def result(self, task_id: str) -> tuple[Task, dict[str, str]]:
        return self.api.result(task_id)

    def download(self, task: Task, folder: Path) -> builtins.list[Path]:
        folder = _download_folder(task, folder)
        task, urls = self.api.result(task.id)  # the files this task has (a poster only on newer videos)
        source = Path((task.source_image_url or "").split("?", 1)[0]).suffix
        names = {"source": f"source{source}", "mask": "mask.png", "overlay": "overlay.jpg", "result": "result.json"}
        if task.metadata.get("kind") == "video":  # no mask; the overlay is a clip, the result its tracks
            names |= {"overlay": "overlay.mp4", "result": "tracks.json", "poster": "poster.jpg"}
        saved = []
        for name, file_name in names.items():
            if name in urls:
                (folder / file_name).write_bytes(self.api.file(task.id, name))
                saved.append(folder / file_name)
        return saved


def _download_folder(task: Task, folder: Path) -> Path:
    if task.status != "done":
        raise UsageError(f"task {task.id} is {task.status}; only done results can be downloaded")
    folder.mkdir(parents=True, exist_ok=True)
    return folder
