"""s3seg's engine computes what Meta's reference SAM3 computes (docs/fidelity.md).

A tiny reference model is composed from Meta's `sam3` classes with every tensor randomised, saved in the
official `sam3.pt` layout, and loaded by s3seg through `--model sam3.pt` (its own converter). Both then see
the same real photo and the same prompts. Raw outputs must agree to float32 tolerance and binary masks must
be identical; switching off any one of s3seg's fixes must break that. Needs `sam3`; skips without it.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("sam3", reason="Meta's reference package (the `test` extra installs it)")

import _reference as ref
from s3seg.engine import Fidelity, Sam3Engine, SegmentOptions
from s3seg.types import Box

TOL = 1e-5  # relative L2, float32
NEAR_ZERO_LOGIT = 1e-4  # a pixel this close to the cut may flip from float32 rounding alone

PROMPTS: dict[str, tuple[str | None, list[ref.BoxPrompt]]] = {
    "text": ("red disc", []),
    "text+boxes": ("red disc", [(40, 50, 140, 130, True), (170, 120, 260, 200, False)]),
    "boxes": (None, [(160, 110, 265, 200, True)]),
}


@pytest.fixture(scope="module", params=["photo", "synthetic"])
def image(request: pytest.FixtureRequest, photo: np.ndarray) -> np.ndarray:
    return photo if request.param == "photo" else ref.synthetic_photo(300, 217)


@pytest.fixture(scope="module")
def engine_with(official_file: Path):  # type: ignore[no-untyped-def]
    @cache
    def load(fidelity: Fidelity = Fidelity()) -> Sam3Engine:  # noqa: B008  (frozen, hashable)
        return Sam3Engine.load(str(official_file), device="cpu", fidelity=fidelity)

    return load


def _raw(engine: Sam3Engine, image: np.ndarray, kind: str) -> dict[str, np.ndarray]:
    text, boxes = PROMPTS[kind]
    raw = engine.predict_raw(image, text, [Box(*b) for b in boxes])
    return {"scores": raw.scores, "boxes": raw.boxes, "mask_logits": raw.mask_logits}


def _errors(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> dict[str, float]:
    return {k: ref.relative_l2(got[k], want[k]) for k in ("scores", "boxes", "mask_logits")}


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_raw_outputs_equal_the_reference(kind: str, image: np.ndarray, reference_model, engine_with) -> None:
    text, boxes = PROMPTS[kind]
    want = ref.reference_predict(reference_model, image, text, boxes)
    got = _raw(engine_with(), image, kind)
    h, w = image.shape[:2]
    assert got["mask_logits"].shape == want["mask_logits"].shape == (ref.TINY.num_queries, h, w)
    errors = _errors(got, want)
    assert all(e < TOL for e in errors.values()), errors


@pytest.mark.parametrize("kind", list(PROMPTS))
def test_binary_masks_and_scores_equal_the_reference(
    kind: str, image: np.ndarray, reference_model, engine_with
) -> None:
    """What users get (thresholded, binarised) equals the reference's Sam3Processor output."""
    text, boxes = PROMPTS[kind]
    want = ref.reference_predict(reference_model, image, text, boxes)
    threshold = float(np.median(want["scores"]))
    [result] = engine_with().segment(
        [image], [text] if text else [], [Box(*b) for b in boxes], options=SegmentOptions(threshold=threshold)
    )
    keep = np.nonzero(want["scores"] > threshold)[0]
    keep = keep[np.argsort(-want["scores"][keep], kind="stable")]
    assert len(result) == len(keep) > 0
    np.testing.assert_allclose(result.scores, want["scores"][keep], rtol=TOL)
    np.testing.assert_allclose(result.boxes, want["boxes"][keep], rtol=TOL, atol=1e-3)
    want_masks = want["mask_logits"][keep] > 0  # the reference: sigmoid(upsampled logits) > 0.5
    flips = result.masks != want_masks
    assert not (flips & (np.abs(want["mask_logits"][keep]) > NEAR_ZERO_LOGIT)).any()
    assert want_masks.any() and (~want_masks).any()  # not a vacuous comparison


