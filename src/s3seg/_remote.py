"""Segmenting on an ``s3seg serve`` server over HTTP: the same results as local inference.

Images travel as their original encoded bytes (or lossless PNG for in-memory images), so the server
decodes exactly what a local run decodes. Connection failures are retried; 503 (busy) is retried after
its Retry-After; every error becomes one of s3seg's own errors with a hint.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3seg import _rle
from s3seg._http import HTTP, Hints, Waits, in_flight, predict
from s3seg.errors import ServerError, UsageError, VideoError, error_from_response
from s3seg.images import LoadedImage
from s3seg.types import Instance, SegmentationResult, SegmentRequest

if TYPE_CHECKING:
    from s3seg.config import Settings
    from s3seg.video import TrackedFrame, VideoOptions, VideoResult

NDJSON = "application/x-ndjson"

_BUSY = Waits(statuses=(503,), retries=3, max_wait_s=10.0)
_HINTS = Hints(
    timeout="raise S3SEG_REQUEST_TIMEOUT_S, or send smaller images",
    unreachable="check --server / S3SEG_SERVER_URL and that `s3seg serve` runs there",
)


class RemoteBackend:
    """The GPU server as a :class:`s3seg.client.Backend` (it keeps nothing: no task ids)."""

    keeps_results = False

    def __init__(self, url: str, *, api_key: str | None, timeout_s: float) -> None:
        if not url.startswith(("http://", "https://")):
            raise UsageError(f"server URL must start with http:// or https://, got {url!r}")
        headers = {"X-API-Key": api_key} if api_key else {}
        self.url = url.rstrip("/")
        self.http = HTTP(
            self.url,
            where=f"the s3seg server at {self.url}",
            hints=_HINTS,
            timeout_s=timeout_s,
            headers=lambda: headers,
            waits=_BUSY,
        )

    def close(self) -> None:
        self.http.close()

    def check(self) -> dict[str, Any]:
        """The server's model info (also proves the URL and the key work)."""
        data: dict[str, Any] = self.http.call("GET", "/api/v1/model/info")
        return data

    def segment(
        self, images: Sequence[LoadedImage], request: SegmentRequest, *, project: str | None = None
    ) -> list[tuple[SegmentationResult, str | None]]:
        """One request per image, several in flight; the server batches concurrent requests onto its device."""

        return in_flight(lambda image: (predict(self.http, image, request), None), images)

    def segment_video(
        self, path: Path, prompts: Sequence[str], options: VideoOptions, settings: Settings
    ) -> VideoResult:
        """The clip through ``POST /api/v1/predict/video``, read as NDJSON (see :func:`remote_video`)."""
        return remote_video(self.http, path, prompts, options, settings)


def remote_video(
    http: HTTP, path: Path, prompts: Sequence[str], options: VideoOptions, settings: Settings
) -> VideoResult:
    """The clip through ``POST /api/v1/predict/video`` of the server ``http`` talks to, read as NDJSON: the
    server's header checks fail here; the frames come lazily, each as the server finishes it (the same frames
    as a local run)."""
    from s3seg.video import VideoResult, _position

    if not path.is_file():
        raise VideoError(f"{path}: no such file")
    chosen = {name: str(value) for name, value in options.items() if value is not None and name != "on_frame"}
    lines = _lines(http, path, {"prompts": list(prompts), **chosen})
    head = next(lines, None)  # sends the clip: the server answers once it has read it all
    if head is None or head.get("type") != "start":
        lines.close()
        raise ServerError(f"{http.where} answered no video stream", hint="is it an s3seg server?")
    texts = tuple(head["prompts"])
    return VideoResult(
        _frames(http, lines, texts, head.get("model"), options.get("on_frame")),
        name=str(head["name"]),
        source=path,
        prompts=texts,
        fps=float(head["fps"]),
        every=int(head["every"]),
        selection=(_position(options.get("start")), _position(options.get("end"))),
        model=head.get("model"),
        max_pixels=settings.max_video_pixels,
        max_seconds=settings.max_video_seconds,
        expected_frames=head.get("frames_total"),
    )


def _lines(http: HTTP, path: Path, fields: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
    """Upload the clip (streamed from the file) and yield the answer's JSON lines as they come; an
    ``error`` line is raised as its error. The answer stays open until this generator ends."""
    clip = path.open("rb")
    files = {"video": (path.name, clip, "application/octet-stream")}
    try:
        with http.stream(
            "POST", "/api/v1/predict/video", data=fields, files=files, headers={"Accept": NDJSON}
        ) as response:
            for text in response.iter_lines():
                if not text.strip():
                    continue
                line: dict[str, Any] = json.loads(text)
                if line.get("type") == "error":
                    error = line.get("error") or {}
                    raise error_from_response(
                        int(line.get("status") or 500),
                        str(error.get("code", "SERVER_ERROR")),
                        str(error.get("message", "the video failed")),
                        error.get("hint"),
                        where=http.where,
                    )
                yield line
    finally:
        clip.close()


def _frames(
    http: HTTP,
    lines: Iterator[dict[str, Any]],
    prompts: tuple[str, ...],
    model: str | None,
    on_frame: Callable[[int], None] | None,
) -> Iterator[TrackedFrame]:
    from s3seg.video import TrackedFrame

    tracks: dict[int, list[Any]] = {}  # track_id → [category_id, score], as the tracks document has them
    count = 0
    for line in lines:
        if line.get("type") == "done":
            _check_done(http, line, count, tracks)
            return
        if line.get("type") == "progress":  # the model took in a frame; it comes out some frames later
            if on_frame is not None:
                on_frame(int(line["frames_done"]))
            continue
        width, height = int(line["width"]), int(line["height"])
        found = line["instances"]
        instances = tuple(
            Instance(
                prompt=i["prompt"],
                score=float(i["score"]),
                box=(float(i["box"][0]), float(i["box"][1]), float(i["box"][2]), float(i["box"][3])),
                mask=_rle.decode(i["segmentation"], height, width),
            )
            for i in found
        )
        result = SegmentationResult(width=width, height=height, prompts=prompts, instances=instances, model=model)
        for i in found:  # the first sighting names a track's category and score (as VideoResult's)
            tracks.setdefault(int(i["track_id"]), [prompts.index(i["prompt"]) + 1, float(i["score"])])
        count += 1
        yield TrackedFrame(int(line["frame"]), float(line["time"]), result, tuple(int(i["track_id"]) for i in found))
    raise ServerError(f"{http.where} ended the video stream early", hint="see the server's log")


def _check_done(http: HTTP, line: dict[str, Any], count: int, tracks: dict[int, list[Any]]) -> None:
    """The ``done`` line carries the tracks document less the per-frame fields the frame lines carried: the
    document rebuilt from the frame lines must agree with it (every frame and every track arrived)."""
    doc = line.get("tracks") or {}
    try:
        length = int(doc["videos"][0]["length"])
        summary = {int(a["track_id"]): [int(a["category_id"]), float(a["score"])] for a in doc["annotations"]}
    except (KeyError, IndexError, TypeError, ValueError) as e:
        raise ServerError(
            f"{http.where} ended the video stream with a malformed done line",
            hint="is it an s3seg server of this version?",
        ) from e
    if (length, summary) != (count, tracks):
        raise ServerError(
            f"{http.where} sent {count} frame(s) and {len(tracks)} track(s); its done line says {length} and "
            f"{len(summary)} (or other scores)",
            hint="the stream lost lines: see the server's log",
        )
