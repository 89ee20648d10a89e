"""``s3seg segment``: images (files, folders, globs) × text prompts and exemplar boxes → files and a summary."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from s3seg.cli import _options as opt
from s3seg.cli._console import err_console, progress_bar, say, tell

if TYPE_CHECKING:
    from s3seg import Client, Outcome
    from s3seg.types import Box, SegmentationResult


def segment_command(
    args: opt.ImagesAndPrompts,
    prompt: opt.Prompts = None,
    box: opt.Boxes = None,
    out: opt.SegmentOut = None,
    as_json: opt.CocoJson = False,
    model: opt.Model = None,
    device: opt.Device = None,
    dtype: opt.Dtype = None,
    revision: opt.Revision = None,
    threshold: opt.Threshold = None,
    mask_threshold: opt.MaskThreshold = None,
    max_instances: opt.MaxInstances = None,
    nms: opt.Nms = None,
    max_pixels: opt.MaxPixels = None,
    server: opt.Server = None,
    api_key: opt.ApiKey = None,
    api: opt.Api = None,
    save: opt.Save = False,
    project: opt.SaveProject = None,
    video: opt.Video = False,
    start: opt.Start = None,
    end: opt.End = None,
    max_objects: opt.MaxObjects = None,
    mot: opt.Mot = False,
    every: opt.Every = 1,
) -> None:
    """Segment every instance of each prompt in one or more images.

    Writes per image NAME.json (COCO, masks as RLE), NAME.mask.png (pixel value = instance number,
    0 = background) and NAME.overlay.jpg, and prints a summary, or one JSON document with --json.

    Examples:  s3seg segment photo.jpg dog  ·  s3seg segment photos/ -p dog -p cat --out results/
     ·  s3seg segment photo.jpg dog --box 10,20,200,240 --box neg:300,40,380,120
    """
    from s3seg import Client
    from s3seg.config import load_settings
    from s3seg.errors import ImageError, UsageError
    from s3seg.types import box_from_string

    positional = not prompt
    inputs, prompts = (args[:1], args[1:]) if positional else (args, list(prompt or []))
    if not prompts and not box:
        raise UsageError(
            "no prompt given",
            hint='add a text prompt (s3seg segment photo.jpg "dog") or an exemplar box (--box x0,y0,x1,y1)',
        )
    from s3seg.cli import _video

    # the model, where it runs and the score threshold: the same for images and videos
    shared = {
        "model": model,
        "device": device,
        "dtype": dtype,
        "revision": revision,
        "threshold": threshold,
        "server_url": server,
        "api_key": api_key,
        "api_url": api,
    }
    if len(inputs) == 1 and _video.is_video(inputs[0], forced=video):
        if box:
            raise UsageError("exemplar boxes are for images; videos take text prompts")
        if not prompts:
            raise UsageError("no prompt given", hint='s3seg segment clip.mp4 "person"')
        settings = load_settings(**shared, max_objects=max_objects)
        _video.run(
            Path(inputs[0]),
            list(prompts),
            settings,
            out=out if out is not None or as_json or mot else opt.DEFAULT_OUT,
            as_json=as_json,
            mot=mot,
            start=start,
            end=end,
            every=every,
            max_objects=max_objects,
        )
        return
    if video or start or end or every != 1 or max_objects or mot:
        raise UsageError("--video, --start, --end, --every, --max-objects and --mot are for one video input")
    boxes = [box_from_string(b) for b in box or []]
    settings = load_settings(
        **shared, mask_threshold=mask_threshold, max_instances=max_instances, nms_iou=nms, max_pixels=max_pixels
    )
    if project and not save and not settings.api_url:
        raise UsageError("--project needs --save")
    client = Client(settings=settings)
    # Everything the user typed is checked before the model loads (or the server is asked).
    request = client.request(prompts, boxes=boxes)
    paths, unreadable = _expand(inputs, prompts if positional else [])
    _check_boxes_fit(paths, request.boxes)
    if (settings.server_url or settings.api_url) and (model or device or dtype or revision):
        tell(
            "note: on a server the server's model, device and dtype are used; --model, --device, "
            "--dtype and --revision are ignored"
        )
    if out is None and not as_json:
        out = opt.DEFAULT_OUT
    outcomes = list(unreadable)
    for o in unreadable:
        _print_skipped(o)
    with client:
        _prepare(client)
        with _progress(len(paths)) as advance:
            for outcome in client.segment_paths(paths, request, out=out, save=save, project=project):
                outcomes.append(outcome)
                advance(1)
                if as_json:
                    continue
                if outcome.result is not None:
                    _print_row(outcome.result, outcome.task_id)
                else:
                    _print_skipped(outcome)
    results = [o.result for o in outcomes if o.result is not None]
    failures = [(o.image, o.error.message) for o in outcomes if o.error is not None]
    saved = [(o.image, o.task_id) for o in outcomes if o.task_id is not None and o.result is not None]
    if as_json:
        _print_json(results, failures, saved)
    elif results:
        total = sum(len(r) for r in results)
        where = f" → {out}/" if out is not None else ""
        skipped = f"; {len(failures)} skipped" if failures else ""
        say(f"{total} instance(s) in {len(results)} image(s){where}{skipped}")
        if saved:
            say("see the saved results with: s3seg results")
    if not results:
        tell(("error:", "bold red"), f" no image was segmented: {_count(len(failures), 'image')} failed")
        raise typer.Exit(ImageError.exit_code)
    if failures:
        raise typer.Exit(1)


def _expand(inputs: list[str], prompts: list[str]) -> tuple[list[Path], list[Outcome]]:
    """Image paths from the inputs (files, folders, globs), and an outcome for each input that yields none.

    When no input yields an image the run ends here, before any model loads; with ``s3seg segment dog
    photo.jpg`` (prompts given first) the hint says the order."""
    from s3seg import Outcome
    from s3seg.errors import ImageError
    from s3seg.images import IMAGE_SUFFIXES, expand_inputs

    paths: list[Path] = []
    unreadable: list[Outcome] = []
    for item in inputs:  # a missing input is reported like an unreadable one; the others still run
        try:
            paths += [p for p in expand_inputs([item]) if p not in paths]
        except ImageError as e:
            unreadable.append(Outcome(item, error=e))
    if paths:
        return paths, unreadable
    error = unreadable[0].error
    assert error is not None
    swapped = [p for p in prompts if Path(p).exists() or Path(p).suffix.lower() in IMAGE_SUFFIXES]
    if swapped:
        raise ImageError(
            error.message,
            hint=f"the image comes first, then the prompts: s3seg segment {swapped[0]} {' '.join(inputs)}",
        )
    if len(unreadable) > 1:
        raise ImageError(
            "no image to segment: " + "; ".join(o.error.message for o in unreadable if o.error),
            hint=error.hint,
        )
    raise error


def _check_boxes_fit(paths: list[Path], boxes: tuple[Box, ...]) -> None:
    """Refuse a box that lies entirely outside an image, from the image's header (cheap, before the model
    loads). Files that cannot be opened are left to the loader, which reports them."""
    if not boxes:
        return
    from PIL import Image

    for path in paths:
        try:
            with Image.open(path) as image:
                width, height = image.size
        except Exception:
            continue
        for b in boxes:
            b.check_inside(width, height, str(path))


def _prepare(client: Client) -> None:
    """Load the model (or reach the server) with a status line, so a long load or download does not look
    hung; on a terminal a spinner, else one line on stderr."""
    settings = client.settings
    if settings.api_url:
        what = f"connecting to {settings.api_url} …"
    elif settings.server_url:
        what = f"connecting to {settings.server_url} …"
    else:
        what = f"loading model {settings.model} …"
    if err_console.is_terminal:
        with err_console.status(what):
            client.prepare()
    else:
        tell(what)
        client.prepare()


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _print_row(result: SegmentationResult, task_id: str | None) -> None:
    """One line per image, as it finishes: name, size, what each prompt found (best score), ms."""
    found = []
    for p in result.prompts:
        hits = result.for_prompt(p)
        found.append(f"{p} {len(hits)}" + (f" (best {hits[0].score:.2f})" if hits else ""))
    saved = f"  saved as task {task_id}" if task_id else ""
    say(
        (result.image or "-", "bold"),
        f"  {result.width}×{result.height}  {', '.join(found)}  {result.timings.total_ms:.0f} ms{saved}",
    )


def _print_skipped(outcome: Outcome) -> None:
    message = outcome.error.message if outcome.error else "failed"
    kept = f" (recorded as task {outcome.task_id})" if outcome.task_id else ""
    tell(("skipped", "bold red"), f" {outcome.image}: {message}{kept}")


class _progress:
    """A progress bar on stderr for more than one image (hidden when stderr is not a terminal)."""

    def __init__(self, total: int) -> None:
        self._bar = progress_bar("segmenting", show=total > 1)
        self._total = total

    def __enter__(self) -> Any:
        self._bar.start()
        task = self._bar.add_task("segment", total=self._total)
        return lambda n: self._bar.advance(task, n)

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


def _print_json(
    results: list[SegmentationResult], failures: list[tuple[str, str]], saved: list[tuple[str, str]]
) -> None:
    from s3seg.types import to_coco

    doc = to_coco(results)
    doc["errors"] = [{"image": name, "message": message} for name, message in failures]
    if saved:
        doc["tasks"] = [{"image": name, "task_id": task_id} for name, task_id in saved]
    sys.stdout.write(json.dumps(doc) + "\n")
