"""Dataset-scale segmentation on Ray Data: ``s3seg.batch(SOURCE, prompts, out=DEST)`` / ``s3seg batch``.

The driver lists the source (minus what DEST already holds), hands the image ids to Ray Data in small
blocks, and a pool of SAM3 actors (``map_batches`` with an actor class; one GPU each when the cluster has
GPUs) reads, decodes and segments them. Rows stream back to the driver, which commits them in shards
(see ``_shards``: exactly once, resumable). See docs/batch.md.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from s3seg.errors import S3SegError, UsageError

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from s3seg.config import Settings
    from s3seg.types import Box, Overrides, SegmentationResult

DEFAULT_SHARD_SIZE = 1000
_BLOCK_MAX = 256  # image ids per Ray block: the unit of work (and of retry) an actor takes
_FLUSH_S = 60.0  # commit at least this often, so that a crash loses little


@dataclass(frozen=True)
class BatchSummary:
    """What a run did. ``done`` and ``failed`` count this run's images; ``skipped`` those already in DEST."""

    done: int
    failed: int
    skipped: int
    seconds: float
    shards: tuple[str, ...]
    out: str

    @property
    def images_per_s(self) -> float:
        return (self.done + self.failed) / self.seconds if self.seconds > 0 else 0.0


class BatchItem(NamedTuple):
    """One image of a batch DEST: its id, and its result or the error it failed with."""

    path: str
    result: SegmentationResult | None
    error: str | None


def batch(
    source: str,
    prompts: str | Sequence[str] = (),
    *,
    out: str,
    boxes: Sequence[Box | tuple[float, float, float, float]] = (),
    coco: bool = False,
    masks: bool = False,
    actors: int | None = None,
    batch_size: int | None = None,
    shard_size: int = DEFAULT_SHARD_SIZE,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_actor: float | None = None,
    settings: Settings | None = None,
    progress: bool = True,
    **overrides: Unpack[Overrides],
) -> BatchSummary:
    """Segment every image of ``source`` with Ray Data and write sharded Parquet to ``out``.

    Args:
        source: a local folder or glob, ``s3://bucket/prefix``, or a ``.txt``/``.parquet`` manifest of
            paths and ``s3://`` URLs. R2/S3 use the storage settings (``S3SEG_R2_ENDPOINT``, keys, region).
        prompts: text prompts; ``boxes``: exemplar boxes (pixels) applied to every image.
        out: a local folder or ``s3://bucket/prefix``. Rerunning with the same ``out`` finishes the rest.
        coco: also write each shard as one COCO JSON document; ``masks``: a label PNG per image.
        actors: SAM3 actors (default: one per GPU of the cluster, else 1).
        batch_size: images per actor call and per backbone pass (default ``settings.max_batch``).
        shard_size: images per Parquet shard (and per commit).
        address: a Ray cluster to join (default ``RAY_ADDRESS``; else Ray starts here on 127.0.0.1).
        num_cpus: CPUs of an embedded Ray (default: all).
        cpus_per_actor: CPUs each actor reserves, and its torch threads on CPU (default: 1 with GPUs, else
            the cluster's CPUs shared out among the actors).
        settings: model, device and storage settings (default: from the environment).
        threshold, mask_threshold, max_instances, nms_iou: post-processing over the settings' values.

    Returns:
        A :class:`BatchSummary`. Images that fail are rows with their error, not exceptions.

    Raises:
        UsageError, ImageError, StorageError, DependencyError: bad arguments, a source with no images,
            storage refusing, Ray not installed; all before any image is segmented.
    """
    from s3seg._batch import _io, _ray
    from s3seg._batch._shards import Dest, common_base, new_run_id
    from s3seg.config import load_settings
    from s3seg.types import SegmentOptions, SegmentRequest

    _io.require_pyarrow()
    s = load_settings(settings, ray_address=address, **overrides)
    if batch_size is not None:
        if batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {batch_size}")
        s = s.model_copy(update={"max_batch": batch_size})
    if cpus_per_actor is not None and cpus_per_actor <= 0:
        raise UsageError(f"CPUs per actor must be positive, got {cpus_per_actor}")
    if actors is not None and actors < 1:
        raise UsageError(f"actors must be at least 1, got {actors}")
    if shard_size < 1:
        raise UsageError(f"shard size must be at least 1, got {shard_size}")
    request = SegmentRequest.build(prompts, boxes, defaults=SegmentOptions.from_settings(s))
    texts, box_list, options = request.prompts, request.boxes, request.options

    spec = _io.S3Spec.from_settings(s)
    fss = _io.Filesystems(spec)
    root = _io.canonical(out)
    dest = Dest(root, fss)
    job_doc = {
        "prompts": list(texts),
        "boxes": [[*b.xyxy, b.positive] for b in box_list],
        "options": {"threshold": s.threshold, "mask_threshold": s.mask_threshold},
        "max_instances": s.max_instances,
        "nms_iou": s.nms_iou,
        "model": s.model,
        "coco": coco,
        "masks": masks,
    }
    ids = _io.list_source(source, fss)  # a bad source or bad credentials end the run here
    if s.ray_address is None:  # the actors run here: a bad --model is one line now, Hub weights fetched once
        from s3seg.engine import _load

        _load.resolve(s.model, revision=s.revision, token=s.token(), offline=s.offline)
    dest.check_job(job_doc)
    committed = dest.committed()
    dest.remove_orphans(committed)
    todo = [i for i in ids if i not in committed.done]
    skipped = len(ids) - len(todo)
    run_id = new_run_id()
    if not todo:
        return BatchSummary(0, 0, skipped, 0.0, (), root)

    started = _ray.connect(s.ray_address, num_cpus)
    try:
        ray = _ray.import_ray()
        gpus = int(ray.cluster_resources().get("GPU", 0)) if s.device != "cpu" else 0
        n_actors = actors or max(gpus, 1)
        cpus = float(ray.cluster_resources().get("CPU", 1))
        actor_cpus = cpus_per_actor or (1.0 if gpus else max(1.0, math.floor(cpus / n_actors)))
        job = _ray.Job(
            settings=s,
            prompts=texts,
            boxes=box_list,
            options=options,
            s3=spec,
            masks_root=root if masks else None,
            masks_base=common_base(ids),
            threads=None if gpus else max(1, int(actor_cpus)),
        )
        t0 = time.perf_counter()
        rows = _run(ray, todo, job, n_actors, actor_cpus, 1 if gpus else 0, s.max_batch, progress)
        done, failed, shards = _commit_stream(
            rows, dest, run_id, shard_size, committed.done, with_coco=coco, model=s.model
        )
        return BatchSummary(done, failed, skipped, time.perf_counter() - t0, tuple(shards), root)
    except S3SegError:
        raise
    except Exception as e:
        cause = _ray.unwrap(e)
        if cause is not None:
            raise cause from e
        raise
    finally:
        if started:
            _ray.import_ray().shutdown()


