"""Mask quality against ground truth: per-instance IoU, averaged per instance, per class and per size."""

from __future__ import annotations

import torch
from torchmetrics import Metric

from mal.decoder import size_bucket

SIZE_NAMES = ("small", "medium", "large")


def mask_ious(pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """IoU of each predicted N x H x W mask with the ground-truth mask at the same index."""
    pred, gt = pred.flatten(1).bool(), gt.flatten(1).bool()
    inter = (pred & gt).sum(1).float()
    union = (pred | gt).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def summarize_ious(ious: torch.Tensor, category_ids: torch.Tensor, gt_areas: torch.Tensor) -> dict[str, float]:
    """mIoU over instances, over classes (mean of per-class means) and per COCO size bucket."""
    if len(ious) == 0:
        return {"mIoU": 0.0, "mIoU_class": 0.0, "num_instances": 0}
    ious = ious.double()
    summary = {"mIoU": ious.mean().item()}
    per_class = [ious[category_ids == c].mean() for c in category_ids.unique()]
    summary["mIoU_class"] = torch.stack(per_class).mean().item()
    buckets = size_bucket(gt_areas)
    for b, name in enumerate(SIZE_NAMES):
        selected = ious[buckets == b]
        summary[f"mIoU_{name}"] = selected.mean().item() if len(selected) else float("nan")
    summary["num_instances"] = len(ious)
    return summary


class MaskIoUMetric(Metric):
    """Collects one IoU, class and area per instance (a few bytes each), gathered across processes."""

    full_state_update = False

    def __init__(self):
        super().__init__()
        self.add_state("ious", default=[], dist_reduce_fx="cat")
        self.add_state("category_ids", default=[], dist_reduce_fx="cat")
        self.add_state("gt_areas", default=[], dist_reduce_fx="cat")

    def update(self, ious: torch.Tensor, category_ids: torch.Tensor, gt_areas: torch.Tensor) -> None:
        self.ious.append(ious.double().to(self.device))
        self.category_ids.append(category_ids.long().to(self.device))
        self.gt_areas.append(gt_areas.double().to(self.device))

    def compute(self) -> dict[str, torch.Tensor]:
        def cat(x):
            return torch.cat(x) if isinstance(x, list) else x

        if isinstance(self.ious, list) and not self.ious:
            return {"mIoU": torch.tensor(0.0), "mIoU_class": torch.tensor(0.0)}
        summary = summarize_ious(cat(self.ious).cpu(), cat(self.category_ids).cpu(), cat(self.gt_areas).cpu())
        return {k: torch.tensor(float(v)) for k, v in summary.items()}