@pytest.mark.parametrize(
    ("fix", "kind"),
    [
        ("geometry_cls", "text"),
        ("vit_layernorm_eps", "text"),
        ("vit_layernorm_eps", "boxes"),
    ],
)
def test_removing_a_fix_breaks_raw_parity(fix: str, kind: str, photo: np.ndarray, reference_model, engine_with) -> None:
    text, boxes = PROMPTS[kind]
    want = ref.reference_predict(reference_model, photo, text, boxes)
    off = {"geometry_cls": Fidelity(geometry_cls=False), "vit_layernorm_eps": Fidelity(vit_layernorm_eps=None)}[fix]
    errors = _errors(_raw(engine_with(off), photo, kind), want)
    assert max(errors.values()) > 100 * TOL, errors


def test_removing_logit_first_upsampling_changes_masks(photo: np.ndarray, reference_model, engine_with) -> None:
    want = ref.reference_predict(reference_model, photo, "red disc", [])
    options = SegmentOptions(threshold=0.0)
    [fixed] = engine_with().segment([photo], ["red disc"], options=options)
    [unfixed] = engine_with(Fidelity(upsample_logits_first=False)).segment([photo], ["red disc"], options=options)
    order = np.argsort(-want["scores"], kind="stable")
    want_masks = want["mask_logits"][order] > 0
    assert (fixed.masks != want_masks).sum() <= 2
    assert (unfixed.masks != want_masks).sum() > 100  # sigmoid → upsample → 0.5 moves boundary pixels


def test_presence_logits_are_not_clamped(tmp_path: Path, photo: np.ndarray) -> None:
    """sam3 0.1.4 discards its presence clamp; transformers clamps to ±10, which moves every score."""
    import torch

    model = ref.build_tiny_reference_model(seed=1)
    with torch.no_grad():
        model.transformer.decoder.presence_token_head.layers[-1].bias.fill_(25.0)
    path = ref.save_official_checkpoint(model, tmp_path / "sam3.pt")
    want = ref.reference_predict(model, photo, "red disc", [])
    fixed = Sam3Engine.load(str(path), device="cpu").predict_raw(photo, "red disc")
    clamped = Sam3Engine.load(str(path), device="cpu", fidelity=Fidelity(presence_unclamped=False)).predict_raw(
        photo, "red disc"
    )
    assert ref.relative_l2(fixed.scores, want["scores"]) < TOL
    assert ref.relative_l2(clamped.scores, want["scores"]) > 3 * TOL  # sigmoid(10) = 0.9999546, not ~1


def test_convert_command_writes_a_standard_folder(
    capsys, tmp_path: Path, official_file: Path, photo: np.ndarray, reference_model
) -> None:
    import sys

    from transformers import Sam3Model

    from s3seg.cli import main

    out = tmp_path / "converted"
    sys.argv = ["s3seg", "convert", str(official_file), str(out)]
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code in (0, None), capsys.readouterr().err
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    assert Sam3Model.from_pretrained(out).config.vision_config.backbone_config.layer_norm_eps == 1e-5
    # the converted folder goes through from_pretrained (the Hub path) and must match the reference too
    want = ref.reference_predict(reference_model, photo, "red disc", [])
    got = _raw(Sam3Engine.load(str(out), device="cpu"), photo, "text")
    assert max(_errors(got, want).values()) < TOL
    sys.argv = ["s3seg", "convert", str(official_file), str(out)]
    with pytest.raises(SystemExit) as e:
        main()
    assert e.value.code == 2 and "exists and is not empty" in capsys.readouterr().err


@pytest.mark.slow
def test_full_size_parity(tmp_path: Path, photo: np.ndarray) -> None:
    """Full-size architecture (random weights, CPU, ~3 min, ~12 GB): run with `pytest -m slow -s`."""
    import time

    from transformers import Sam3Config

    model = ref.build_full_size_reference_model(seed=0)
    path = ref.save_official_checkpoint(model, tmp_path / "sam3.pt", config=Sam3Config())
    engine = Sam3Engine.load(str(path), device="cpu")
    for kind in PROMPTS:
        text, boxes = PROMPTS[kind]
        t0 = time.perf_counter()
        want = ref.reference_predict(model, photo, text, boxes)
        t1 = time.perf_counter()
        got = _raw(engine, photo, kind)
        t2 = time.perf_counter()
        errors = _errors(got, want)
        flips = int(((got["mask_logits"] > 0) != (want["mask_logits"] > 0)).sum())
        print(
            f"\nfull size, {kind}: relative L2 {errors}, mask pixels differing {flips} of "
            f"{got['mask_logits'].size}; reference {t1 - t0:.1f} s, s3seg {t2 - t1:.1f} s"
        )
        assert max(errors.values()) < 1e-4, errors
