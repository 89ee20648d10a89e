"""The Python entry point: :class:`Client` keeps SAM3 loaded for many calls; :func:`segment` is the one-liner.

Where the images are segmented is a :class:`Backend`: this process (:class:`LocalBackend`), an
``s3seg serve`` GPU server (``s3seg._remote.RemoteBackend``) or a public s3seg API as the signed-in user
(``s3seg._public.PublicClient``, which keeps every image as a task).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from s3seg.config import EngineConfig, Settings, load_settings
from s3seg.errors import UsageError
from s3seg.images import ImageInput, LoadedImage, load_image
from s3seg.types import Box, Overrides, SegmentationResult, SegmentOptions, SegmentRequest

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from s3seg._paths import Outcome
    from s3seg.engine import Sam3Engine
    from s3seg.engine._video import Sam3VideoEngine
    from s3seg.video import VideoOptions, VideoResult

_OPTIONS = frozenset({"threshold", "mask_threshold", "max_instances", "nms_iou"})

# A result, and the id of the task that keeps it when the backend keeps results (else None).
Segmented = tuple[SegmentationResult, str | None]


class Backend(Protocol):
    """Where images are segmented."""

    @property
    def keeps_results(self) -> bool:
        """Whether every image segmented is kept as a task (a public API)."""
        ...

    def check(self) -> object:
        """Load the model, or check that the server answers and accepts the key or the sign-in."""
        ...

    def segment(
        self, images: Sequence[LoadedImage], request: SegmentRequest, *, project: str | None = None
    ) -> list[Segmented]: ...

    def close(self) -> None: ...


@runtime_checkable
class VideoBackend(Protocol):
    """A backend that also tracks videos (an ``s3seg serve`` GPU server)."""

    def segment_video(
        self, path: Path, prompts: Sequence[str], options: VideoOptions, settings: Settings
    ) -> VideoResult: ...


class LocalBackend:
    """SAM3 in this process, loaded on first use and kept (thread-safe)."""

    keeps_results = False

    def __init__(self, config: EngineConfig, engine: Sam3Engine | None = None) -> None:
        self.config = config
        self._engine = engine
        self._lock = threading.Lock()

    @property
    def engine(self) -> Sam3Engine:
        with self._lock:
            if self._engine is None:
                from s3seg.engine import Sam3Engine

                self._engine = Sam3Engine.from_config(self.config)
            return self._engine

    def check(self) -> object:
        return self.engine

    def segment(
        self, images: Sequence[LoadedImage], request: SegmentRequest, *, project: str | None = None
    ) -> list[Segmented]:
        arrays, names = [i.array for i in images], [i.name for i in images]
        results = self.engine.segment(arrays, request.prompts, request.boxes, names=names, options=request.options)
        return [(r, None) for r in results]

    def close(self) -> None:
        """Nothing to close: the model stays loaded."""


class Client:
    """Segment images with SAM3 from Python, in this process or on an ``s3seg serve`` server.

    >>> client = s3seg.Client(model="facebook/sam3")              # doctest: +SKIP
    >>> result = client.segment("photo.jpg", ["dog", "cat"])      # doctest: +SKIP
    >>> result.masks.shape, result.boxes, result.scores, result.labels  # doctest: +SKIP
    >>> remote = s3seg.Client(server_url="http://gpu-box:8000", api_key="...")  # doctest: +SKIP
    >>> signed_in = s3seg.Client(api_url="https://api.example.com")  # after `s3seg login`  # doctest: +SKIP

    Args:
        model: Hub id, ``save_pretrained`` directory or official ``sam3.pt`` (default from settings).
        device: ``auto``, ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` (default from settings).
        server_url: segment on this server instead of locally (also ``S3SEG_SERVER_URL``).
        api_key: the server's key (also ``S3SEG_API_KEY``).
        api_url: a public s3seg API to use as the signed-in user (``s3seg login``; also ``S3SEG_API_URL``):
            each image is uploaded, segmented as a task and kept there (see ``s3seg results``).
        settings: every other knob; defaults read the environment (``S3SEG_*``).
        engine: an already loaded engine to use instead of loading one.
        backend: where to segment, instead of what the settings say (see :class:`Backend`).

    Local mode loads the model on first use and keeps it; the remote modes send each image to the server
    and return the same result objects.
    """

    def __init__(
        self,
        model: str | None = None,
        *,
        device: str | None = None,
        server_url: str | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        settings: Settings | None = None,
        engine: Sam3Engine | None = None,
        backend: Backend | None = None,
    ) -> None:
        self.settings = load_settings(
            settings, model=model, device=device, server_url=server_url, api_key=api_key, api_url=api_url
        )
        # The options set on purpose (settings given, or S3SEG_* in the environment): sent to a server, whose
        # own defaults apply to the rest.
        chosen = settings.model_fields_set if settings is not None else self.settings.model_fields_set
        self._explicit = frozenset(chosen & _OPTIONS)
        self._engine = engine
        self._backend = backend
        self._video_engine: Sam3VideoEngine | None = None
        self._saved: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    @property
    def backend(self) -> Backend:
        """Where this client segments (made from the settings on first use)."""
        with self._lock:
            if self._backend is None:
                self._backend = _backend_for(self.settings, self._engine)
            return self._backend

    @property
    def is_remote(self) -> bool:
        return not isinstance(self.backend, LocalBackend)

    @property
    def engine(self) -> Sam3Engine:
        """The local engine (loaded on first access)."""
        backend = self.backend
        if not isinstance(backend, LocalBackend):
            raise UsageError("this client segments on a server; it has no local engine")
        return backend.engine

    def prepare(self) -> None:
        """Load the model now, or check that the server answers and accepts the key."""
        self.backend.check()

    def run(
        self, images: Sequence[LoadedImage], request: SegmentRequest, *, project: str | None = None
    ) -> list[SegmentationResult]:
        """Decoded images × one request, locally or on the server; one result per image. ``project`` files
        the results under a project on a public API (elsewhere nothing is kept)."""
        return [result for result, _ in self.segment_loaded(images, request, project=project)]

    def segment_loaded(
        self, images: Sequence[LoadedImage], request: SegmentRequest, *, project: str | None = None
    ) -> list[Segmented]:
        """Like :meth:`run`, with the id of the task that keeps each result (public API), else None."""
        done = self.backend.segment(images, request, project=project)
        kept = [(image.name or "image.png", task_id) for image, (_, task_id) in zip(images, done, strict=True)]
        with self._lock:
            self._saved += [(name, task_id) for name, task_id in kept if task_id is not None]
        return done

    @property
    def saved(self) -> list[tuple[str, str]]:
        """(image name, task id) of the images segmented on a public API, which keeps their results."""
        return list(self._saved)

    def close(self) -> None:
        """Close the connection to the server (remote mode); the local engine stays loaded."""
        with self._lock:
            if self._backend is not None and not isinstance(self._backend, LocalBackend):
                self._backend.close()
                self._backend = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def segment(
        self,
        image: ImageInput,
        prompts: str | Sequence[str] = (),
        *,
        boxes: Sequence[Box | tuple[float, float, float, float]] = (),
        **options: Unpack[Overrides],
    ) -> SegmentationResult:
        """Every instance of each prompt in one image.

        Args:
            image: a path, bytes, PIL image or RGB/gray numpy array.
            prompts: one noun phrase or several; all run on one backbone pass.
            boxes: exemplar boxes (x0, y0, x1, y1) in pixels, or :class:`Box` (``positive=False`` for negatives).
            options: ``threshold``, ``mask_threshold``, ``max_instances``, ``nms_iou``: override the
                settings for this call.

        Returns:
            A :class:`SegmentationResult` (``masks``, ``boxes``, ``scores``, ``labels``).

        Example (``MODEL``: a Hub id or a model folder; ``PHOTO``: an image path):

        >>> client = s3seg.Client(MODEL, device="cpu")
        >>> result = client.segment(PHOTO, ["person", "tie"], threshold=0.2)
        >>> result.prompts, len(result.masks) == len(result)
        (('person', 'tie'), True)
        """
        return self.segment_batch([image], prompts, boxes=boxes, **options)[0]

    def segment_batch(
        self,
        images: Sequence[ImageInput],
        prompts: str | Sequence[str] = (),
        *,
        boxes: Sequence[Box | tuple[float, float, float, float]] = (),
        **options: Unpack[Overrides],
    ) -> list[SegmentationResult]:
        """Like :meth:`segment` for several images (batched through the backbone); one result each."""
        request = self.request(prompts, boxes=boxes, **options)
        return self.run([self.load(i) for i in images], request)

    def segment_paths(
        self,
        paths: Iterable[str | Path],
        request: SegmentRequest,
        *,
        out: Path | None = None,
        save: bool = False,
        project: str | None = None,
        batch_size: int | None = None,
    ) -> Iterator[Outcome]:
        """Segment many image files, one :class:`s3seg.Outcome` per file as its batch finishes.

        Images are decoded lazily in batches of ``batch_size`` (default: the ``max_batch`` setting); a file
        that cannot be read, and an image that fails alone (out of memory, refused by the server), is an
        outcome with its error while the others go on. ``out``: write NAME.json (COCO), NAME.mask.png and
        NAME.overlay.jpg per image there, atomically. ``save``: keep each result as a task (results store
        and storage of the settings), filed under ``project``; a public API keeps them anyway.
        """
        from s3seg._paths import segment_paths

        return segment_paths(
            self, paths, request, out=out, save=save, project=project, batch_size=batch_size or self.settings.max_batch
        )

    @property
    def video_engine(self) -> Sam3VideoEngine:
        """The local video model (detector + tracker), loaded on first access."""
        if self.is_remote:
            raise UsageError("this client tracks videos on its server; it has no local video model")
        with self._lock:
            if self._video_engine is None:
                from s3seg.engine._video import Sam3VideoEngine

                self._video_engine = Sam3VideoEngine.from_settings(self.settings)
            return self._video_engine

    def segment_video(
        self, path: str | Path, prompts: str | Sequence[str], **options: Unpack[VideoOptions]
    ) -> VideoResult:
        """Every instance of each prompt tracked through a video; see :func:`s3seg.segment_video`. On a
        server (``server_url``) the clip is uploaded and its frames come back as the server does them."""
        from s3seg.types import normalize_prompts
        from s3seg.video import open_video

        backend = self.backend
        if not isinstance(backend, LocalBackend):
            if not isinstance(backend, VideoBackend):
                raise UsageError("this backend does not track videos", hint="use a GPU server (--server) or local")
            texts = normalize_prompts(prompts)
            if not texts:
                raise UsageError("no prompt given", hint='give a text prompt such as "person"')
            if options.get("threshold") is None and "threshold" in self._explicit:
                options["threshold"] = self.settings.threshold
            return backend.segment_video(Path(path), texts, options, self.settings)
        return open_video(path, prompts, self.video_engine, self.settings, **options)

    def load(self, image: ImageInput | LoadedImage) -> LoadedImage:
        """Decode and check an image with this client's limits."""
        return image if isinstance(image, LoadedImage) else load_image(image, max_pixels=self.settings.max_pixels)

    def request(
        self,
        prompts: str | Sequence[str] = (),
        *,
        boxes: Sequence[Box | tuple[float, float, float, float]] = (),
        **options: Unpack[Overrides],
    ) -> SegmentRequest:
        """A checked request: these prompts and boxes, the options given over this client's settings."""
        return SegmentRequest.build(
            prompts, boxes, defaults=SegmentOptions.from_settings(self.settings), explicit=self._explicit, **options
        )


def _backend_for(settings: Settings, engine: Sam3Engine | None) -> Backend:
    if engine is None and settings.api_url:
        from s3seg._public import PublicClient

        return PublicClient.from_settings(settings)
    if engine is None and settings.server_url:
        from s3seg._remote import RemoteBackend

        key = settings.api_key.get_secret_value() if settings.api_key else None
        return RemoteBackend(settings.server_url, api_key=key, timeout_s=settings.request_timeout_s)
    return LocalBackend(settings.engine_config(), engine)


_clients: dict[tuple[str | None, str | None], Client] = {}
_clients_lock = threading.Lock()


def segment(
    image: ImageInput,
    prompts: str | Sequence[str] = (),
    *,
    model: str | None = None,
    device: str | None = None,
    **kwargs: Any,
) -> SegmentationResult:
    """Every instance of each prompt in one image: ``s3seg.segment("photo.jpg", "dog")``.

    The model is loaded on the first call and kept for the process (one per ``model``/``device``); use
    :class:`Client` to choose a server or to control its lifetime.

    Args:
        image: a path, bytes, a PIL image, or an RGB/gray numpy array.
        prompts: one noun phrase (``"dog"``) or several (``["dog", "cat"]``); all share one backbone pass.
        model: Hub id (default ``facebook/sam3``, or ``S3SEG_MODEL``), ``save_pretrained`` folder or ``sam3.pt``.
        device: ``auto`` (default), ``cpu``, ``cuda``, ``cuda:N`` or ``mps``.
        boxes: exemplar boxes ``(x0, y0, x1, y1)`` in pixels, or :class:`s3seg.Box` (``positive=False``
            for "not like this"); boxes alone find "things like this".
        threshold: minimum instance score (default 0.5, or ``S3SEG_THRESHOLD``).
        mask_threshold: mask probability cut-off (default 0.5).
        max_instances: keep at most this many instances per prompt.
        nms_iou: drop an instance whose mask overlaps a better one by more than this IoU.

    Returns:
        A :class:`s3seg.SegmentationResult`: ``masks`` (N, H, W) bool, ``boxes`` (N, 4) xyxy pixels,
        ``scores`` (N,), ``labels`` (the prompt of each), best first per prompt.

    Raises:
        ImageError: the image cannot be read. UsageError: no prompt and no box, or a bad option.
        ModelError: the model cannot be found, downloaded or read. DeviceError: no such device, or out of memory.

    Example (``MODEL``: a Hub id or a model folder; ``PHOTO``: an image path):

    >>> result = s3seg.segment(PHOTO, "person", model=MODEL, threshold=0.2)
    >>> result.masks.shape[1:] == (result.height, result.width) and len(result.scores) == len(result)
    True
    >>> set(result.labels) <= {"person"}
    True
    """
    return shared_client(model, device).segment(image, prompts, **kwargs)


def shared_client(model: str | None, device: str | None) -> Client:
    """The process's client for ``model`` on ``device``, made on first use: :func:`segment` and
    :func:`s3seg.segment_video` load each model once."""
    with _clients_lock:
        client = _clients.get((model, device))
        if client is None:
            client = _clients[(model, device)] = Client(model, device=device)
    return client
