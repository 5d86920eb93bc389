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


def summarize_ious(ious: torch.Tensor, category_ids: torch.Tensor, gt_areas: torch.Tensor) -> dict[str, float | None]:
    """mIoU over instances, over classes (mean of per-class means) and per COCO size bucket; None for a
    mean over no instance (a 0.0 would read as a result)."""
    ious = ious.double()
    if len(ious) == 0:
        return {"mIoU": None, "mIoU_class": None, **{f"mIoU_{name}": None for name in SIZE_NAMES}, "num_instances": 0}
    summary = {"mIoU": ious.mean().item()}
    per_class = [ious[category_ids == c].mean() for c in category_ids.unique()]
    summary["mIoU_class"] = torch.stack(per_class).mean().item()
    buckets = size_bucket(gt_areas)
    for b, name in enumerate(SIZE_NAMES):
        selected = ious[buckets == b]
        summary[f"mIoU_{name}"] = selected.mean().item() if len(selected) else None
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
        """The defined entries of `summarize_ious`: a mean over no instance is left out, not logged as 0."""

        def cat(x):
            if isinstance(x, list):
                return torch.cat(x) if x else torch.zeros(0, dtype=torch.float64)
            return x

        summary = summarize_ious(cat(self.ious).cpu(), cat(self.category_ids).cpu(), cat(self.gt_areas).cpu())
        return {k: torch.tensor(float(v)) for k, v in summary.items() if v is not None}
