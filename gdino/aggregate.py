"""Merge the boxes of all chunks and passes of one image into one set without duplicates.

Every method takes boxes (N x 4, x1 y1 x2 y2), scores (N) and labels (N) and returns
(boxes, scores, source) where `source[i]` is the input row the output i comes from (for fused boxes
the highest-scoring member), so that its pass, threshold and prompt stay known.
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.cluster import DBSCAN
from torchvision.ops import batched_nms, box_iou, nms

from gdino.errors import GDinoError

METHODS = ("nms", "agnostic_nms", "dbscan", "wbf", "none")
Result = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


def _select(boxes, scores, keep) -> Result:
    return boxes[keep], scores[keep], keep


def per_class_nms(boxes, scores, labels, iou_threshold: float) -> Result:
    return _select(boxes, scores, batched_nms(boxes, scores, labels, iou_threshold))


def agnostic_nms(boxes, scores, labels, iou_threshold: float) -> Result:
    return _select(boxes, scores, nms(boxes, scores, iou_threshold))


def _weighted_box(boxes, scores, members: list[int]) -> torch.Tensor:
    idx = torch.tensor(members)
    weights = scores[idx] / scores[idx].sum().clamp_min(1e-12)
    return (boxes[idx] * weights[:, None]).sum(0)


def _fused(boxes, scores, groups: list[list[int]], reduce) -> Result:
    """One score-weighted box per group, scored by `reduce(member scores)`, sourced from its best member."""
    if not groups:
        return boxes[:0], scores[:0], torch.zeros(0, dtype=torch.long)
    out_boxes = torch.stack([_weighted_box(boxes, scores, members) for members in groups])
    out_scores = torch.stack([reduce(scores[torch.tensor(members)]) for members in groups])
    source = torch.tensor([max(members, key=lambda i: (float(scores[i]), -i)) for members in groups])
    return out_boxes, out_scores, source


def _per_class(labels, cluster_fn) -> list[list[int]]:
    """Run `cluster_fn(indices)` for each class in label order; return all clusters."""
    clusters = []
    for label in torch.unique(labels).tolist():
        clusters.extend(cluster_fn(torch.nonzero(labels == label).flatten().tolist()))
    return clusters


def dbscan(boxes, scores, labels, iou_threshold: float) -> Result:
    """Boxes with IoU >= iou_threshold chain into one cluster (per class); its score is the max."""

    def clusters(indices: list[int]) -> list[list[int]]:
        sub = boxes[indices]
        distance = (1.0 - box_iou(sub, sub)).clamp_min(0).double().numpy()
        ids = DBSCAN(eps=max(1.0 - iou_threshold, 1e-9), min_samples=1, metric="precomputed").fit(distance).labels_
        return [[indices[i] for i in np.flatnonzero(ids == c)] for c in np.unique(ids)]

    return _fused(boxes, scores, _per_class(labels, clusters), torch.max)


def wbf(boxes, scores, labels, iou_threshold: float) -> Result:
    """Weighted box fusion: in score order, each box joins the best fused box with IoU > threshold.

    The fused score is the mean member score (single-model WBF), so agreeing strong boxes stay strong
    and a strong box merged with weak ones is pulled down.
    """

    def clusters(indices: list[int]) -> list[list[int]]:
        groups: list[list[int]] = []
        fused: list[torch.Tensor] = []
        for i in sorted(indices, key=lambda i: (-float(scores[i]), i)):
            if fused:
                ious = box_iou(boxes[i : i + 1], torch.stack(fused))[0]
                best = int(ious.argmax())
                if ious[best] > iou_threshold:
                    groups[best].append(i)
                    fused[best] = _weighted_box(boxes, scores, groups[best])
                    continue
            groups.append([i])
            fused.append(boxes[i])
        return groups

    return _fused(boxes, scores, _per_class(labels, clusters), torch.mean)


def has_area(boxes: torch.Tensor) -> torch.Tensor:
    """Which boxes (x1 y1 x2 y2) have a positive width and height."""
    return (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])


def aggregate(boxes, scores, labels, method: str, iou_threshold: float, max_dets: int | None) -> Result:
    """Merge with `method`, then keep the `max_dets` best, ordered by score (ties by input order).

    Boxes of zero area (a box outside the image, clamped to its border) come after all others, so that
    they never take the place of a real box under `max_dets`; the writer drops and counts them.
    """
    if method not in METHODS:
        raise GDinoError(f"aggregation.method: must be one of {', '.join(METHODS)}; got {method!r}")
    if len(boxes) == 0 or method == "none":
        out = (boxes, scores, torch.arange(len(boxes)))
    else:
        fn = {"nms": per_class_nms, "agnostic_nms": agnostic_nms, "dbscan": dbscan, "wbf": wbf}[method]
        out = fn(boxes.float(), scores.float(), labels, iou_threshold)
    flat = (~has_area(out[0])).tolist()
    order = sorted(range(len(out[1])), key=lambda i: (flat[i], -float(out[1][i]), int(out[2][i])))
    if max_dets is not None:
        order = order[:max_dets]
    order = torch.tensor(order, dtype=torch.long)
    return out[0][order], out[1][order], out[2][order]
