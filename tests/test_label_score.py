"""MAL's label score (expected IoU) and the evaluator's figures of how well scores rank labels."""

import pytest
import torch
from test_eval_real_exports import blob, coco, evaluate, predictions, record

from labelkit.masks import mask_to_rle
from mal.metrics import expected_iou


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
