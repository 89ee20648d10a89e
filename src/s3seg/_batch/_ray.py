"""Ray: connecting (a cluster, or an embedded one bound to 127.0.0.1), and the SAM3 actor that Ray Data's
``map_batches`` runs: a batch of image ids in, one result row per id out.

Ray is imported here only, and only when a batch runs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from s3seg.errors import DependencyError, DeviceError, ImageError, S3SegError, StorageError, UsageError

if TYPE_CHECKING:
    import pyarrow as pa

    from s3seg._batch._io import S3Spec
    from s3seg.config import Settings
    from s3seg.types import Box, SegmentOptions

LOOPBACK = "127.0.0.1"
_FETCH_THREADS = 8


def import_ray() -> ModuleType:
    """``ray`` with Ray Data, or a one-line install hint."""
    try:
        import ray
        import ray.data
    except ImportError as e:
        raise DependencyError("s3seg batch needs Ray Data", hint="pip install 's3seg[ray]'") from e
    return ray


_LOCAL_ONLY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def connect(address: str | None, num_cpus: int | None) -> bool:
    """Join the cluster at ``address``, or start Ray on this machine bound to 127.0.0.1; nothing when Ray
    is already initialised in this process. Returns whether this call started Ray (and should stop it).

    Embedded, Ray would register its node (and bind its gRPC servers) under this machine's network address.
    With Ray's "no cluster" switch (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, what Ray does on macOS and
    Windows) it takes 127.0.0.1, so every Ray process listens and connects on loopback only. The switch is
    read at ``import ray`` (and the constant set when ray was imported before), and put back after start so
    that a later ``ray.init(address=…)`` in this process is not affected. Usage reports stay off.
    """
    set_here = address is None and _LOCAL_ONLY not in os.environ
    if set_here:
        os.environ[_LOCAL_ONLY] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray = import_ray()
        if ray.is_initialized():
            return False
        if address is not None:
            try:
                ray.init(address=address, log_to_driver=True)
            except (ConnectionError, RuntimeError, ValueError) as e:
                raise S3SegError(
                    f"cannot join the Ray cluster at {address}: {e}",
                    hint="check --address / RAY_ADDRESS (ray://head:10001 or head:6379) and that the cluster runs",
                ) from e
            return True
        from ray._private import ray_constants

        before = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            ray.init(
                num_cpus=num_cpus,
                include_dashboard=False,
                _node_ip_address=LOOPBACK,
                configure_logging=True,
                logging_level="warning",
            )
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = before
        return True
    finally:
        if set_here:
            os.environ.pop(_LOCAL_ONLY, None)


def node_addresses() -> list[str]:
    """The addresses the running Ray's nodes registered under."""
    ray = import_ray()
    return [str(n["NodeManagerAddress"]) for n in ray.nodes() if n.get("Alive")]


@dataclass(frozen=True)
class Job:
    """What every actor needs: the model settings, the question, where images and masks live."""

    settings: Settings
    prompts: tuple[str, ...]
    boxes: tuple[Box, ...]
    options: SegmentOptions
    s3: S3Spec
    masks_root: str | None  # DEST, when label PNGs are written
    masks_base: str  # the source folder that mask names are relative to
    threads: int | None  # torch CPU threads (CPU actors)


class Segmenter:
    """One SAM3 engine per actor, loaded once; each call segments a batch of image ids.

    Reading, decoding and segmenting failures of one image make that image's row an error; they never fail
    the batch. An actor that dies (killed, out of host memory) is restarted by Ray and its batch retried.
    """

    def __init__(self, job: Job) -> None:
        from s3seg._batch._io import Filesystems
        from s3seg.engine import Sam3Engine

        if job.threads:
            import torch

            torch.set_num_threads(job.threads)
        self.job = job
        self.engine = Sam3Engine.from_config(job.settings.engine_config())
        self.fss = Filesystems(job.s3)
        self.pool = ThreadPoolExecutor(_FETCH_THREADS)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow as pa

        from s3seg._batch._shards import schema

        ids = [str(i) for i in batch.column("path").to_pylist()]
        rows = list(self.pool.map(self._load, ids))
        loaded = [(i, r) for i, r in enumerate(rows) if not isinstance(r, dict)]
        for (i, _), row in zip(loaded, self._segment([image for _, image in loaded]), strict=True):
            rows[i] = row
        return pa.Table.from_pylist(rows, schema=schema())

    def _load(self, ident: str) -> Any:
        """An id → the decoded image, or its error row."""
        from s3seg._batch._shards import error_row
        from s3seg.images import load_image

        try:
            return load_image(self.fss.read_image(ident), name=ident, max_pixels=self.job.settings.max_pixels)
        except ImageError as e:
            return error_row(ident, e.message, self.job.prompts)

    def _segment(self, images: Sequence[Any]) -> list[dict[str, Any]]:
        """Decoded images → rows; a batch that fails as a whole (out of memory) is retried image by image,
        so that only the culprit becomes an error row."""
        from s3seg._batch._shards import error_row, mask_key, ok_row
        from s3seg.render import mask_png

        if not images:
            return []
        job = self.job
        try:
            results = self.engine.segment(
                [i.array for i in images], job.prompts, job.boxes, names=[i.name for i in images], options=job.options
            )
        except (DeviceError, ImageError, UsageError) as e:
            if len(images) > 1:
                return [row for image in images for row in self._segment([image])]
            return [error_row(images[0].name, e.message, job.prompts, (images[0].width, images[0].height))]
        rows = []
        for image, result in zip(images, results, strict=True):
            key = None
            if job.masks_root is not None:
                key = mask_key(image.name, job.masks_base)
                try:
                    self.fss.put(f"{job.masks_root}/{key}", mask_png(result))
                except StorageError as e:
                    rows.append(error_row(image.name, e.message, job.prompts, (result.width, result.height)))
                    continue
            rows.append(ok_row(image.name, result, key))
        return rows


def unwrap(e: BaseException) -> S3SegError | None:
    """The S3SegError behind a Ray error (Ray wraps what an actor or task raised), if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        err = stack.pop()
        if err is None or id(err) in seen:
            continue
        seen.add(id(err))
        if isinstance(err, S3SegError):
            return err
        stack += [err.__cause__, err.__context__, getattr(err, "cause", None)]
    return None
