"""Batched heads: every image–prompt pair of a call through the heads at once equals running each pair
alone (``batch_heads=False``, the exact mode) to float rounding, on several prompt mixes; host crossings in
post-processing; compiled heads equal eager ones without a recompile per prompt count."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from s3seg.engine import VISUAL_PROMPT, Request, Sam3Engine, SegmentOptions
from s3seg.engine._sam3 import _greedy_nms
from s3seg.types import Box, SegmentationResult

ALL = SegmentOptions(threshold=0.0)
# boxes on the photo at half size (256 × 300): small images keep the full-resolution masks of threshold 0 cheap
POS, NEG, OTHER = Box(75, 30, 175, 150), Box(10, 175, 60, 250, positive=False), Box(150, 5, 250, 100)
TEXTS = ["person", "uniform", "a medal on a jacket", "tie", "hair"]


@pytest.fixture(scope="module")
def half(photo: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(photo[::2, ::2])


@pytest.fixture(scope="module")
def exact(tiny_model_dir):  # type: ignore[no-untyped-def]
    return Sam3Engine.load(str(tiny_model_dir), device="cpu", batch_heads=False)


def _assert_close(got: SegmentationResult, want: SegmentationResult) -> None:
    """float32: |Δscore| ≤ 1e-5, boxes to 1e-3 px, ≥ 99.99 % of mask pixels equal."""
    assert (got.width, got.height, got.prompts, got.labels) == (want.width, want.height, want.prompts, want.labels)
    assert len(got) > 0
    np.testing.assert_allclose(got.scores, want.scores, rtol=0, atol=1e-5)
    np.testing.assert_allclose(got.boxes, want.boxes, rtol=0, atol=1e-3)
    assert (got.masks == want.masks).mean() >= 0.9999


def _images(half: np.ndarray) -> list[np.ndarray]:
    return [half, np.ascontiguousarray(half[50:200, 25:225]), np.ascontiguousarray(half[::2, ::2])]


MIXES = {
    "text only": lambda im: [Request(im[0], tuple(TEXTS), options=ALL)],
    "boxes only": lambda im: [Request(im[0], (), (POS, NEG), options=ALL), Request(im[1], (), (OTHER,), options=ALL)],
    "text+boxes": lambda im: [Request(im[0], ("person", "tie", "hair"), (POS, NEG), options=ALL)],
    "mixed counts": lambda im: [
        Request(im[0], ("person",), options=ALL),
        Request(im[1], ("tie", "medal", "hair"), (POS,), options=ALL),
        Request(im[2], (), (POS, NEG, OTHER), options=ALL),
        Request(im[0], tuple(TEXTS), (OTHER, NEG), options=ALL),
    ],
    "several images": lambda im: [Request(i, tuple(TEXTS[:4]), options=ALL) for i in im],
}


@pytest.mark.parametrize("mix", list(MIXES))
def test_batched_heads_equal_per_pair_heads(mix: str, engine: Sam3Engine, exact: Sam3Engine, half) -> None:
    requests = MIXES[mix](_images(half))
    for got, want in zip(engine.run(requests), exact.run(requests), strict=True):
        _assert_close(got, want)


def _count_head_batches(engine: Sam3Engine, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """Record (pairs, prompt tokens) of every head batch and the batch of every geometry-encoder call."""
    calls: list[tuple[int, int]] = []
    heads, geometry = engine._head_fn, engine._m.geometry_encoder.forward

    def counting_heads(fpn, fpn_pos, prompt, prompt_mask):  # type: ignore[no-untyped-def]
        calls.append((prompt.shape[0], prompt.shape[1]))
        return heads(fpn, fpn_pos, prompt, prompt_mask)

    def counting_geometry(**kwargs):  # type: ignore[no-untyped-def]
        calls.append((kwargs["box_embeddings"].shape[0], -kwargs["box_embeddings"].shape[1]))
        return geometry(**kwargs)

    monkeypatch.setattr(engine, "_head_fn", counting_heads)
    monkeypatch.setattr(engine._m.geometry_encoder, "forward", counting_geometry)
    return calls


def test_every_pair_of_a_call_is_one_head_batch(engine: Sam3Engine, half, monkeypatch) -> None:
    calls = _count_head_batches(engine, monkeypatch)
    engine.segment(_images(half), TEXTS[:4], options=ALL)
    # geometry (CLS token only, K = 0 boxes) once for the three images, never per prompt; then 12 pairs at once
    assert calls == [(3, 0), (12, 32 + 1)]


def test_pairs_are_grouped_by_prompt_length_and_chunked(tiny_model_dir, half, exact, monkeypatch) -> None:
    small = Sam3Engine.load(str(tiny_model_dir), device="cpu", head_batch=3)
    requests = MIXES["mixed counts"](_images(half))
    calls = _count_head_batches(small, monkeypatch)
    results = small.run(requests)
    geometry = sorted(c for c in calls if c[1] <= 0)
    heads = sorted(c for c in calls if c[1] > 0)
    # geometry per (image, boxes): K = 0, 1, 2, 3 one request each → four batches of one
    assert geometry == [(1, -3), (1, -2), (1, -1), (1, 0)]
    # prompt lengths 33 (1 pair), 34 (3 pairs), 35 (5 pairs: 3 + 2), 36 (1 pair)
    assert heads == [(1, 33), (1, 36), (2, 35), (3, 34), (3, 35)]
    for got, want in zip(results, exact.run(requests), strict=True):
        _assert_close(got, want)


def test_exact_mode_runs_one_pair_at_a_time(exact: Sam3Engine, half, monkeypatch) -> None:
    calls = _count_head_batches(exact, monkeypatch)
    exact.segment(_images(half)[:2], ["person", "tie"], [POS], options=ALL)
    assert sorted(calls) == [(1, -1), (1, -1), (1, 34), (1, 34), (1, 34), (1, 34)]


def test_exact_mode_is_bit_identical_per_prompt(exact: Sam3Engine, half) -> None:
    [together] = exact.segment([half], TEXTS, [POS], options=ALL)
    for p in TEXTS:
        [alone] = exact.segment([half], [p], [POS], options=ALL)
        assert alone.instances == together.for_prompt(p), p


def test_batched_single_pair_is_the_exact_path(engine: Sam3Engine, exact: Sam3Engine, half) -> None:
    """One pair is a batch of one: bit-identical to the exact mode (so predict_raw parity holds in both)."""
    for text, boxes in (("person", ()), (None, (POS, NEG))):
        got, want = engine.predict_raw(half, text, boxes), exact.predict_raw(half, text, boxes)
        for name in ("scores", "boxes", "mask_logits"):
            np.testing.assert_array_equal(getattr(got, name), getattr(want, name))
    [r] = engine.segment([half], [], [POS], options=ALL)
    assert r.prompts == (VISUAL_PROMPT,)


# ------------------------------------------------------------------------------------ post-processing
@contextmanager
def _host_crossings() -> Iterator[list[str]]:
    """Every device → host read of a tensor (cpu, item, tolist, bool) while inside the block (numpy()
    needs a host tensor, so a device tensor has to pass through one of these first)."""
    seen: list[str] = []
    names = ("cpu", "item", "tolist", "__bool__")
    originals = {n: getattr(torch.Tensor, n) for n in names}

    def wrap(name: str):  # type: ignore[no-untyped-def]
        def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            seen.append(name)
            return originals[name](self, *args, **kwargs)

        return counted

    for n in names:
        setattr(torch.Tensor, n, wrap(n))
    try:
        yield seen
    finally:
        for n, f in originals.items():
            setattr(torch.Tensor, n, f)


def test_selection_crosses_to_the_host_once_per_call(engine: Sam3Engine, half, monkeypatch) -> None:
    postprocess = engine._postprocess
    crossings: list[list[str]] = []

    def counted(*args, **kwargs):  # type: ignore[no-untyped-def]
        with _host_crossings() as seen:
            out = postprocess(*args, **kwargs)
        crossings.append(seen)
        return out

    monkeypatch.setattr(engine, "_postprocess", counted)
    images = _images(half)
    engine.segment(images, TEXTS, options=SegmentOptions(threshold=1.0))  # nothing kept: scores+boxes only
    assert crossings.pop() == ["cpu"]
    raw = engine.predict_raw(half, "person")
    cut = float(np.sort(raw.scores)[-6])  # about five per pair survive
    results = engine.segment(images, TEXTS, options=SegmentOptions(threshold=cut, nms_iou=0.3))
    pairs_kept = sum(1 for r in results for p in r.prompts if r.for_prompt(p))
    assert pairs_kept > 3
    # scores and boxes once, NMS overlaps once, then each pair's kept masks
    assert crossings.pop() == ["cpu", "cpu"] + ["cpu"] * pairs_kept


def test_greedy_nms_equals_the_pairwise_definition() -> None:
    rng = np.random.default_rng(0)
    for k in (1, 2, 7, 40):
        a = rng.random((k, k)).astype(np.float32)
        ious = (a + a.T) / 2
        np.fill_diagonal(ious, 1.0)
        for t in (0.2, 0.5, 0.8):
            kept: list[int] = []
            for i in range(k):
                if all(ious[i, j] <= t for j in kept):
                    kept.append(i)
            assert _greedy_nms(ious, t).tolist() == kept


# ------------------------------------------------------------------------------------ compiled heads
def _compiled_equals_eager(compiled: Sam3Engine, eager: Sam3Engine, half: np.ndarray) -> None:
    """Batches padded to a power of two and prompts to a multiple of 8 tokens: 3 and 4 prompts (with one
    box: 34 tokens → 40) share one compiled graph."""
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    [want] = eager.segment([half], TEXTS[:3], [POS], options=ALL)
    [got] = compiled.segment([half], TEXTS[:3], [POS], options=ALL)
    _assert_close(got, want)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs > before  # compiled (the counter counts)
    [want] = eager.segment([half], TEXTS[1:5], [NEG], options=ALL)
    [got] = compiled.segment([half], TEXTS[1:5], [NEG], options=ALL)
    _assert_close(got, want)
    assert counters["stats"]["unique_graphs"] == graphs  # 4 pairs: the same bucket, no new graph


def test_compiled_heads_equal_eager_on_cpu(engine: Sam3Engine, tiny_model_dir, half) -> None:
    """torch.compile's graph capture of the backbone and the head batch, run with the ``aot_eager`` backend:
    inductor's C++ code generation takes ~5 min for these graphs on a 2-core CPU (CUDA: the gpu test)."""
    compiled = Sam3Engine.load(str(tiny_model_dir), device="cpu", compile="aot_eager")
    _compiled_equals_eager(compiled, engine, half)


@pytest.mark.gpu
def test_compiled_heads_equal_eager_on_cuda(tiny_model_dir, half) -> None:
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    eager = Sam3Engine.load(str(tiny_model_dir), device="cuda", dtype="float32")
    compiled = Sam3Engine.load(str(tiny_model_dir), device="cuda", dtype="float32", compile=True)
    _compiled_equals_eager(compiled, eager, half)
