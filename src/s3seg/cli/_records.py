"""``s3seg upload``, ``tasks``, ``results`` and ``config``: stored images, tasks and results."""

from __future__ import annotations

import json
import sys
import time
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3seg.cli import _options as opt
from s3seg.cli._console import console, err_console, say, styled

if TYPE_CHECKING:
    from collections.abc import Callable

    from rich.text import Text

    from s3seg.config import Settings
    from s3seg.models import Task

_STATUS_STYLE = {"pending": "yellow", "processing": "cyan", "done": "green", "error": "red"}


def upload_command(
    files: opt.Files, prefix: opt.Prefix = "uploads", expires: opt.Expires = 3600, as_json: opt.Json = False
) -> None:
    """Store images (local folder, or R2/S3 when configured); print each one's key and URL."""
    import uuid

    from rich.progress import BarColumn, DownloadColumn, Progress, TaskID, TextColumn, TransferSpeedColumn

    from s3seg._public import PublicClient
    from s3seg.config import load_settings
    from s3seg.errors import ImageError
    from s3seg.storage import guess_content_type, storage_from_settings

    for f in files:  # every file is checked before any is stored
        if not f.is_file():
            raise ImageError(f"not a file: {f}", hint="pass image files")
        _check_image(f)
    settings = load_settings()
    rows = []
    if settings.api_url:  # a public API: the server stores them for the signed-in user
        with closing(PublicClient.from_settings(settings)) as api:
            for f in files:
                info = api.upload(f.read_bytes(), f.name)
                rows.append({"file": str(f), "image_id": info["image_id"], "url": info["image_url"]})
        _print_uploads(rows, as_json)
        return
    bar_columns = (TextColumn("{task.description}", markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with (
        closing(storage_from_settings(settings)) as storage,
        Progress(*bar_columns, console=err_console, transient=True, disable=not err_console.is_terminal) as progress,
    ):
        for f in files:
            bar = progress.add_task(f.name, total=f.stat().st_size)

            def advance(n: int, bar: TaskID = bar) -> None:
                progress.advance(bar, n)

            key = storage.put_file(
                f"{prefix.strip('/')}/{uuid.uuid4().hex[:12]}/{f.name}", f, guess_content_type(f.name), advance
            )
            rows.append({"file": str(f), "key": key, "url": storage.url(key, expires)})
    _print_uploads(rows, as_json)


def _check_image(path: Path) -> None:
    """Refuse a file that is not an image PIL can open (its header only: cheap for big files)."""
    from PIL import Image, UnidentifiedImageError

    from s3seg.errors import ImageError

    try:
        with Image.open(path):
            pass
    except (UnidentifiedImageError, OSError) as e:
        raise ImageError(f"{path} is not an image", hint="upload stores image files (JPEG, PNG, WebP, …)") from e


def _print_uploads(rows: list[dict[str, str]], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(rows) + "\n")
        return
    for row in rows:
        name = row.get("key") or row["image_id"]
        say(f"{row['file']} → ", (name, "bold"))
        say(f"  {row['url']}")


def tasks_command(
    task_id: opt.TaskId = None, watch: opt.Watch = False, limit: opt.RecentLimit = 20, as_json: opt.Json = False
) -> None:
    """Recent segmentation tasks and their status (pending → processing → done | error)."""
    from s3seg.config import load_settings
    from s3seg.records import resolve_id, results_from_settings

    with closing(results_from_settings(load_settings())) as records:
        task_id = resolve_id(records, task_id) if task_id else None

        def fetch() -> list[Task]:
            return [records.get(task_id)] if task_id else records.list(limit=limit)

        tasks = fetch()
        if watch and task_id:  # one task: its live progress (events on an API)
            with console.status(f"task {task_id[:8]}") as status:

                def progress(state: str, done: int, total: int) -> None:
                    steps = f" {done}/{total}" + (" frames" if total > 1 else "") if total else ""
                    status.update(f"task {task_id[:8]} {state}{steps}")

                tasks = [records.watch(task_id, progress)]
        elif watch:
            with console.status("waiting for tasks to finish") as status:
                while any(t.status in ("pending", "processing") for t in tasks):
                    status.update(f"{sum(t.status in ('pending', 'processing') for t in tasks)} task(s) running")
                    time.sleep(1.0)
                    tasks = fetch()
    if as_json:
        sys.stdout.write(json.dumps([t.to_dict() for t in tasks] if not task_id else tasks[0].to_dict()) + "\n")
    elif task_id:
        _show(tasks[0], None)
    else:
        _table(tasks, f"{len(tasks)} most recent task(s)")


def results_command(
    task_id: opt.TaskId = None,
    project: opt.Project = None,
    status: opt.Status = None,
    limit: opt.PageLimit = 20,
    offset: opt.Offset = 0,
    download: opt.Download = None,
    as_json: opt.Json = False,
) -> None:
    """Stored segmentation results: a page of them, or one with time-limited URLs (and --download)."""
    from s3seg.config import load_settings
    from s3seg.errors import UsageError
    from s3seg.models import STATUSES
    from s3seg.records import resolve_id, results_from_settings

    if task_id is None and download is not None:
        raise UsageError("--download needs a result ID", hint="s3seg results ID --download DIR")
    if status is not None and status not in STATUSES:
        raise UsageError(f"unknown status {status!r}", hint=f"one of {', '.join(STATUSES)}")
    with closing(results_from_settings(load_settings())) as records:
        task_id = resolve_id(records, task_id) if task_id else None
        if task_id is None:
            tasks = records.list(project=project, status=status, limit=limit, offset=offset)
        else:
            task, urls = records.result(task_id)
            saved = records.download(task, download) if download is not None else []
    if task_id is None:
        if as_json:
            sys.stdout.write(json.dumps([t.to_dict() for t in tasks]) + "\n")
        else:
            _table(tasks, f"results {offset + 1}–{offset + len(tasks)}" if tasks else "no results")
        return
    if as_json:
        sys.stdout.write(json.dumps({**task.to_dict(), "urls": urls, "downloaded": [str(p) for p in saved]}) + "\n")
        return
    _show(task, urls)
    for p in saved:
        console.print(f"saved {p}", highlight=False)


def config_command(as_json: opt.Json = False) -> None:
    """The settings in use (secrets masked) and which storage and results backends they select."""
    from s3seg.config import load_settings
    from s3seg.store import store_from_settings

    settings = load_settings()
    values: dict[str, Any] = json.loads(settings.model_dump_json())  # SecretStr dumps as "**********"
    backends = {
        "storage": _backend(lambda: _storage_name(settings)),
        "results": _backend(lambda: store_from_settings(settings).name),
        "inference": f"API {settings.api_url}"
        if settings.api_url
        else f"server {settings.server_url}"
        if settings.server_url
        else "local",
    }
    if as_json:
        sys.stdout.write(json.dumps({"backends": backends, "settings": values}) + "\n")
        return
    from rich.table import Table

    table = Table(show_edge=False, header_style="bold")
    table.add_column("setting")
    table.add_column("value", overflow="fold")
    for name, value in backends.items():
        table.add_row(styled((name, "bold")), styled((value, "bold")))
    for name, value in values.items():
        table.add_row(name, "" if value is None else str(value))
    console.print(table)


def _backend(name: Callable[[], str]) -> str:
    """A backend's name, or why the settings do not give a working one (config shows, never fails)."""
    from s3seg.errors import S3SegError

    try:
        return name()
    except S3SegError as e:
        return f"misconfigured: {e}"


def _storage_name(settings: Settings) -> str:
    from s3seg.storage import storage_from_settings

    with closing(storage_from_settings(settings)) as storage:
        return storage.name


def _table(tasks: list[Task], title: str) -> None:
    from rich.table import Table

    wide = console.width >= 110  # ids are never folded (they are typed back): drop detail columns instead
    table = Table(title=title, show_edge=False, header_style="bold", title_justify="left")
    table.add_column("id", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("prompt", overflow="fold", min_width=8)
    if wide:
        table.add_column("project", overflow="fold")
        table.add_column("found", justify="right")
    table.add_column("created", no_wrap=True)
    for t in tasks:
        cells: list[str | Text] = [t.id, styled((t.status, _STATUS_STYLE[t.status])), t.text_prompt]
        if wide:
            cells += [t.project or "", str(t.metadata.get("instances", ""))]
        table.add_row(*cells, t.created_at.strftime("%Y-%m-%d %H:%M" if wide else "%m-%d %H:%M"))
    console.print(table)


def _show(task: Task, urls: dict[str, str] | None) -> None:
    say(
        (task.id, "bold"),
        "  ",
        (task.status, _STATUS_STYLE[task.status]),
        f"  prompt: {task.text_prompt}{'  project: ' + task.project if task.project else ''}",
    )
    if task.metadata.get("file_name"):
        console.print(f"  file: {task.metadata['file_name']}", highlight=False)
    if task.error:
        console.print(f"  error: {task.error}", highlight=False)
    counts = task.metadata.get("counts")
    if counts:
        console.print("  found: " + ", ".join(f"{p} {n}" for p, n in counts.items()), highlight=False)
    for name, url in (urls or {}).items():
        console.print(f"  {name}: {url}", highlight=False, soft_wrap=True)
