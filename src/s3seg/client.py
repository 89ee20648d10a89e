"""The Python entry point: :class:`Client` keeps SAM3 loaded for many calls; :func:`segment` is the one-liner."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from s3seg.config import Settings, load_settings
from s3seg.errors import UsageError
from s3seg.images import ImageInput, LoadedImage, load_image
from s3seg.types import Box, SegmentationResult, SegmentOptions, SegmentRequest

if TYPE_CHECKING:
    from s3seg._public import PublicClient
    from s3seg._remote import RemoteBackend
    from s3seg.engine import Sam3Engine


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
    ) -> None:
        base = settings.model_dump() if settings is not None else {}
        given = {"model": model, "device": device, "server_url": server_url, "api_key": api_key, "api_url": api_url}
        self.settings = load_settings(**{**base, **{k: v for k, v in given.items() if v is not None}})
        self._engine = engine
        self._remote: RemoteBackend | PublicClient | None = None
        self._saved: list[tuple[str, str]] = []
        self._lock = threading.Lock()

    @property
    def is_remote(self) -> bool:
        return self._engine is None and (self.settings.server_url or self.settings.api_url) is not None

    @property
    def engine(self) -> Sam3Engine:
        """The local engine (loaded on first access)."""
        if self.is_remote:
            raise UsageError("this client segments on a server; it has no local engine")
        with self._lock:
            if self._engine is None:
                from s3seg.engine import Sam3Engine

                self._engine = Sam3Engine.from_settings(self.settings)
            return self._engine

    def prepare(self) -> None:
        """Load the model now, or check that the server answers and accepts the key."""
        if self.is_remote:
            self._backend().check()
        else:
            self.engine  # noqa: B018  (loads it)

    def run(
        self, images: Sequence[LoadedImage], request: SegmentRequest, *, project: str | None = None
    ) -> list[SegmentationResult]:
        """Decoded images × one request, locally or on the server; one result per image. ``project`` files
        the results under a project on a public API (elsewhere nothing is kept)."""
        backend = self._backend() if self.is_remote else None
        if isinstance(backend, _public_client()):
            results = backend.segment(images, request, project=project)
            self._saved += backend.saved
            backend.saved.clear()
            return results
        if backend is not None:
            return backend.segment(images, request)
        return self.engine.segment(
            [i.array for i in images],
            request.prompts,
            request.boxes,
            names=[i.name for i in images],
            options=request.options,
        )

    @property
    def saved(self) -> list[tuple[str, str]]:
        """(image name, task id) of the images segmented on a public API, which keeps their results."""
        return list(self._saved)

    def close(self) -> None:
        """Close the connection to the server (remote mode); the local engine stays loaded."""
        with self._lock:
            if self._remote is not None:
                self._remote.close()
                self._remote = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _backend(self) -> RemoteBackend | PublicClient:
        with self._lock:
            if self._remote is None and self.settings.api_url:
                from s3seg._public import PublicClient

                self._remote = PublicClient.from_settings(self.settings)
            elif self._remote is None:
                from s3seg._remote import RemoteBackend

                url = self.settings.server_url or ""
                key = self.settings.api_key.get_secret_value() if self.settings.api_key else None
                self._remote = RemoteBackend(url, api_key=key, timeout_s=self.settings.request_timeout_s)
            return self._remote

    def segment(
        self,
        image: ImageInput,
        prompts: str | Sequence[str] = (),
        *,
        boxes: Sequence[Box | tuple[float, float, float, float]] = (),
        threshold: float | None = None,
        mask_threshold: float | None = None,
        max_instances: int | None = None,
        nms_iou: float | None = None,
    ) -> SegmentationResult:
        """Every instance of each prompt in one image.

        Args:
            image: a path, bytes, PIL image or RGB/gray numpy array.
            prompts: one noun phrase or several; all run on one backbone pass.
            boxes: exemplar boxes (x0, y0, x1, y1) in pixels, or :class:`Box` (``positive=False`` for negatives).
            threshold, mask_threshold, max_instances, nms_iou: override the settings for this call.
        """
        return self.segment_batch(
            [image],
            prompts,
            boxes=boxes,
            threshold=threshold,
            mask_threshold=mask_threshold,
            max_instances=max_instances,
            nms_iou=nms_iou,
        )[0]

    def segment_batch(
        self,
        images: Sequence[ImageInput],
        prompts: str | Sequence[str] = (),
        *,
        boxes: Sequence[Box | tuple[float, float, float, float]] = (),
        threshold: float | None = None,
        mask_threshold: float | None = None,
        max_instances: int | None = None,
        nms_iou: float | None = None,
    ) -> list[SegmentationResult]:
        """Like :meth:`segment` for several images (batched through the backbone); one result each."""
        request = self.request(
            prompts,
            boxes=boxes,
            threshold=threshold,
            mask_threshold=mask_threshold,
            max_instances=max_instances,
            nms_iou=nms_iou,
        )
        return self.run([self.load(i) for i in images], request)

    def load(self, image: ImageInput | LoadedImage) -> LoadedImage:
        """Decode and check an image with this client's limits."""
        return image if isinstance(image, LoadedImage) else load_image(image, max_pixels=self.settings.max_pixels)

    def request(
        self,
        prompts: str | Sequence[str] = (),
        *,
        boxes: Sequence[Box | tuple[float, float, float, float]] = (),
        threshold: float | None = None,
        mask_threshold: float | None = None,
        max_instances: int | None = None,
        nms_iou: float | None = None,
    ) -> SegmentRequest:
        """A checked request: these prompts and boxes, the options given over this client's settings."""
        return SegmentRequest.build(
            prompts,
            boxes,
            defaults=SegmentOptions.from_settings(self.settings),
            threshold=threshold,
            mask_threshold=mask_threshold,
            max_instances=max_instances,
            nms_iou=nms_iou,
        )


def _public_client() -> type[PublicClient]:
    from s3seg._public import PublicClient

    return PublicClient


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
    """One-liner: ``s3seg.segment("photo.jpg", "dog")``. The model is loaded once per process and reused."""
    with _clients_lock:
        client = _clients.get((model, device))
        if client is None:
            client = _clients[(model, device)] = Client(model, device=device)
    return client.segment(image, prompts, **kwargs)
