import json
import os

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from labelkit.masks import (
    BOX_ONLY,
    DEGENERATE_POLYGON,
    EMPTY_MASK,
    box_mask,
    ground_truth_mask,
    instance_rle,
    mask_iou,
    mask_to_polygons,
    mask_to_rle,
    masks_to_rles,
    rle_area,
    rle_string_counts,
    segmentation_problems,
    segmentation_to_mask,
)
from labelkit.writers import write_coco


def ring(height=60, width=80):
    yy, xx = np.mgrid[:height, :width]
    r = np.hypot(yy - 30, xx - 40)
    return ((r < 25) & (r > 10)).astype(np.uint8)


def test_rle_round_trip_ascii_and_area():
    mask = ring()
    rle = mask_to_rle(mask)
    assert isinstance(rle["counts"], str) and rle["size"] == [60, 80]
    json.dumps(rle)  # serialisable as is
    assert (segmentation_to_mask(rle, 60, 80) == mask).all()
    assert rle_area(rle) == mask.sum()
    assert masks_to_rles(np.stack([mask, 1 - mask])) == [mask_to_rle(mask), mask_to_rle(1 - mask)]


def test_uncompressed_rle_and_polygons_decode():
    mask = np.zeros((4, 5), dtype=np.uint8)
    mask[1:3, 1:4] = 1
    # column-major runs: 5 zeros, then per column (1 one-run of 2 after 2 zeros) ...
    uncompressed = {"size": [4, 5], "counts": [5, 2, 2, 2, 2, 2, 5]}
    assert (segmentation_to_mask(uncompressed, 4, 5) == mask).all()
    square = segmentation_to_mask([[10, 10, 30, 10, 30, 30, 10, 30]], 40, 40)
    assert 350 <= square.sum() <= 450


def runs_of(mask: np.ndarray) -> list[int]:
    """Column-major run lengths, starting with a run of zeros (COCO's uncompressed RLE)."""
    flat = mask.flatten(order="F")
    edges = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], edges, [flat.size]])
    runs = np.diff(bounds).tolist()
    return [0, *runs] if flat.size and flat[0] else runs


