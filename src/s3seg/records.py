"""Keeping segmentations: task rows in the results store, images and masks in object storage.

``Recorder.begin`` creates the task (``pending``) and marks it ``processing``; ``complete`` uploads the
source image, the mask PNG, the overlay and the COCO JSON, then marks it ``done`` with labels, scores
and timings; any failure marks it ``error`` with the reason and removes what was uploaded, so nothing
half-written claims success.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3seg import render
from s3seg.images import LoadedImage
from s3seg.types import SegmentationResult

if TYPE_CHECKING:
    from s3seg.config import Settings
    from s3seg.storage import Storage
    from s3seg.store import Store, Task


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
            source = image.encoded if image.encoded is not None else render.encode_png(image.array)
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
    """The storage keys of a task's files by name: ``source``, ``mask``, ``overlay`` and ``result`` (the
    COCO JSON, whose key the task's metadata keeps under ``coco``); only those it has."""
    keys = {
        "source": task.source_image_url,
        "mask": task.mask_image_url,
        "overlay": task.overlay_image_url,
        "result": task.metadata.get("coco"),
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