def _run(
    ray: Any,
    ids: list[str],
    job: Any,
    actors: int,
    actor_cpus: float,
    actor_gpus: int,
    batch_size: int,
    progress: bool,
) -> Iterator[dict[str, Any]]:
    """The Ray Data pipeline: ids in blocks → SAM3 actor pool → rows, streamed to the driver."""
    import pyarrow as pa

    from s3seg._batch._ray import Segmenter

    with warnings.catch_warnings():  # Ray's DataContext() warns about its own deprecated defaults
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = progress
    # Blocks small enough that every actor gets several, big enough to fill a batch.
    per_block = max(batch_size, min(_BLOCK_MAX, math.ceil(len(ids) / (4 * actors))))
    blocks = [pa.table({"path": ids[i : i + per_block]}) for i in range(0, len(ids), per_block)]
    ds = ray.data.from_arrow(blocks).map_batches(
        Segmenter,
        fn_constructor_args=(job,),
        batch_size=batch_size,
        batch_format="pyarrow",
        concurrency=actors,
        num_cpus=actor_cpus,
        num_gpus=actor_gpus,
        # Fault tolerance is Ray Data's default for actor pools (max_restarts=-1, max_task_retries=-1): a dead
        # actor is replaced and its batch retried. (Passing them as remote args is deprecated in Ray 2.60.)
    )
    for table in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        yield from table.to_pylist()


def _commit_stream(
    rows: Iterator[dict[str, Any]],
    dest: Any,
    run_id: str,
    shard_size: int,
    done_before: set[str],
    *,
    with_coco: bool,
    model: str | None,
) -> tuple[int, int, list[str]]:
    """Collect rows into shards and commit each; a row whose id is already committed or collected is a
    duplicate (a retried batch) and dropped. Whatever was collected is committed when the stream ends or
    breaks, so a crash of the pipeline loses no finished image."""
    from s3seg._batch._shards import shard_name

    seen = set(done_before)
    pending: list[dict[str, Any]] = []
    shards: list[str] = []
    counts = [0, 0]
    last = time.monotonic()

    def flush() -> None:
        nonlocal pending, last
        if pending:
            name = shard_name(run_id, len(shards))
            dest.commit(name, pending, with_coco=with_coco, model=model)
            shards.append(name)
            failed = sum(r["error"] is not None for r in pending)
            counts[0] += len(pending) - failed
            counts[1] += failed
            pending = []
        last = time.monotonic()

    try:
        for row in rows:
            if row["path"] in seen:
                continue
            seen.add(row["path"])
            pending.append(row)
            if len(pending) >= shard_size or time.monotonic() - last > _FLUSH_S:
                flush()
    finally:
        flush()
    return counts[0], counts[1], shards


def read_batch(out: str, *, settings: Settings | None = None) -> Iterator[BatchItem]:
    """Every image a batch run committed to ``out``, once each: ``(path, result, None)`` or
    ``(path, None, error)``. Masks are decoded from the RLE rows."""
    from s3seg._batch import _io
    from s3seg._batch._shards import Dest, to_result
    from s3seg.config import load_settings

    _io.require_pyarrow()
    s = settings or load_settings()
    dest = Dest(_io.canonical(out), _io.Filesystems(_io.S3Spec.from_settings(s)))
    model = dest.job_model()
    for row in dest.read():
        if row["error"] is not None:
            yield BatchItem(row["path"], None, row["error"])
        else:
            yield BatchItem(row["path"], to_result(row, model), None)


__all__ = ["DEFAULT_SHARD_SIZE", "BatchItem", "BatchSummary", "batch", "read_batch"]
