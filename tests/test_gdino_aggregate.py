"""Each aggregation method on hand-made boxes."""

import pytest
import torch

from gdino.aggregate import aggregate
from gdino.errors import GDinoError

# two overlapping class-0 boxes (IoU 0.81), a class-1 box on top of them, a far class-0 box
BOXES = torch.tensor([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], dtype=torch.float)
SCORES = torch.tensor([0.9, 0.6, 0.8, 0.3])
LABELS = torch.tensor([0, 0, 1, 0])


def test_per_class_nms_keeps_the_best_box_per_class_and_object():
    boxes, scores, source = aggregate(BOXES, SCORES, LABELS, "nms", 0.5, None)
    assert source.tolist() == [0, 2, 3]
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.3])
    assert torch.equal(boxes, BOXES[[0, 2, 3]])


def test_class_agnostic_nms_also_merges_across_classes():
    _, _, source = aggregate(BOXES, SCORES, LABELS, "agnostic_nms", 0.5, None)
    assert source.tolist() == [0, 3]


def test_dbscan_fuses_a_cluster_into_a_score_weighted_box_with_the_max_score():
    boxes, scores, source = aggregate(BOXES, SCORES, LABELS, "dbscan", 0.5, None)
    assert source.tolist() == [0, 2, 3]
    assert scores.tolist() == pytest.approx([0.9, 0.8, 0.3])
    assert boxes[0].tolist() == pytest.approx([0.4, 0.4, 10.4, 10.4])  # (0.9*0 + 0.6*1) / 1.5
    assert torch.equal(boxes[2], BOXES[3])


def test_dbscan_chains_boxes_that_overlap_through_a_neighbour():
    chain = torch.tensor([[0, 0, 10, 10], [2, 0, 12, 10], [4, 0, 14, 10]], dtype=torch.float)  # IoU 0.67, 0.43
    boxes, scores, _ = aggregate(
        chain, torch.tensor([0.5, 0.5, 0.5]), torch.zeros(3, dtype=torch.long), "dbscan", 0.6, None
    )
    assert boxes.tolist() == [pytest.approx([2, 0, 12, 10])]


def test_weighted_box_fusion_averages_boxes_and_scores():
    boxes, scores, source = aggregate(BOXES, SCORES, LABELS, "wbf", 0.5, None)
    assert source.tolist() == [2, 0, 3]  # fused score 0.75 ranks below the class-1 box
    assert scores.tolist() == pytest.approx([0.8, 0.75, 0.3])
    assert boxes[1].tolist() == pytest.approx([0.4, 0.4, 10.4, 10.4])


def test_weighted_box_fusion_does_not_chain():
    chain = torch.tensor([[0, 0, 10, 10], [2, 0, 12, 10], [6, 0, 16, 10]], dtype=torch.float)
    boxes, _, _ = aggregate(chain, torch.tensor([0.9, 0.5, 0.4]), torch.zeros(3, dtype=torch.long), "wbf", 0.5, None)
    assert len(boxes) == 2  # the third box overlaps the fused first two by less than 0.5


def test_max_dets_keeps_the_best_and_none_keeps_everything():
    _, scores, source = aggregate(BOXES, SCORES, LABELS, "none", 0.5, 2)
    assert source.tolist() == [0, 2] and scores.tolist() == pytest.approx([0.9, 0.8])
    assert len(aggregate(BOXES, SCORES, LABELS, "none", 0.5, None)[0]) == 4


def test_empty_input_and_unknown_method():
    boxes, scores, source = aggregate(
        torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), "wbf", 0.5, 10
    )
    assert boxes.shape == (0, 4) and len(scores) == len(source) == 0
    with pytest.raises(GDinoError, match="aggregation.method"):
        aggregate(BOXES, SCORES, LABELS, "soft_nms", 0.5, None)
