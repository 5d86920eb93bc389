"""COCO box AP/AR of auto-labels against a labelled subset, overall and per class.

Labels and ground truth rarely share ids: images are matched by file name and categories by
(sanitised) name, and only the images and classes present in both are evaluated. Detections on other
images or of other classes are left out and counted; a metric over nothing is None ("none").
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from gdino.errors import GDinoError
from gdino.prompts import sanitize_name
from labelkit.coco import load_coco, read_json, validate_coco
from labelkit.evaluation import (
    CROWD,
    UNKNOWN_CLASS,
    UNKNOWN_IMAGE,
    defined,
    describe_left_out,
    format_value,
    run_cocoeval,
    truth_record,
)
from labelkit.writers import atomic_write

SUMMARY = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")


def _mean_defined(values: np.ndarray) -> float | None:
    """Mean of COCOeval's precision or recall cells, None where all are -1 (no ground truth)."""
    values = values[values > -1]
    return round(float(values.mean()), 4) if values.size else None


def _box_records(annotations: list[dict]) -> list[dict]:
    """Ground-truth boxes for COCOeval, areas from the file (COCO's size buckets), else from the box."""
    return [truth_record(a, a.get("area", a["bbox"][2] * a["bbox"][3])) for a in annotations]


def evaluate(pred: str, gt: str) -> dict:
    """Box AP/AR of `pred` (a labels COCO file) against `gt`, plus per-class AP, AP50 and AR100."""
    gt_file = load_coco(gt, check_image_files=False)
    pred_data = read_json(pred)  # label files may name images anywhere: no image directory to check against
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
    detections, left_out = [], Counter()
    for ann in pred_data["annotations"]:
        if ann["image_id"] not in image_map:
            left_out[UNKNOWN_IMAGE] += 1
        elif ann["category_id"] not in cat_map:
            left_out[UNKNOWN_CLASS] += 1
        else:
            detections.append(
                {
                    "image_id": image_map[ann["image_id"]],
                    "category_id": cat_map[ann["category_id"]],
                    "bbox": ann["bbox"],
                    "score": ann.get("score", 1.0),
                }
            )
    img_ids, cat_ids = sorted(set(image_map.values())), sorted(set(cat_map.values()))
    shared_images, shared_classes = set(img_ids), set(cat_ids)
    scored = [a for a in gt_file.annotations if a["image_id"] in shared_images and a["category_id"] in shared_classes]
    left_out[CROWD] = sum(a.get("iscrowd", 0) for a in scored)
    evaluator = run_cocoeval(
        gt_file.images, gt_file.categories, _box_records(scored), detections, "bbox", img_ids, cat_ids
    )
    precision, recall = evaluator.eval["precision"], evaluator.eval["recall"]
    per_class = {
        gt_file.categories_by_id[cid]["name"]: {
            "AP": _mean_defined(precision[:, :, k, 0, -1]),
            "AP50": _mean_defined(precision[0, :, k, 0, -1]),
            "AR100": _mean_defined(recall[:, k, 0, -1]),
        }
        for k, cid in enumerate(cat_ids)
    }
    pred_names = {sanitize_name(c["name"]) for c in pred_data["categories"]}
    metrics = {
        **{name: None if defined(v) is None else round(float(v), 4) for name, v in zip(SUMMARY, evaluator.stats)},
        "num_images": len(img_ids),
        "num_gt_instances": len(scored) - left_out[CROWD],
        "num_detections": len(detections),
        "per_class": per_class,
        "gt_classes_not_labeled": sorted(
            c["name"] for c in gt_file.categories if sanitize_name(c["name"]) not in pred_names
        ),
        "labeled_classes_not_in_gt": sorted(
            c["name"] for c in pred_data["categories"] if sanitize_name(c["name"]) not in gt_by_name
        ),
        "left_out": dict(+left_out),
    }
    if not metrics["num_gt_instances"]:
        metrics["nothing_to_score"] = (
            f"{gt} holds no non-crowd box on the {len(img_ids)} images and {len(cat_ids)} classes shared with {pred}"
        )
    return metrics


def format_report(metrics: dict) -> str:
    """A plain-text table: summary line, then one row per class; what was left out; "none" for a metric over
    nothing, and only the reason where there is nothing to score."""
    notes = describe_left_out(Counter(metrics["left_out"]))
    if "nothing_to_score" in metrics:
        return "\n".join([*notes, f"nothing to score: {metrics['nothing_to_score']}"])
    lines = [
        "  ".join(f"{k} {format_value(metrics[k])}" for k in SUMMARY[:6]),
        "  ".join(f"{k} {format_value(metrics[k])}" for k in SUMMARY[6:]),
        f"{metrics['num_images']} images, {metrics['num_detections']} detections",
        f"{'class':30s} {'AP':>7s} {'AP50':>7s} {'AR100':>7s}",
    ]
    for name, row in metrics["per_class"].items():
        lines.append(f"{name[:30]:30s} " + " ".join(f"{format_value(row[k]):>7s}" for k in ("AP", "AP50", "AR100")))
    if metrics["gt_classes_not_labeled"]:
        lines.append(f"ground-truth classes not labeled: {', '.join(metrics['gt_classes_not_labeled'])}")
    return "\n".join([*lines, *notes])


def write_metrics(metrics: dict, path: str | Path) -> None:
    with atomic_write(path) as f:
        f.write(json.dumps(metrics, indent=1, ensure_ascii=False) + "\n")
