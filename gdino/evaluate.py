"""COCO box AP/AR of auto-labels against a labelled subset, overall and per class.

Labels and ground truth rarely share ids: images are matched by file name and categories by
(sanitised) name, and only the images and classes present in both are evaluated.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from auto_label.coco import load_coco, validate_coco
from auto_label.coco import read_json as read_coco_json
from auto_label.writers import atomic_write
from gdino.errors import GDinoError
from gdino.prompts import sanitize_name

SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _coco_api(data: dict) -> COCO:
    api = COCO()
    api.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        api.createIndex()
    return api


def _class_ap(precision: np.ndarray, k: int, iou_index: slice | int) -> float:
    """Mean precision of category k over recall points (area all, maxDets 100); -1 where undefined."""
    values = precision[iou_index, :, k, 0, -1]
    values = values[values > -1]
    return round(float(values.mean()), 4) if values.size else -1.0


def evaluate(pred: str, gt: str) -> dict:
    """Box AP/AR of `pred` (a labels COCO file) against `gt`, plus per-class AP, AP50 and AR100."""
    gt_file = load_coco(gt, check_image_files=False)
    pred_data = read_coco_json(pred)
    validate_coco(pred_data, pred)
    gt_images = {im["file_name"]: im["id"] for im in gt_file.images}
    image_map = {im["id"]: gt_images[im["file_name"]] for im in pred_data["images"] if im["file_name"] in gt_images}
    if not image_map:
        raise GDinoError(f"{pred}: no image file_name in common with {gt}")
    gt_by_name = {sanitize_name(c["name"]): c for c in gt_file.categories}
    cat_map = {
        c["id"]: gt_by_name[sanitize_name(c["name"])]["id"]
        for c in pred_data["categories"]
        if sanitize_name(c["name"]) in gt_by_name
    }
    if not cat_map:
        raise GDinoError(f"{pred}: no category name in common with {gt}")
    detections = []
    for ann in pred_data["annotations"]:
        if ann["image_id"] in image_map and ann["category_id"] in cat_map:
            detections.append(
                {
                    **ann,
                    "image_id": image_map[ann["image_id"]],
                    "category_id": cat_map[ann["category_id"]],
                    "score": ann.get("score", 1.0),
                }
            )
    gt_api = _coco_api(gt_file.data)
    cat_ids = sorted(set(cat_map.values()))
    with contextlib.redirect_stdout(io.StringIO()):
        dt_api = gt_api.loadRes(detections) if detections else _coco_api({**gt_file.data, "annotations": []})
        evaluator = COCOeval(gt_api, dt_api, "bbox")
        evaluator.params.imgIds = sorted(set(image_map.values()))
        evaluator.params.catIds = cat_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision, recall = evaluator.eval["precision"], evaluator.eval["recall"]
    per_class = {}
    for k, cid in enumerate(cat_ids):
        rec = recall[:, k, 0, -1]
        per_class[gt_file.categories_by_id[cid]["name"]] = {
            "AP": _class_ap(precision, k, slice(None)),
            "AP50": _class_ap(precision, k, 0),
            "AR100": round(float(rec[rec > -1].mean()), 4) if (rec > -1).any() else -1.0,
        }
    pred_names = {sanitize_name(c["name"]) for c in pred_data["categories"]}
    return {
        **{name: round(float(v), 4) for name, v in zip(SUMMARY, evaluator.stats)},
        "num_images": len(evaluator.params.imgIds),
        "num_detections": len(detections),
        "per_class": per_class,
        "gt_classes_not_labeled": sorted(
            c["name"] for c in gt_file.categories if sanitize_name(c["name"]) not in pred_names
        ),
        "labeled_classes_not_in_gt": sorted(
            c["name"] for c in pred_data["categories"] if sanitize_name(c["name"]) not in gt_by_name
        ),
    }


def format_report(metrics: dict) -> str:
    """A plain-text table: summary line, then one row per class."""
    lines = [
        "  ".join(f"{k} {metrics[k]:.3f}" for k in SUMMARY[:6]),
        "  ".join(f"{k} {metrics[k]:.3f}" for k in SUMMARY[6:]),
        f"{metrics['num_images']} images, {metrics['num_detections']} detections",
        f"{'class':30s} {'AP':>7s} {'AP50':>7s} {'AR100':>7s}",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name[:30]:30s} {row['AP']:7.3f} {row['AP50']:7.3f} {row['AR100']:7.3f}")
    if metrics["gt_classes_not_labeled"]:
        lines.append(f"ground-truth classes not labeled: {', '.join(metrics['gt_classes_not_labeled'])}")
    return "\n".join(lines)


def write_metrics(metrics: dict, path: str | Path) -> None:
    with atomic_write(path) as f:
        f.write(json.dumps(metrics, indent=1, ensure_ascii=False) + "\n")
