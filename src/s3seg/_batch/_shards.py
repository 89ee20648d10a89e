"""The output of a batch run and how it is committed, so that a rerun finishes the rest and every image is
written exactly once.

Layout under DEST (a local folder or ``s3://bucket/prefix``)::

    parquet/part-<run>-<n>.parquet    one row per image (SCHEMA)
    coco/part-<run>-<n>.json          with --coco: the same shard as one COCO document
    masks/<image id>.png              with --masks: the label PNG of each image (see s3seg.render)
    _s3seg/job.json                   prompts, boxes, options and model of this DEST
    _s3seg/done/part-<run>-<n>.json   the shard's manifest: the ids of its images. Written last.

The commit protocol: the driver collects result rows, drops any id it has already committed or collected
(Ray may hand a retried batch's rows over again), and writes a shard: its Parquet file and COCO document
(each one atomic object), then its manifest. The manifest is the commit point: a shard without one is an
orphan of a crash, deleted at the next start, and its images are done again. A rerun skips every id in a
manifest. Readers (:func:`read_shards`) read committed shards only and keep the first row per id.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from s3seg import _rle
from s3seg.errors import ResultFormatError, UsageError
from s3seg.types import CocoBuilder, Instance, SegmentationResult

if TYPE_CHECKING:
    import pyarrow as pa

    from s3seg._batch._io import Filesystems

FORMAT = 1
_SHARD = re.compile(r"^part-[0-9A-Za-z]+-[0-9a-f]+-\d{5,}$")


def schema() -> pa.Schema:
    """One row per image. ``instances`` hold COCO compressed RLE (``counts`` of ``{"size": [height,
    width], "counts": rle}``), xyxy pixel boxes and scores; ``error`` is set (and ``instances`` empty) for an
    image that could not be read or segmented."""
    import pyarrow as pa

    instance = pa.struct(
        [
            ("prompt", pa.string()),
            ("score", pa.float64()),
            ("box", pa.list_(pa.float64(), 4)),
            ("rle", pa.string()),
            ("area", pa.int64()),
        ]
    )
    return pa.schema(
        [
            pa.field("path", pa.string(), nullable=False),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("prompts", pa.list_(pa.string())),
            ("instances", pa.list_(instance)),
            ("mask_png", pa.string()),
            ("error", pa.string()),
        ]
    )


def ok_row(ident: str, result: SegmentationResult, mask_png: str | None) -> dict[str, Any]:
    instances = []
    for inst in result.instances:
        rle, area = _rle.encode(inst.mask)
        instances.append({"prompt": inst.prompt, "score": inst.score, "box": list(inst.box), "rle": rle["counts"]})
        instances[-1]["area"] = area
    return {
        "path": ident,
        "width": result.width,
        "height": result.height,
        "prompts": list(result.prompts),
        "instances": instances,
        "mask_png": mask_png,
        "error": None,
    }


def error_row(ident: str, message: str, prompts: Sequence[str], size: tuple[int, int] | None = None) -> dict[str, Any]:
    width, height = size or (None, None)
    return {
        "path": ident,
        "width": width,
        "height": height,
        "prompts": list(prompts),
        "instances": [],
        "mask_png": None,
        "error": message,
    }


def to_result(row: Mapping[str, Any], model: str | None = None) -> SegmentationResult:
    """A successful row → the result it was made from (masks decoded from the RLE)."""
    height, width = int(row["height"]), int(row["width"])
    instances = tuple(
        Instance(
            prompt=i["prompt"],
            score=i["score"],
            box=tuple(i["box"]),
            mask=_rle.decode({"size": [height, width], "counts": i["rle"]}, height, width),
        )
        for i in row["instances"]
    )
    return SegmentationResult(
        width=width, height=height, prompts=tuple(row["prompts"]), instances=instances, image=row["path"], model=model
    )


def coco(rows: Sequence[Mapping[str, Any]], model: str | None) -> dict[str, Any]:
    """The successful rows as one COCO document, in the form of :func:`s3seg.to_coco` (written from the
    RLE as it is, without decoding masks). Failed images are left out (they are rows with an error)."""
    doc = CocoBuilder()
    for row in rows:
        if row["error"] is not None:
            continue
        height, width = row["height"], row["width"]
        image_id = doc.add_image(
            row["path"], width, height, {"prompts": list(row["prompts"]), "named": True, "model": model}
        )
        for inst in row["instances"]:
            rle = {"size": [height, width], "counts": inst["rle"]}
            doc.add_instance(image_id, inst["prompt"], inst["score"], inst["box"], rle, inst["area"])
    return doc.document("s3seg batch results")


# --- the destination ---------------------------------------------------------------------------------


@dataclass
class Committed:
    """What a DEST already holds."""

    done: set[str]  # ids of every image in a committed shard
    shards: list[str]  # committed shard names, in order


class Dest:
    """A batch run's DEST: job description, shards, manifests."""

    def __init__(self, root: str, fss: Filesystems) -> None:
        self.root = root.rstrip("/")
        self.fss = fss

    def at(self, *parts: str) -> str:
        return "/".join([self.root, *parts])

    # --- the job: what this DEST holds results of --------------------------------------------------------
    def check_job(self, job: dict[str, Any]) -> None:
        """Record the job on the first run; refuse a rerun that asks for something else (its rows would
        mix with the others)."""
        where = self.at("_s3seg", "job.json")
        if not self.fss.exists(where):
            self.fss.put(where, json.dumps({"format": FORMAT, **job}, indent=1).encode())
            return
        try:
            old = json.loads(self.fss.read(where))
        except ValueError as e:
            raise UsageError(f"{where} is not valid JSON", hint="remove it or use another --out") from e
        old.pop("format", None)
        if old != job:
            changed = sorted(k for k in set(old) | set(job) if old.get(k) != job.get(k))
            raise UsageError(
                f"--out {self.root} holds results of another job (different {', '.join(changed)})",
                hint="rerun with the same prompts and options to finish it, or choose a new --out",
            )

    def job_model(self) -> str | None:
        where = self.at("_s3seg", "job.json")
        if not self.fss.exists(where):
            return None
        model: str | None = json.loads(self.fss.read(where)).get("model")
        return model

    # --- resume ---------------------------------------------------------------------------------------------
    def committed(self) -> Committed:
        names = [_shard_name(i) for i in self.fss.list_files(self.at("_s3seg", "done")) if i.endswith(".json")]
        shards = sorted(n for n in names if n is not None)
        done: set[str] = set()
        for name in shards:
            done.update(self.manifest(name)["paths"])
        return Committed(done, shards)

    def manifest(self, shard: str) -> dict[str, Any]:
        where = self.at("_s3seg", "done", f"{shard}.json")
        try:
            doc: dict[str, Any] = json.loads(self.fss.read(where))
        except ValueError as e:
            raise ResultFormatError(f"manifest {where} is not valid JSON", hint="remove it and rerun") from e
        return doc

    def remove_orphans(self, committed: Committed) -> list[str]:
        """Delete shard files that have no manifest (a crash between writing them and committing)."""
        keep = set(committed.shards)
        removed = []
        for folder in ("parquet", "coco"):
            for ident in self.fss.list_files(self.at(folder)):
                name = _shard_name(ident)
                if name is not None and name not in keep:
                    self.fss.delete(ident)
                    removed.append(ident)
        return removed

    # --- commit ---------------------------------------------------------------------------------------------
    def commit(self, name: str, rows: Sequence[Mapping[str, Any]], *, with_coco: bool, model: str | None) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pylist(list(rows), schema=schema())
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        files = [self.at("parquet", f"{name}.parquet")]
        self.fss.put(files[0], sink.getvalue().to_pybytes())
        if with_coco:
            files.append(self.at("coco", f"{name}.json"))
            self.fss.put(files[1], json.dumps(coco(rows, model)).encode())
        failed = sum(r["error"] is not None for r in rows)
        manifest = {
            "shard": name,
            "files": [f[len(self.root) + 1 :] for f in files],
            "done": len(rows) - failed,
            "failed": failed,
            "paths": [r["path"] for r in rows],
        }
        self.fss.put(self.at("_s3seg", "done", f"{name}.json"), json.dumps(manifest).encode())

    def read(self) -> Iterator[dict[str, Any]]:
        """Every committed row, once per image id (the first committed wins), shard by shard."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        seen: set[str] = set()
        for name in self.committed().shards:
            data = self.fss.read(self.at("parquet", f"{name}.parquet"))
            for row in pq.read_table(pa.BufferReader(data)).to_pylist():
                if row["path"] not in seen:
                    seen.add(row["path"])
                    yield row


def new_run_id() -> str:
    """UTC time to the microsecond, then random: shard names sort in the order runs started."""
    now = time.time_ns() // 1000
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now // 1_000_000))
    return f"{stamp}{now % 1_000_000:06d}Z-{secrets.token_hex(3)}"


def shard_name(run_id: str, n: int) -> str:
    return f"part-{run_id}-{n:05d}"


def _shard_name(ident: str) -> str | None:
    base = ident.rsplit("/", 1)[-1]
    stem = base.rsplit(".", 1)[0]
    return stem if _SHARD.match(stem) else None


def mask_key(ident: str, base: str) -> str:
    """Where an image's label PNG goes under DEST: ``masks/`` + its id relative to ``base`` (the folder
    common to the source's images) + ``.png``, e.g. ``masks/dogs/rex.jpg.png``."""
    if base and ident.startswith(base.rstrip("/") + "/"):
        path = ident[len(base.rstrip("/")) + 1 :]
    else:
        path = ident[len("s3://") :] if ident.startswith("s3://") else ident.lstrip("/")
    return f"masks/{path}.png"


def common_base(ids: Sequence[str]) -> str:
    """The deepest folder (or prefix) that holds every id; "" when there is none (local and S3 mixed)."""
    import posixpath

    schemes = {i.startswith("s3://") for i in ids}
    if len(schemes) != 1:
        return ""
    folders = [posixpath.dirname(i) for i in ids]
    if schemes == {True}:
        base = posixpath.commonpath([f[len("s3://") :] for f in folders])
        return f"s3://{base}" if base else ""
    return posixpath.commonpath(folders)
