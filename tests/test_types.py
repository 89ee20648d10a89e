"""The result type: validation when built, COCO RLE round trips that pycocotools agrees with."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pycocotools import mask as coco_mask

from s3seg.errors import ResultFormatError, UsageError
from s3seg.types import Box, Instance, SegmentationResult, Timings, box_from_string, from_coco, to_coco


def make(
    h: int = 37, w: int = 53, n: int = 3, seed: int = 0, prompts: tuple[str, ...] = ("dog", "cat")
) -> SegmentationResult:
    rng = np.random.default_rng(seed)
    instances = [
        Instance(prompts[i % len(prompts)], float(rng.random()), (1.5, 2.25, 30.0, 20.125), rng.random((h, w)) > 0.5)
        for i in range(n)
    ]
    instances.sort(key=lambda i: prompts.index(i.prompt))
    return SegmentationResult(w, h, prompts, instances, image="x.jpg", timings=Timings(1.0, 2.0, 3.0), model="m")


@pytest.mark.parametrize(
    "mask",
    [
        np.zeros((5, 7), bool),
        np.ones((5, 7), bool),
        np.eye(9, dtype=bool),
        np.ones((1, 300), bool),
        np.random.default_rng(1).random((480, 640)) > 0.3,
    ],
)
def test_rle_round_trip_is_exact_and_pycocotools_reads_it(mask: np.ndarray) -> None:
    h, w = mask.shape
    r = SegmentationResult(w, h, ("a",), (Instance("a", 0.5, (0, 0, 1, 1), mask),))
    doc = json.loads(json.dumps(r.to_coco()))
    seg = doc["annotations"][0]["segmentation"]
    assert isinstance(seg["counts"], str) and seg["size"] == [h, w]
    decoded = coco_mask.decode({"size": seg["size"], "counts": seg["counts"].encode()})
    assert decoded.dtype == np.uint8 and np.array_equal(decoded.astype(bool), mask)
    assert SegmentationResult.from_coco(doc) == r


def masks_to_encode() -> list[np.ndarray]:
    """Masks of every kind the encoder must handle: both of its paths (bounding box at most half the image,
    or more), runs across column ends, first/last pixel set, counts long enough to need 5+ groups."""
    rng = np.random.default_rng(7)
    masks = [np.zeros((1, 1), bool), np.ones((1, 1), bool), np.zeros((6, 4), bool), np.ones((6, 4), bool)]
    for _ in range(400):
        h, w = (int(v) for v in rng.integers(1, 30, 2))
        masks.append(rng.random((h, w)) < rng.random())
        m = np.zeros((h, w), bool)
        (y0, y1), (x0, x1) = sorted(rng.integers(0, h + 1, 2)), sorted(rng.integers(0, w + 1, 2))
        m[y0:y1, x0:x1] = True
        masks.append(m)
    big = np.zeros((3000, 4000), bool)
    big[0, 0] = big[-1, -1] = big[1500, 2000:2100] = True
    column_runs = np.zeros((50, 40), bool)
    column_runs[40:, 5:9] = column_runs[:10, 6:10] = True  # runs that go on over the bottom of a column
    return [*masks, big, column_runs, np.random.default_rng(8).random((480, 640)) > 0.3]


def test_rle_encoding_is_pycocotools_byte_for_byte() -> None:
    from s3seg import _rle

    for mask in masks_to_encode():
        expected = coco_mask.encode(np.asfortranarray(mask, dtype=np.uint8))
        rle, area = _rle.encode(mask)
        assert rle == {"size": list(mask.shape), "counts": expected["counts"].decode()}, mask.shape
        assert area == int(coco_mask.area(expected)) == int(mask.sum())


def test_several_images_share_categories() -> None:
    a, b = make(seed=1), make(h=20, w=10, seed=2, prompts=("cat", "bird"))
    doc = to_coco([a, b])
    assert [c["name"] for c in doc["categories"]] == ["dog", "cat", "bird"]
    assert [im["id"] for im in doc["images"]] == [1, 2]
    assert from_coco(json.loads(json.dumps(doc))) == [a, b]
    with pytest.raises(ResultFormatError, match="one image"):
        SegmentationResult.from_coco(doc)


def test_prompts_without_instances_survive_the_round_trip() -> None:
    r = SegmentationResult(10, 10, ("unicorn",))
    back = SegmentationResult.from_coco(r.to_coco())
    assert back.prompts == ("unicorn",) and len(back) == 0 and back.masks.shape == (0, 10, 10)


def test_arrays_and_accessors() -> None:
    r = make(n=4)
    assert r.masks.shape == (4, 37, 53) and r.boxes.shape == (4, 4) and r.scores.shape == (4,)
    assert r.labels == ["dog", "dog", "cat", "cat"] and len(r.for_prompt("cat")) == 2
    assert r.timings.total_ms == 6.0
    with pytest.raises(ValueError, match="read-only"):
        r.instances[0].mask[0, 0] = True  # results are frozen, masks included


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mask": np.zeros((4, 5), np.uint8)}, r"2-D bool array \(H, W\), got shape \(4, 5\) dtype uint8"),
        ({"mask": np.zeros((2, 4, 5), bool)}, r"got shape \(2, 4, 5\)"),
        ({"score": 1.5}, r"score must be in \[0, 1\]"),
        ({"box": (0, 0, 1)}, "4 finite numbers"),
        ({"box": (0, 0, float("nan"), 1)}, "4 finite numbers"),
        ({"prompt": ""}, "non-empty"),
    ],
)
def test_instance_validation_names_the_problem(kwargs: dict, message: str) -> None:
    base = {"prompt": "dog", "score": 0.5, "box": (0, 0, 1, 1), "mask": np.zeros((4, 5), bool)}
    with pytest.raises(ValueError, match=message):
        Instance(**{**base, **kwargs})


def test_result_validation_names_shapes() -> None:
    inst = Instance("dog", 0.5, (0, 0, 1, 1), np.zeros((4, 5), bool))
    with pytest.raises(ValueError, match=r"mask has shape \(4, 5\), expected \(H, W\) = \(5, 4\)"):
        SegmentationResult(4, 5, ("dog",), (inst,))
    with pytest.raises(ValueError, match="not one of the prompts"):
        SegmentationResult(5, 4, ("cat",), (inst,))
    with pytest.raises(ValueError, match="must be positive"):
        SegmentationResult(0, 4, ("cat",))


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "not a valid s3seg/COCO results document"),
        (
            {
                "images": [{"id": 1, "width": 5, "height": 4}],
                "categories": [{"id": 1, "name": "a"}],
                "annotations": [
                    {"image_id": 1, "category_id": 1, "segmentation": [[0, 0, 1, 1]], "bbox": [0, 0, 1, 1]}
                ],
            },
            "polygon segmentations are not supported",
        ),
        (
            {
                "images": [{"id": 1, "width": 5, "height": 4}],
                "categories": [{"id": 1, "name": "a"}],
                "annotations": [
                    {
                        "image_id": 1,
                        "category_id": 1,
                        "segmentation": {"size": [9, 9], "counts": "0"},
                        "bbox": [0, 0, 1, 1],
                    }
                ],
            },
            r"RLE size \[9, 9\] does not match",
        ),
        (
            {
                "images": [{"id": 1, "width": 5, "height": 4}],
                "categories": [],
                "annotations": [
                    {
                        "image_id": 1,
                        "category_id": 7,
                        "segmentation": {"size": [4, 5], "counts": "0T0"},
                        "bbox": [0, 0, 1, 1],
                    }
                ],
            },
            "not a valid",
        ),
    ],
)
def test_malformed_documents_raise_result_format_error(doc: dict, message: str) -> None:
    with pytest.raises(ResultFormatError, match=message):
        from_coco(doc)


def test_uncompressed_rle_from_other_tools_is_read() -> None:
    doc = {
        "images": [{"id": 1, "width": 3, "height": 2, "file_name": "a.png"}],
        "categories": [{"id": 1, "name": "a"}],
        "annotations": [
            {
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 1, 2],
                "score": 0.9,
                "segmentation": {"size": [2, 3], "counts": [2, 2, 2]},
            }
        ],
    }
    [r] = from_coco(doc)
    # column-major runs: 2 background, 2 foreground, 2 background
    assert r.instances[0].mask.tolist() == [[False, True, False], [False, True, False]]
    assert r.instances[0].box == (0.0, 0.0, 1.0, 2.0) and r.image == "a.png"


@pytest.mark.parametrize(
    ("text", "box"),
    [
        ("1,2,3,4", Box(1, 2, 3, 4)),
        (" 1.5, 2 ,3,4 ", Box(1.5, 2, 3, 4)),
        ("neg:1,2,3,4", Box(1, 2, 3, 4, positive=False)),
        ("pos:1,2,3,4", Box(1, 2, 3, 4)),
    ],
)
def test_box_strings(text: str, box: Box) -> None:
    assert box_from_string(text) == box


@pytest.mark.parametrize("text", ["1,2,3", "a,b,c,d", "5,5,1,1", "1,2,3,4,5"])
def test_bad_box_strings(text: str) -> None:
    with pytest.raises(UsageError):
        box_from_string(text)
