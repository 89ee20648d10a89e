"""``s3seg segment clip.mp4 PROMPT... --api URL``: the clip uploaded to the public API, tracked there as a task
(kept in the user's results) with a progress bar fed by the task's live events; then the same outputs as a
local run: ``NAME.tracks.json`` and ``NAME.overlay.mp4`` in ``--out``, or the tracks / MOT lines on stdout."""

from __future__ import annotations

import json
import sys
from contextlib import closing
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

from s3seg.cli._console import err_console, progress_bar

if TYPE_CHECKING:
    from s3seg.config import Settings


def run(
    settings: Settings,
    path: Path,
    prompts: list[str],
    *,
    out: Path | None,
    as_json: bool,
    mot: bool,
    span: tuple[str | None, str | None],
    every: int,
    max_objects: int | None,
) -> None:
    """Upload, track as a task (``span``: ``--start``/``--end``), write the files into ``out`` (if given);
    print the tracks (``as_json``), MOT lines (``mot``) or a summary."""
    from s3seg._public import PublicClient
    from s3seg.cli._video import summary
    from s3seg.errors import ServerError, UsageError
    from s3seg.storage._local import write_atomic
    from s3seg.video import mot_lines

    bar = progress_bar("{task.description}")
    threshold = settings.threshold if "threshold" in settings.model_fields_set else None
    with closing(PublicClient.from_settings(settings)) as api, bar:
        step = bar.add_task("uploading", total=None)
        video = api.upload_file(path, kind="video")  # (an animated GIF/WebP given with --video too)
        if video.get("kind") != "video":
            raise UsageError(f"the API took {path.name} for an image", hint="check that the file is a video")
        task = api.start_video(
            video["video_id"],
            prompts,
            start=span[0],
            end=span[1],
            every=every,
            max_objects=max_objects,
            threshold=threshold,
        )
        bar.update(step, description=f"task {task.id[:8]} pending", total=task.frames_total or None)

        def progress(status: str, done: int, total: int) -> None:
            bar.update(step, description=f"task {task.id[:8]} {status}", completed=done, total=total or None)

        ended = api.wait(task.id, progress)
        if ended.status == "error":
            raise ServerError(f"the server could not track {path.name}: {ended.error}", status=422, code="TASK_ERROR")
        doc = json.loads(api.file(ended.id, "result"))
        written: list[Path] = []
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            overlay = api.file(ended.id, "overlay")
            try:
                for target, data in (
                    (out / f"{path.stem}.overlay.mp4", overlay),
                    (out / f"{path.stem}.tracks.json", (json.dumps(doc) + "\n").encode()),
                ):
                    write_atomic(target, partial(_write, data))
                    written.append(target)
            except BaseException:  # neither file half there
                for done in written:
                    done.unlink(missing_ok=True)
                raise
    if as_json:
        sys.stdout.write(json.dumps(doc) + "\n")
    elif mot:
        sys.stdout.write("".join(line + "\n" for line in mot_lines(doc)))
    else:
        summary(path.name, doc, written)
        err_console.print(f"task {ended.id} (s3seg results {ended.id[:8]})", highlight=False)


def _write(data: bytes, f: BinaryIO) -> None:
    f.write(data)
