"""MAL's label score (expected IoU x image evidence) and the evaluator's figures of how well scores rank labels."""

import numpy as np
import pytest
import torch
from test_eval_real_exports import blob, coco, evaluate, predictions, record

from labelkit.masks import mask_to_rle
from mal.score import (
    border_clearance,
    colour_separability,
    compactness,
    edge_alignment,
    expected_iou,
    image_evidence,
    label_score,
    mask_shape,
)


def test_expected_iou_of_a_sure_mask_is_one_and_falls_with_doubt():
    sure = torch.zeros(20, 20)
    sure[5:15, 5:15] = 1.0
    assert expected_iou(sure, sure > 0.5) == 1.0
    doubtful = sure * 0.6
    assert expected_iou(doubtful, doubtful > 0.5) == pytest.approx(0.6)
    assert expected_iou(torch.zeros(4, 4), torch.zeros(4, 4, dtype=torch.bool)) == 0.0


def test_expected_iou_is_lower_for_a_thin_mask_with_the_same_blurred_rim():
    def blurred(x0, x1, y0, y1):  # 0.9 inside, 0.6 on a 1-pixel rim inside, 0.4 on one outside
        probs = torch.zeros(40, 40)
        probs[y0 - 1 : y1 + 1, x0 - 1 : x1 + 1] = 0.4
        probs[y0:y1, x0:x1] = 0.6
        probs[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = 0.9
        return expected_iou(probs, probs > 0.5)

    assert blurred(5, 35, 5, 35) > blurred(5, 35, 18, 22)


HALF = torch.tensor([0.5])


def square_on_background(object_colour, background=(0, 0, 255)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 96 x 96 crop: a square object (rows / columns 32-63) on a plain background, its box 8 pixels larger on
    every side, and the object's own mask as probabilities."""
    crop = torch.tensor(background, dtype=torch.float32).view(1, 3, 1, 1).repeat(1, 1, 96, 96)
    crop[:, :, 32:64, 32:64] = torch.tensor(object_colour, dtype=torch.float32).view(3, 1, 1)
    box = torch.zeros(1, 96, 96)
    box[:, 24:72, 24:72] = 1
    probs = torch.zeros(1, 96, 96)
    probs[:, 32:64, 32:64] = 1
    return probs, crop.to(torch.uint8), box


def test_image_evidence_of_a_mask_on_a_distinct_object_and_of_one_without_support():
    probs, crop, box = square_on_background((255, 0, 0))
    image, mask, box_mask = crop.float() / 255, probs[:, None], box[:, None]
    assert colour_separability(image, mask, box_mask).item() > 0.75  # not 1: one count per colour cell is added
    aligned = edge_alignment(image, mask, box_mask).item()
    assert aligned > 0.85  # the outline holds all the gradient
    shifted = mask.roll(12, dims=3) * box_mask  # off the object: part of its outline on no edge
    assert edge_alignment(image, shifted, box_mask).item() < aligned - 0.05
    evidence = image_evidence(probs, crop, box, HALF).item()
    assert 0.1 < evidence < (32 / 48) ** 2  # the fill of the box bounds it
    assert image_evidence(shifted[:, 0], crop, box, HALF).item() < evidence
    assert image_evidence(box, crop, box, HALF).item() < 0.05  # the box itself: no outline inside the box
    _, camouflaged, _ = square_on_background((0, 0, 255))  # the object has the background's colour
    assert image_evidence(probs, camouflaged, box, HALF).item() < 0.05


def disc(radius: float, size: int = 64) -> np.ndarray:
    ys, xs = np.mgrid[:size, :size]
    return (ys - size / 2) ** 2 + (xs - size / 2) ** 2 <= radius**2


def test_compactness_of_a_disc_a_square_a_comb_and_nothing():
    square = np.zeros((64, 64), dtype=bool)
    square[16:48, 16:48] = True
    comb = np.zeros((64, 64), dtype=bool)
    comb[8:56, 8:56:4] = True  # twelve one-pixel teeth
    comb[8:12, 8:56] = True
    assert compactness(disc(20)) > 0.85
    assert 0.75 < compactness(square) < compactness(disc(20))
    assert compactness(comb) < 0.1
    assert compactness(np.zeros((8, 8), dtype=bool)) == 0.0


def test_border_clearance_is_zero_for_the_box_and_one_for_a_mask_inside_it():
    assert border_clearance(np.ones((40, 60), dtype=bool)) == 0.0
    assert border_clearance(disc(20, size=64)[8:56, 8:56]) == pytest.approx(1.0, abs=0.1)  # touches each side
    left_half = np.zeros((100, 100), dtype=bool)
    left_half[:, :50] = True  # band of 3 pixels: the left side and half of the top and bottom are covered
    assert border_clearance(left_half) == pytest.approx(1 - (3 * 100 + 2 * 3 * 47) / (4 * 3 * 100 - 4 * 9))


def test_mask_shape_reads_each_mask_in_its_own_box():
    box = torch.zeros(2, 96, 96)
    box[0, 16:80, 16:80] = 1
    box[1, 32:64, 8:88] = 1
    masks = torch.zeros(2, 96, 96)
    masks[0, 16:80, 16:80] = torch.from_numpy(disc(30)).float()
    masks[1] = box[1]  # the box itself
    compact, clearance = mask_shape(masks, box)
    assert compact[0] > 0.85 and clearance[0] > 0.9  # a disc touching each side of its box
    assert compact[1] > 0.5 and clearance[1] == 0.0  # the box: compact, but it covers its whole border
    empty = mask_shape(masks, torch.zeros(2, 96, 96))
    assert empty[0].tolist() == [0.0, 0.0] and empty[1].tolist() == [0.0, 0.0]


def test_label_score_ranks_as_the_product_of_its_factors():
    assert label_score(1.0, 1.0) == 1.0 and label_score(0.0, 0.9) == 0.0
    assert label_score(0.9, 0.0625) == pytest.approx((0.9 * 0.0625) ** (1 / 6))
    assert label_score(0.9, 0.1) > label_score(0.8, 0.1) > label_score(0.8, 0.05)


def test_score_ranking_figures(tmp_path):
    # 20 objects on two images, each a 4 x 10 block; the prediction keeps its top k rows: IoU k / 10.
    annotations, masks, ious = [], {}, {}
    for ann_id in range(1, 21):
        column, k = 4 * ((ann_id - 1) % 10), 1 + (ann_id - 1) % 10
        gt_mask = blob(column, 0, column + 4, 10)
        annotations.append(record(ann_id, 1 + (ann_id > 10), mask_to_rle(gt_mask), bbox=(column, 0, 4, 10)))
        masks[ann_id], ious[ann_id] = blob(column, 0, column + 4, k), k / 10
    gt = coco(annotations)
    pred = predictions(gt, masks)
    for ann in pred["annotations"]:
        ann["mal_score"] = ious[ann["id"]]  # a score that ranks perfectly
    metrics = evaluate(tmp_path, pred, gt)
    assert metrics["score_spearman"] == pytest.approx(1.0) and metrics["worst10_in_lowest10"] == 1.0
    for ann in pred["annotations"]:
        ann["mal_score"] = 1 - ious[ann["id"]]  # ranks backwards
    metrics = evaluate(tmp_path, pred, gt)
    assert metrics["score_spearman"] == pytest.approx(-1.0) and metrics["worst10_in_lowest10"] == 0.0
    for ann in pred["annotations"]:
        del ann["mal_score"]
    assert evaluate(tmp_path, pred, gt)["score_spearman"] is None  # nothing to rank by