@pytest.mark.parametrize("seed", range(40))
def test_rle_string_counts_reads_what_pycocotools_writes(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(1, 70, 2)
    mask = (rng.random((height, width)) < [0.0, 0.02, 0.5, 0.98, 1.0][seed % 5]).astype(np.uint8)
    counts = mask_utils.encode(np.asfortranarray(mask))["counts"]
    assert rle_string_counts(counts).tolist() == runs_of(mask)


def test_rle_string_counts_of_long_runs_and_bad_strings():
    mask = np.zeros((3000, 2000), dtype=np.uint8)
    mask[1000:, 1500:] = 1
    assert rle_string_counts(mask_utils.encode(np.asfortranarray(mask))["counts"]).tolist() == runs_of(mask)
    with pytest.raises(ValueError, match="alphabet"):
        rle_string_counts(b"0 1")
    with pytest.raises(ValueError, match="middle of a number"):
        rle_string_counts(b"1P")  # 'P' (32 + 48) says a character follows


@pytest.mark.parametrize(
    "segmentation, reason",
    [
        (None, BOX_ONLY),
        ([], BOX_ONLY),
        ([[1.0, 2.0, 3.0, 4.0]], DEGENERATE_POLYGON),
        ([[1.0, 2.0], []], DEGENERATE_POLYGON),
        ([[1.0, 1.0, 5.0, 5.0, 9.0, 9.0]], EMPTY_MASK),  # three collinear points
        ({"size": [10, 12], "counts": [120]}, EMPTY_MASK),
    ],
)
def test_records_that_are_no_mask_ground_truth(segmentation, reason):
    assert instance_rle(segmentation, 10, 12) == (None, reason)
    assert ground_truth_mask(segmentation, 10, 12) is None


def test_degenerate_pieces_beside_a_real_polygon_are_dropped():
    square = [1.0, 1.0, 8.0, 1.0, 8.0, 8.0, 1.0, 8.0]
    alone = ground_truth_mask([square], 10, 12)
    assert alone.sum() > 0
    assert (ground_truth_mask([[3.0, 3.0, 20.0, 20.0], square], 10, 12) == alone).all()
    assert (ground_truth_mask([square, [2.0, 2.0]], 10, 12) == alone).all()
    assert (segmentation_to_mask([[3.0, 3.0, 20.0, 20.0], square], 10, 12) == alone).all()


@pytest.mark.parametrize(
    "segmentation, field, words",
    [
        ({"size": [10, 12], "counts": [100, 30]}, "segmentation.counts", "runs cover 130 pixels, but a 10x12 mask"),
        ({"size": [12, 10], "counts": [120]}, "segmentation.size", "[12, 10] is not the image's"),
        ({"size": [10], "counts": [120]}, "segmentation.size", "must be [height, width]"),
        ({"size": [10, 12], "counts": 120}, "segmentation.counts", "must be a list of run lengths"),
        ({"size": [10, 12], "counts": "ü"}, "segmentation.counts", "non-ASCII"),
        ([[1.0, 2.0, 3.0]], "segmentation[0]", "x, y pairs"),
        ([[1.0, 2.0, 3.0, True, 5.0, 6.0]], "segmentation[0]", "numbers only, got True"),
        ([[1.0, 2.0, 3.0, 4.0, 5.0, float("inf")]], "segmentation[0]", "point 2 (5.0, inf)"),
        ([[1.0, 2.0, -13.0, 4.0, 5.0, 6.0]], "segmentation[0]", "not within one image size of the 12x10 image"),
        ([[1.0, 2.0, 3.0, 4.0, 5.0, 21.0]], "segmentation[0]", "point 2"),
        ([{"size": [10, 12]}], "segmentation[0]", "must be a list of x, y coordinates"),
        (7, "segmentation", "must be polygons"),
    ],
)
def test_segmentation_problems_name_the_field(segmentation, field, words):
    problems = segmentation_problems(segmentation, 10, 12)
    assert len(problems) == 1 and problems[0][0] == field and words in problems[0][1], problems


def test_masks_within_one_image_size_are_accepted():
    assert segmentation_problems([[-12.0, -10.0, 24.0, 20.0, 0.0, 5.0]], 10, 12) == []
    assert segmentation_problems(mask_to_rle(ring()), 60, 80) == []
    assert segmentation_problems({"size": [10, 12], "counts": [3, 117]}, 10, 12) == []
    assert segmentation_problems([], 10, 12) == segmentation_problems(None, 10, 12) == []


def test_polygons_keep_holes():
    mask = ring()
    polygons = mask_to_polygons(mask)
    back = segmentation_to_mask(polygons, 60, 80)
    assert back[30, 40] == 0  # the hole survives
    assert mask_iou(back, mask) > 0.9


def test_box_mask_rounds_outwards_and_clips():
    mask = box_mask([1.5, 2.2, 2.0, 1.0], 6, 6)
    assert mask[2:4, 1:4].all() and mask.sum() == 6
    assert box_mask([4.0, 4.0, 0.0, 0.0], 6, 6).sum() == 1  # degenerate: one pixel
    assert box_mask([-3, -3, 5, 5], 6, 6).sum() == 4


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_write_coco_streams_valid_json(tmp_path):
    path = tmp_path / "out.json"
    header = {"info": {"v": 1}, "images": iter([{"id": 5}]), "annotations": "ignored", "categories": []}
    assert write_coco(path, header, iter([{"id": 1}, {"id": 2}])) == 2
    assert json.loads(path.read_text()) == {
        "info": {"v": 1},
        "images": [{"id": 5}],
        "categories": [],
        "annotations": [{"id": 1}, {"id": 2}],
    }
    assert path.stat().st_mode & 0o777 == 0o666 & ~current_umask()
    with pytest.raises(ValueError):
        write_coco(path, {"images": []}, iter([{"id": float("nan")}]))
    assert json.loads(path.read_text())["annotations"] == [{"id": 1}, {"id": 2}]  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temporary file left behind
