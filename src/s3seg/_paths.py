"""Many image files through a :class:`s3seg.Client`: lazy decoding in backbone-sized batches, split-and-retry
when a batch fails as a whole, files written atomically, results kept as tasks; one :class:`Outcome` each.

What ``s3seg segment`` does with a folder, for any SDK user (``Client.segment_paths``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from s3seg import render
from s3seg.errors import DeviceError, ImageError, PayloadTooLarge, S3SegError, ServerError, UsageError
from s3seg.images import LoadedImage
from s3seg.types import SegmentationResult, SegmentRequest

if TYPE_CHECKING:
    from s3seg.client import Client
    from s3seg.models import Task
    from s3seg.records import Recorder


@dataclass(frozen=True)
class Outcome:
    """What became of one image: its result, or the error that skipped it.

    Attributes:
        image: the path (or the image's name).
        result: the segmentation, or None when the image was skipped.
        error: why it was skipped (an unreadable file, out of memory, refused by the server).
        task_id: the task that keeps the result, or the reason a skipped image failed (``save=True``, or a
            public API), else None.
    """

    image: str
    result: SegmentationResult | None = None
    error: S3SegError | None = None
    task_id: str | None = None


def segment_paths(
    client: Client,
    paths: Iterable[str | Path],
    request: SegmentRequest,
    *,
    out: Path | None,
    save: bool,
    project: str | None,
    batch_size: int,
) -> Iterator[Outcome]:
    """See :meth:`s3seg.Client.segment_paths`."""
    keeps = client.backend.keeps_results
    if project and not save and not keeps:
        raise UsageError("a project needs save=True", hint="results are filed under a project only when kept")
    writer = _Writer(out) if out is not None else None
    from s3seg.records import Recorder

    with contextlib.ExitStack() as cleanup:
        recorder = cleanup.enter_context(Recorder.from_settings(client.settings)) if save and not keeps else None
        client.prepare()  # model, device, server and key problems end the run before any image work
        prompts = list(request.prompts)
        for batch, unreadable in _batches(client, paths, batch_size):
            for skipped in unreadable:
                if recorder is not None:  # a file that cannot be read is kept as an error task with the reason
                    task = recorder.begin(prompts, image=skipped.image, project=project)
                    reason = skipped.error.message if skipped.error else "unreadable"
                    skipped = Outcome(skipped.image, None, skipped.error, recorder.abort(task, reason).id)
                yield skipped
            tasks = {id(i): recorder.begin(prompts, image=i.name, project=project) for i in batch} if recorder else {}
            for image, outcome in _segment(client, batch, request, project):
                if recorder is not None:
                    outcome = _keep(recorder, tasks.pop(id(image)), image, outcome, writer)
                elif writer is not None and outcome.result is not None:
                    writer.write(image, render.outputs(image.array, outcome.result))
                yield outcome


def _keep(recorder: Recorder, task: Task, image: LoadedImage, outcome: Outcome, writer: _Writer | None) -> Outcome:
    """Record an outcome as its task (done with its files, or error with the reason); write its files."""
    if outcome.result is None:
        failed = recorder.abort(task, outcome.error.message if outcome.error else "segmentation failed")
        return Outcome(outcome.image, None, outcome.error, failed.id)
    files = render.outputs(image.array, outcome.result)
    if writer is not None:
        writer.write(image, files)
    done = recorder.complete(task, image, outcome.result, files)
    return Outcome(outcome.image, outcome.result, None, done.id)


def _segment(
    client: Client, batch: list[LoadedImage], request: SegmentRequest, project: str | None
) -> list[tuple[LoadedImage, Outcome]]:
    """Segment a batch; if it fails as a whole (out of memory, an image the server refuses), retry its
    images one by one so that only the culprit is skipped."""
    try:
        done = client.segment_loaded(batch, request, project=project)
    except S3SegError as e:
        if not _one_image(e):
            raise  # auth, unreachable, server bug: every image would fail the same way
        if len(batch) == 1:
            return [(batch[0], Outcome(batch[0].name or "?", error=e))]
        return [pair for image in batch for pair in _segment(client, [image], request, project)]
    return [
        (i, Outcome(i.name or "?", result, None, task_id)) for i, (result, task_id) in zip(batch, done, strict=True)
    ]


def _one_image(error: S3SegError) -> bool:
    """Whether an error may be one image's fault (so the others are worth another try)."""
    if isinstance(error, (DeviceError, ImageError, PayloadTooLarge)):
        return True
    return isinstance(error, ServerError) and (error.http_status == 503 or error.code == "TASK_ERROR")


def _batches(
    client: Client, paths: Iterable[str | Path], size: int
) -> Iterator[tuple[list[LoadedImage], list[Outcome]]]:
    """Decoded images in batches of ``size``, each with the outcomes of the files that could not be read."""
    batch: list[LoadedImage] = []
    unreadable: list[Outcome] = []
    for path in paths:
        try:
            batch.append(client.load(path))
        except ImageError as e:
            unreadable.append(Outcome(str(path), error=e))
        if len(batch) == size:
            yield batch, unreadable
            batch, unreadable = [], []
    if batch or unreadable:
        yield batch, unreadable


class _Writer:
    """Per-image outputs, written atomically (temp file, then rename) under unique stems."""

    def __init__(self, out: Path) -> None:
        if out.exists() and not out.is_dir():
            raise UsageError(f"{out} exists and is not a folder", hint="give a folder for the results")
        out.mkdir(parents=True, exist_ok=True)
        self.out = out
        self._stems: set[str] = set()

    def write(self, image: LoadedImage, files: render.Outputs) -> None:
        stem = self._unique(Path(image.name or "image").stem)
        _atomic(self.out / f"{stem}.json", files.coco_json)
        _atomic(self.out / f"{stem}.mask.png", files.mask_png)
        _atomic(self.out / f"{stem}.overlay.jpg", files.overlay_jpeg)

    def _unique(self, stem: str) -> str:
        candidate, n = stem, 1
        while candidate in self._stems:
            n += 1
            candidate = f"{stem}_{n}"
        self._stems.add(candidate)
        return candidate


def _atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
