"""``s3seg segment clip.mp4 PROMPT...``: track every instance through a video; files, JSON or MOT lines."""

from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3seg.cli._console import console, progress_bar, tell

if TYPE_CHECKING:
    from s3seg.client import Client
    from s3seg.config import Settings
    from s3seg.video import VideoResult


def run(
    path: Path,
    prompts: list[str],
    settings: Settings,
    *,
    out: Path | None,
    as_json: bool,
    mot: bool,
    start: str | None,
    end: str | None,
    every: int,
    max_objects: int | None,
) -> None:
    """Track, then write ``NAME.tracks.json`` and ``NAME.overlay.mp4`` into ``out`` (each atomically: a
    failure at any point leaves neither half-written) and/or print the tracks."""
    from s3seg.client import Client
    from s3seg.errors import UsageError

    if out is not None and out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} exists and is not a folder")
    if settings.api_url:  # a task on the public API, kept there (s3seg results)
        from s3seg.cli import _video_api

        _video_api.run(
            settings,
            path,
            prompts,
            out=out,
            as_json=as_json,
            mot=mot,
            span=(start, end),
            every=every,
            max_objects=max_objects,
        )
        return
    client = Client(settings=settings)
    if client.is_remote:  # the server decodes and checks the clip (no PyAV or torch needed here)
        with _Tracking() as bar:  # fed by the server's progress lines
            video = client.segment_video(
                path, prompts, start=start, end=end, every=every, max_objects=max_objects, on_frame=bar.frame
            )
            bar.run(video)
    else:
        video = _local(client, path, prompts, settings, start=start, end=end, every=every, max_objects=max_objects)
    written: list[Path] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        stem = path.stem
        try:
            written.append(video.write_overlay(out / f"{stem}.overlay.mp4"))
            written.append(video.write_tracks(out / f"{stem}.tracks.json"))
        except BaseException:
            for done in written:
                done.unlink(missing_ok=True)
            raise
    if as_json:
        sys.stdout.write(json.dumps(video.to_tracks()) + "\n")
    elif mot:
        sys.stdout.write("".join(line + "\n" for line in video.mot_lines()))
    else:
        summary(video.name, video.to_tracks(), written)


def _local(
    client: Client,
    path: Path,
    prompts: list[str],
    settings: Settings,
    *,
    start: str | None,
    end: str | None,
    every: int,
    max_objects: int | None,
) -> VideoResult:
    from s3seg._videoio import TruncatedVideoWarning, probe
    from s3seg.video import open_video

    probe(path, max_pixels=settings.max_video_pixels, max_seconds=settings.max_video_seconds)  # before the model
    engine = client.video_engine  # model problems end the command before any video work
    with warnings.catch_warnings(record=True) as caught, _Tracking() as bar:
        warnings.simplefilter("always", TruncatedVideoWarning)
        video = open_video(
            path,
            prompts,
            engine,
            settings,
            start=start,
            end=end,
            every=every,
            max_objects=max_objects,
            on_frame=bar.frame,
        )
        bar.run(video)
    for w in caught:
        if issubclass(w.category, TruncatedVideoWarning):
            tell(("warning", "bold yellow"), f" {w.message}")
    return video


class _Tracking:
    """The progress bar on stderr: frames the model has taken in (the tracker lets each out some frames
    later), frames/s and time left; from a server, as its progress lines arrive."""

    def __enter__(self) -> _Tracking:
        self._bar = progress_bar("tracking", "{task.fields[fps]} frames/s")
        self._bar.__enter__()
        self._task = self._bar.add_task("track", total=None, fps="-")
        self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(None, None, None)

    def frame(self, n: int) -> None:
        self._bar.update(self._task, completed=n, fps=f"{n / max(time.perf_counter() - self._t0, 1e-9):.1f}")

    def run(self, video: VideoResult) -> None:
        """Process every frame of ``video`` (opened with ``on_frame=self.frame``)."""
        self._bar.update(self._task, total=video.expected_frames)
        video.run()


def summary(name: str, doc: dict[str, Any], written: list[Path]) -> None:
    """One line about the tracks document ``doc`` of the video ``name``, and the files written."""
    meta = doc["videos"][0]
    per_prompt: dict[int, int] = {}
    for ann in doc["annotations"]:
        per_prompt[ann["category_id"]] = per_prompt.get(ann["category_id"], 0) + 1
    found = ", ".join(f"{per_prompt.get(c['id'], 0)} {c['name']}" for c in doc["categories"])
    console.print(
        f"{name}: {meta['length']} frame(s) at {meta['width']}×{meta['height']}, track(s): {found}",
        highlight=False,
    )
    for p in written:
        console.print(f"wrote {p}", highlight=False)


def is_video(path: str, *, forced: bool) -> bool:
    from s3seg._videoio import looks_like_video

    p = Path(path)
    return p.is_file() and (forced or looks_like_video(p))
