import json
import os

import numpy as np
import pytest

from auto_label.masks import (
    box_mask,
    mask_iou,
    mask_to_polygons,
    mask_to_rle,
    masks_to_rles,
    rle_area,
    segmentation_to_mask,
)
from auto_label.writers import write_coco


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
