"""Compare any predicted COCO mask file with a ground-truth one: mIoU (paired by annotation id) and mask AP."""

from __future__ import annotations

import contextlib
import io

import numpy as np
import torch
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from rich.console import Console
from rich.table import Table

from auto_label.coco import CocoFile, load_coco
from auto_label.masks import box_mask, mask_to_rle, segmentation_to_mask
from auto_label.writers import write_coco
from mal.metrics import summarize_ious

AP_NAMES = ("mask_AP", "mask_AP50", "mask_AP75", "mask_AP_small", "mask_AP_medium", "mask_AP_large")


def paired_ious(pred: CocoFile, gt: CocoFile) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """IoU of each non-crowd GT mask with the prediction of the same id (0 when none); also counts misses."""
    predicted = {a["id"]: a for a in pred.annotations if "segmentation" in a}
    ious, categories, areas, missing = [], [], [], 0
    for ann in gt.annotations:
        if ann.get("iscrowd", 0) or "segmentation" not in ann:
            continue
        image = gt.images_by_id[ann["image_id"]]
        h, w = image["height"], image["width"]
        gt_mask = segmentation_to_mask(ann["segmentation"], h, w).astype(bool)
        match = predicted.get(ann["id"])
        if match is None or match["image_id"] != ann["image_id"]:
            missing += 1
            ious.append(0.0)
        else:
            pred_mask = segmentation_to_mask(match["segmentation"], h, w).astype(bool)
            union = np.logical_or(pred_mask, gt_mask).sum()
            ious.append(float(np.logical_and(pred_mask, gt_mask).sum() / union) if union else 1.0)
        categories.append(ann["category_id"])
        areas.append(float(ann.get("area", gt_mask.sum())))
    return torch.tensor(ious), torch.tensor(categories), torch.tensor(areas), missing


def mask_ap(pred: CocoFile, gt: CocoFile) -> dict[str, float]:
    """COCO mask AP (pycocotools); a prediction's score is `score`, else `mal_score`, else 1."""
    gt_data = {
        **gt.data,
        "annotations": [
            {**a, "iscrowd": a.get("iscrowd", 0), "area": a.get("area", a["bbox"][2] * a["bbox"][3])}
            for a in gt.annotations
            if "segmentation" in a
        ],
    }
    results = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "segmentation": a["segmentation"],
            "score": a.get("score", a.get("mal_score", 1.0)),
        }
        for a in pred.annotations
        if "segmentation" in a and not a.get("iscrowd", 0)
    ]
    if not results or not gt_data["annotations"]:
        return dict.fromkeys(AP_NAMES, 0.0)
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt_data
        coco_gt.createIndex()
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="segm")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return {name: float(v) for name, v in zip(AP_NAMES, evaluator.stats[:6])}


def evaluate_files(pred_path: str, gt_path: str) -> dict[str, float]:
    gt = load_coco(gt_path, check_image_files=False)
    pred = load_coco(pred_path, check_image_files=False)
    ious, categories, areas, missing = paired_ious(pred, gt)
    return {**summarize_ious(ious, categories, areas), "missing_predictions": missing, **mask_ap(pred, gt)}


def print_table(metrics: dict[str, float], title: str) -> None:
    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}" if isinstance(value, float) else str(value))
    Console().print(table)


def write_box_fill(gt_path: str, out_path: str) -> None:
    """The baseline every box labeler must beat: each non-crowd box's mask is the box itself."""
    gt = load_coco(gt_path, check_image_files=False)

    def annotations():
        for ann in gt.annotations:
            if ann.get("iscrowd", 0):
                continue
            image = gt.images_by_id[ann["image_id"]]
            mask = box_mask(ann["bbox"], image["height"], image["width"])
            yield {**ann, "segmentation": mask_to_rle(mask), "area": int(mask.sum())}

    write_coco(out_path, gt.data, annotations())
